"""DPM-Solver-fast (solvers/dpm_fast.py): the official order mix for an NFE budget, its times, diffusers'
``DPMSolverSinglestepScheduler`` side by side, fitted orders, and mixed against fixed order at 20 NFE."""

from __future__ import annotations

import pytest
import torch

from solvers import Problem, SeededNoise, make_sampler
from solvers.denoiser import log_snr
from solvers.dpm_fast import singlestep_orders
from solvers.grids import SCHEDULES
from tests.test_fast_samplers import SDES, _OneGenerator, fitted_order, mixture_setup, table_mixture


# ---- the order mix: LuChengTHU/dpm-solver get_orders_and_timesteps_for_singlestep_solver ----------
def official_rule(nfe: int, order: int) -> list[int]:
    """The rule as the official docstring states it: order 3, K = NFE//3 + 1 steps: (K − 2) × 3 + [2, 1]
    (NFE ≡ 0 mod 3), (K − 1) × 3 + [1] (≡ 1), (K − 1) × 3 + [2] (≡ 2); order 2: NFE/2 × 2 (even), or
    K = NFE//2 + 1 steps, (K − 1) × 2 + [1] (odd); order 1: NFE × 1."""
    if order == 3:
        K = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (K - 2) + [2, 1]
        return [3] * (K - 1) + ([1] if nfe % 3 == 1 else [2])
    if order == 2:
        return [2] * (nfe // 2) if nfe % 2 == 0 else [2] * (nfe // 2) + [1]
    return [1] * nfe


LITERAL = {(3, 5): [3, 2], (3, 6): [3, 2, 1], (3, 7): [3, 3, 1], (3, 20): [3] * 6 + [2], (3, 21): [3] * 6 + [2, 1],
           (3, 25): [3] * 8 + [1], (2, 5): [2, 2, 1], (2, 6): [2, 2, 2], (2, 20): [2] * 10, (1, 5): [1] * 5}


@pytest.mark.parametrize("order", [1, 2, 3])
def test_orders_follow_the_official_rule_for_nfe_5_to_25(order):
    for nfe in range(5, 26):
        orders = singlestep_orders(nfe, order)
        assert orders == official_rule(nfe, order), (order, nfe, orders)
        assert sum(orders) == nfe
        if (order, nfe) in LITERAL:
            assert orders == LITERAL[(order, nfe)]
        assert singlestep_orders(nfe, order, "singlestep_fixed") == [order] * (nfe // order)


@pytest.mark.parametrize("order, method", [(3, "singlestep"), (2, "singlestep"), (3, "singlestep_fixed")])
def test_counted_nfe_and_steps_per_budget(order, method):
    """The counter's NFE is the orders' sum, the steps their number, for every budget 5–25 (+1 for Tweedie)."""
    problem, noise, x_T, _ = mixture_setup(SDES["vp"], n=2)
    for nfe in range(5, 26):
        for denoise in ("none", "tweedie"):
            s = make_sampler("dpm_solver_fast", solver_order=order, method=method, nfe_budget=nfe, denoise=denoise)
            problem.counter.reset()
            sol = s.sample(problem, x_T, noise)
            orders = singlestep_orders(nfe, order, method)
            assert sol.stats.nfe == problem.counter.nfe == s.expected_nfe == sum(orders) + (denoise == "tweedie")
            assert sol.stats.n_steps == len(orders)


def test_times_log_snr_and_time_uniform():
    """'log_snr': K steps uniform in λ, each split uniformly in λ (r = ⅓, ⅔; ½); 'uniform' (the official
    'time_uniform'): linspace(T, eps, NFE + 1) at the orders' partial sums, the points between inside."""
    sde = SDES["vp"]
    problem = Problem(table_mixture(sde))
    fast = make_sampler("dpm_solver_fast", nfe_budget=20, solver_order=3)
    orders = singlestep_orders(20, 3)
    steps = fast.controller.times(problem, orders, "singlestep")
    outer = SCHEDULES["log_snr"](len(orders) + 1, sde.T, sde.eps, sde=sde)
    for i, (k, ts) in enumerate(zip(orders, steps, strict=True)):
        assert len(ts) == k + 1 and ts[0] == outer[i] and ts[-1] == outer[i + 1]
        lam = log_snr(sde, ts)
        torch.testing.assert_close((lam - lam[0]) / (lam[-1] - lam[0]), torch.arange(k + 1, dtype=torch.float64) / k)
    uniform = make_sampler("dpm_solver_fast", nfe_budget=20, solver_order=3, schedule="uniform")
    steps = uniform.controller.times(problem, orders, "singlestep")
    fine = torch.linspace(sde.T, sde.eps, 21, dtype=torch.float64)
    assert torch.equal(torch.stack([ts[0] for ts in steps] + [steps[-1][-1]]), fine[[0, 3, 6, 9, 12, 15, 18, 20]])
    assert torch.equal(torch.cat([ts[:-1] for ts in steps] + [steps[-1][-1:]]), fine)


def test_singlestep_fixed_is_dpm_solver_singlestep_on_its_grid():
    """``singlestep_fixed`` with 'log_snr' (⌊NFE/3⌋ steps uniform in λ, r = ⅓, ⅔) is the existing
    ``dpm_solver`` (singlestep, order 3) on ⌊NFE/3⌋ + 1 log-SNR points: the same samples."""
    problem, noise, x_T, _ = mixture_setup(SDES["vp"])
    for prediction in ("noise", "data"):
        fast = make_sampler("dpm_solver_fast", nfe_budget=20, method="singlestep_fixed", prediction=prediction)
        fixed = make_sampler("dpm_solver", solver_order=3, n_steps=7, prediction=prediction)
        torch.testing.assert_close(fast.sample(problem, x_T, noise).x, fixed.sample(problem, x_T, noise).x,
                                   rtol=1e-12, atol=1e-12)


# ---- orders ----------------------------------------------------------------------------------------
# NFE ≡ 2 mod 3 (order 3: its last step of order 2) and even NFE for order 2; 'last_order_1': NFE ≡ 1 mod 3.
ORDER_CASES = {
    "order1": ({"solver_order": 1}, [41, 80, 161], 1.0),
    "order2": ({"solver_order": 2}, [40, 80, 160], 2.0),
    "order3": ({"solver_order": 3}, [41, 80, 161], 3.0),
    "order3-data": ({"solver_order": 3, "prediction": "data"}, [41, 80, 161], 3.0),
    "order3-taylor": ({"solver_order": 3, "solver_type": "taylor"}, [41, 80, 161], 3.0),
    "order3-fixed": ({"solver_order": 3, "method": "singlestep_fixed"}, [42, 81, 162], 3.0),
    "order2-data-2S": ({"solver_order": 2, "prediction": "data"}, [40, 80, 160], 2.0),
}


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_fitted_order_on_mixture(case, kind):
    """Fitted against SciPy RK45 (rtol = atol = 1e-12) on the two-component mixture: declared ± 0.4."""
    opts, budgets, declared = ORDER_CASES[case]
    problem, noise, x_T, ref = mixture_setup(SDES[kind])
    errs = []
    for nfe in budgets:
        s = make_sampler("dpm_solver_fast", nfe_budget=nfe, denoise="none", **opts)
        problem.counter.reset()
        sol = s.sample(problem, x_T, noise)
        assert sol.stats.nfe == problem.counter.nfe == s.expected_nfe
        errs.append((sol.x - ref).abs().max().item())
    fit = fitted_order(budgets, errs)
    print(f"dpm_solver_fast {case} {kind}: declared {s.order}, fitted {fit:.2f}, errors {errs}")
    assert s.order == declared and abs(fit - declared) < 0.4, (fit, errs)


def test_a_last_first_order_step_makes_order_3_second_order():
    """NFE ≡ 1 mod 3: the mix ends with one DPM-Solver-1 step (local error O(h²)): fitted order 2 ± 0.4 on VE
    over budgets 253–1009 (over 64–253 the third-order steps still dominate: 2.5–2.6)."""
    budgets = [253, 505, 1009]
    problem, noise, x_T, ref = mixture_setup(SDES["ve"])
    errs = [(make_sampler("dpm_solver_fast", nfe_budget=n, denoise="none").sample(problem, x_T, noise).x - ref)
            .abs().max().item() for n in budgets]
    fit = fitted_order(budgets, errs)
    print(f"dpm_solver_fast order 3, NFE ≡ 1 mod 3: fitted {fit:.2f}, errors {errs}")
    assert abs(fit - 2.0) < 0.4


# ---- the order mix against fixed order at 20 NFE (docs/fast_samplers.md) ------------------------------
def mixed_vs_fixed(kind: str, schedule: str, nfe: int = 20, n_samples: int = 2048) -> dict[str, tuple[float, int]]:
    """Path error (RMS over samples of ‖x − x_ref‖, after the Tweedie denoise) of DPM-Solver-3 'singlestep'
    and 'singlestep_fixed' at budget ``nfe`` on quickstart's 2-D mixture (docs/fast_samplers.md's table
    setup: x_T seed 0, the reference EDM Heun on 2000 Karras points), with the counted NFE."""
    sde = SDES[kind]
    problem = Problem(table_mixture(sde))
    x_T = torch.randn(n_samples, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sde.prior_std()
    ref = make_sampler("edm_heun", n_steps=2000).sample(problem, x_T, _OneGenerator(0)).x
    out = {}
    for method in ("singlestep", "singlestep_fixed"):
        problem.counter.reset()
        x = make_sampler("dpm_solver_fast", nfe_budget=nfe, method=method, schedule=schedule).sample(
            problem, x_T, _OneGenerator(1)).x
        out[method] = (float((x - ref).norm(dim=1).pow(2).mean().sqrt()), problem.counter.nfe)
    return out


@pytest.mark.parametrize("kind, schedule", [("vp", "log_snr"), ("ve", "log_snr"), ("ve", "uniform"),
                                            ("vp", "uniform")])
def test_mixed_against_fixed_order_at_20_nfe(kind, schedule):
    """The order mix spends all 20 calls (21 with Tweedie), fixed order 3 only 18 (19). On the log-SNR grid
    and on VE it is more accurate (measured 2026-12-07: VP log_snr 0.033 vs 0.039, VE log_snr 0.009 vs
    0.014, VE uniform 0.010 vs 0.014). On VP with time-uniform steps it is not (0.454 vs 0.201): its last,
    second-order step spans t ∈ [eps, 0.1], λ from 1.1 to 4.6, where fixed order's last step is third order."""
    out = mixed_vs_fixed(kind, schedule)
    (mixed, nfe_mixed), (fixed, nfe_fixed) = out["singlestep"], out["singlestep_fixed"]
    print(f"{kind} {schedule}: mixed {mixed:.3f} ({nfe_mixed} NFE), fixed {fixed:.3f} ({nfe_fixed} NFE)")
    assert (nfe_mixed, nfe_fixed) == (21, 19)
    if (kind, schedule) == ("vp", "uniform"):
        assert fixed < 0.6 * mixed
    else:
        assert mixed < 0.9 * fixed


# ---- bad input ------------------------------------------------------------------------------------
def test_bad_options_are_rejected():
    for bad, match in [({"solver_order": 4}, "solver_order"), ({"method": "multistep"}, "method"),
                       ({"solver_type": "heun"}, "solver_type"), ({"prediction": "v"}, "prediction"),
                       ({"nfe_budget": 0}, "nfe_budget"), ({"schedule": "cosine"}, "schedule"),
                       ({"nfe_budget": 2, "method": "singlestep_fixed"}, "nfe_budget=2"),
                       ({"n_steps": 10}, "n_steps")]:
        with pytest.raises(ValueError, match=match):
            make_sampler("dpm_solver_fast", **bad)


# ---- diffusers' DPMSolverSinglestepScheduler side by side ---------------------------------------------
diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")

from models.diffusers_adapter import model_spec  # noqa: E402
from models.discrete import TimestepNet  # noqa: E402
from models.parameterisation import PredictionModel  # noqa: E402
from tests.test_deis import deis_run  # noqa: E402
from tests.test_diffusers_live import SCALED, X_T, Calls, rel  # noqa: E402


def diffusers_singlestep(config: dict, nfe: int, x_T: torch.Tensor) -> tuple[torch.Tensor, int]:
    """diffusers' loop, its σ levels (float32 there) replaced by the same levels in float64 (tests/test_deis.py)."""
    return deis_run(config, nfe, x_T, float64_levels=True, cls="DPMSolverSinglestepScheduler")


def harness_fast(config: dict, nfe: int, x_T: torch.Tensor, **options):
    spec = model_spec(config, "log_sigma")
    net = Calls()
    model = PredictionModel(TimestepNet(net, spec["path"], "log_sigma", spec["sigmas"], 1000), spec["path"],
                            spec["prediction"], tuple(x_T.shape[1:]))
    sampler = make_sampler("dpm_solver_fast", nfe_budget=nfe, schedule="linspace_n1", denoise="none", **options)
    problem = Problem(model)
    with torch.no_grad():
        sol = sampler.sample(problem, x_T, SeededNoise(range(x_T.shape[0])))
    return sol, net.n


ALGORITHMS = {"dpmsolver++": "data", "dpmsolver": "noise"}


PARITY = [(3, "heun", nfe) for nfe in (5, 6, 7, 8, 11, 20)] + [(2, t, nfe) for t in ("midpoint", "heun")
                                                              for nfe in (5, 7, 11, 21)]


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("order, solver_type, nfe", PARITY)
def test_matches_diffusers_singlestep(order, solver_type, nfe, algorithm):
    """diffusers' ``DPMSolverSinglestepScheduler`` (``lower_order_final=True``: the official order mix, but
    for order 2 at even NFE, below; ``final_sigmas_type='sigma_min'``; its timesteps linspace(0, 999, NFE + 1)
    rounded, the last dropped = the spacing 'linspace_n1') and ``dpm_solver_fast`` on the same σ levels in
    float64: its 'heun' is the official 'taylor', its 'midpoint' the official 'dpmsolver' at order 2. Same
    calls, ≤ 1e-12 relative (measured ≤ 2e-15)."""
    cfg = {**SCALED, "prediction_type": "epsilon"}
    ref, calls = diffusers_singlestep({**cfg, "solver_order": order, "algorithm_type": algorithm,
                                       "solver_type": solver_type, "lower_order_final": True,
                                       "final_sigmas_type": "sigma_min"}, nfe, X_T)
    sol, ncalls = harness_fast(cfg, nfe, X_T, solver_order=order, prediction=ALGORITHMS[algorithm],
                               solver_type="taylor" if solver_type == "heun" else "dpmsolver")
    d = rel(sol.x, ref)
    print(f"order {order} {solver_type} {algorithm} NFE {nfe}: max rel diff {d:.2e}, NFE {ncalls}/{calls}")
    assert ncalls == calls == sol.stats.nfe == nfe
    assert d < 1e-12


@pytest.mark.parametrize("nfe", [6, 20])
def test_diffusers_order_2_at_even_nfe_ends_with_two_first_order_steps(nfe):
    """diffusers' order-2 mix at even NFE is [2]·(NFE/2 − 1) + [1, 1] (``get_order_list``: [1, 2]·(n/2 − 1) +
    [1, 1], counted per call), the official one [2]·NFE/2: the harness follows the official code, and the
    samples differ (measured 2026-12-07: 5.0e-2 relative at 6 NFE, 3.4e-2 at 20, on this network)."""
    cfg = {**SCALED, "prediction_type": "epsilon", "solver_order": 2, "lower_order_final": True,
           "final_sigmas_type": "sigma_min"}
    sched = diffusers.DPMSolverSinglestepScheduler(**cfg)
    sched.set_timesteps(nfe)
    assert sched.order_list == [1, 2] * (nfe // 2 - 1) + [1, 1]
    assert singlestep_orders(nfe, 2) == [2] * (nfe // 2)
    ref, calls = diffusers_singlestep(cfg, nfe, X_T)
    sol, ncalls = harness_fast({**SCALED, "prediction_type": "epsilon"}, nfe, X_T, solver_order=2, prediction="data")
    d = rel(sol.x, ref)
    print(f"order 2 at NFE {nfe}: diffusers' mix against the official one, max rel diff {d:.2e}")
    assert ncalls == calls == nfe
    assert d > 1e-2


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_diffusers_midpoint_order_3_differs_from_the_official_intermediate(algorithm):
    """diffusers' order-3 'midpoint' reaches the second intermediate time with the midpoint weight ½ h φ₁
    where the official 'dpmsolver' uses h²φ₂ (Algorithm 2): the samples differ (measured 2026-12-07 at 20
    NFE on this network: 8.6e-4 (noise), 2.0e-3 (data) relative), while ``dpm_solver_fast`` order 3
    'dpmsolver' follows the official formulas."""
    cfg = {**SCALED, "prediction_type": "epsilon"}
    ref, calls = diffusers_singlestep({**cfg, "solver_order": 3, "algorithm_type": algorithm,
                                       "solver_type": "midpoint", "lower_order_final": True,
                                       "final_sigmas_type": "sigma_min"}, 20, X_T)
    sol, ncalls = harness_fast(cfg, 20, X_T, solver_order=3, prediction=ALGORITHMS[algorithm])
    d = rel(sol.x, ref)
    print(f"order 3 midpoint vs dpmsolver {algorithm}: max rel diff {d:.2e}")
    assert ncalls == calls == 20
    assert d > 1e-4
