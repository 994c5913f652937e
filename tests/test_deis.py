"""DEIS (solvers/deis.py): side by side with diffusers' DEISMultistepScheduler, and its fitted orders on
the exact Gaussian flow and a two-component mixture (float64)."""

from __future__ import annotations

import pytest
import torch

from solvers import make_sampler
from tests.test_fast_samplers import SDES, _errors, fitted_order, gaussian_setup, mixture_setup

diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")

from models.discrete import train_sigmas  # noqa: E402
from tests.test_diffusers_live import SCALED, X_T, diffusers_run, harness_run, network, rel  # noqa: E402


# ---- parity with diffusers 0.42.1 ---------------------------------------------------------------
def deis_run(config: dict, n: int, x_T: torch.Tensor, float64_levels: bool, cls: str = "DEISMultistepScheduler"):
    """diffusers' DEISMultistepScheduler loop (or ``cls``'s) on ``network``; ``float64_levels``: its σ levels
    (which it stores in float32, as computed from the float32 ᾱ) replaced by the same levels in float64, so
    that its coefficients are float64 too (the harness's levels: models.discrete.train_sigmas)."""
    sched = getattr(diffusers, cls)(**config)
    sched.set_timesteps(n)
    if float64_levels:
        levels = train_sigmas(sched.alphas_cumprod)
        sched.sigmas = torch.cat([levels[sched.timesteps], levels[:1]])
    x, calls = x_T.clone(), 0
    for t in sched.timesteps:
        out = network(sched.scale_model_input(x, t), t.reshape(1).double().expand(x.shape[0]))
        calls += 1
        x = sched.step(out, t, x).prev_sample
    return x, calls


PARITY_TOL = {True: 1e-12, False: 1e-5}  # float64 levels (measured ≤ 1.4e-15); diffusers' float32 ones (≤ 1.9e-6)


@pytest.mark.parametrize("float64_levels", [True, False], ids=["float64-levels", "diffusers-levels"])
@pytest.mark.parametrize("spacing", ["trailing", "leading_n1"])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("n", [6, 12])
def test_deis_matches_diffusers(order, n, lower, spacing, float64_levels):
    """diffusers' loop (its last step to the first trained level: ``final_sigma='sigma_min'``, no
    denoise; ``lower_order_final`` below 15 steps) and the harness's ``deis`` on the same table, in
    float64: the same number of network calls and final samples within 1e-12 relative where diffusers'
    σ levels are the float64 ones. As shipped, diffusers rounds its σ levels to float32 and computes
    α, σ and the DEIS coefficients from them in float32; the third-order coefficients' log differences
    amplify that rounding (measured ≤ 1.9e-6 relative at p = 3, 12 steps, ≤ 2.7e-7 otherwise)."""
    cfg = {**SCALED, "prediction_type": "epsilon"}
    timestep_spacing, offset = ("trailing", 0) if spacing == "trailing" else ("leading", 1)
    ref, calls = deis_run({**cfg, "solver_order": order, "lower_order_final": lower,
                           "timestep_spacing": timestep_spacing, "steps_offset": offset}, n, X_T, float64_levels)
    sol, ncalls = harness_run(cfg, "deis", n, X_T, solver_order=order, lower_order_final=lower,
                              schedule=spacing, steps_offset=offset, final_sigma="sigma_min", denoise="none")
    assert ncalls == calls == sol.stats.nfe == n
    d = rel(sol.x, ref)
    print(f"deis p={order} n={n} lower={lower} {spacing} float64_levels={float64_levels}: max rel diff {d:.2e}, "
          f"NFE {ncalls}/{calls}")
    assert d < PARITY_TOL[float64_levels]


def test_lower_order_final_matters_against_diffusers():
    """The check above can fail: with ``lower_order_final`` on one side only the samples differ."""
    cfg = {**SCALED, "prediction_type": "epsilon"}
    ref, _, _ = diffusers_run("DEISMultistepScheduler", {**cfg, "solver_order": 3, "lower_order_final": True,
                                                         "timestep_spacing": "trailing"}, 6, X_T)
    sol, _ = harness_run(cfg, "deis", 6, X_T, solver_order=3, lower_order_final=False, schedule="trailing",
                         final_sigma="sigma_min", denoise="none")
    assert rel(sol.x, ref) > 1e-5


# ---- relation to DPM-Solver ------------------------------------------------------------------------
def test_order_3_is_multistep_dpm_solver_3_and_order_2_is_not_2m():
    """p = 3: the same polynomial and exact weights as multistep DPM-Solver-3 (noise prediction); p = 2
    (and so the order-2 warm-up and final steps of p = 3): DEIS weights ε̂' by h²φ₂(h), DPM-Solver-2M by
    ½ h φ₁(h) (its Algorithm 2's simplification); p = 1 is DDIM."""
    problem, noise, x_T, _ = gaussian_setup(SDES["vp"])

    def run(name, **opts):
        return make_sampler(name, n_steps=12, schedule="log_snr", denoise="none", **opts).sample(problem, x_T, noise).x

    # Every step third order (singlestep warm-up, no lower-order final steps): the same steps.
    opts = dict(solver_order=3, warmup="singlestep", lower_order_final=False)
    torch.testing.assert_close(run("deis", **opts), run("dpm_solver", method="multistep", **opts),
                               rtol=1e-10, atol=1e-12)
    d2, m2 = run("deis", solver_order=2), run("dpm_solver", solver_order=2, method="multistep")
    assert (d2 - m2).abs().max() > 1e-6
    torch.testing.assert_close(run("deis", solver_order=1), run("ddim"), rtol=1e-10, atol=1e-12)


# ---- orders ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("order", [1, 2])
def test_deis_order_gaussian(order, kind):
    """tAB1 (= DDIM) and tAB2 on the exact Gaussian flow, n = 17, 33, 65: declared 1 and 2."""
    ns = [17, 33, 65]
    sampler, errs = _errors("deis", {"solver_order": order}, kind, ns)
    fit = fitted_order(ns, errs)
    print(f"deis p={order} {kind}: declared {sampler.order}, fitted {fit:.2f}, errors {errs}")
    assert sampler.order == order and abs(fit - sampler.order) < 0.4, (fit, errs)


def test_deis_3_order_capped_by_the_warmup():
    """tAB3 with diffusers' warm-up (first step first order): declared 2, fitted on VE over n = 65…513
    where the first step's O(h²) error dominates (as DPM-Solver++(3M) in tests/test_fast_samplers.py)."""
    ns = [65, 129, 257, 513]
    sampler, errs = _errors("deis", {"solver_order": 3}, "ve", ns)
    fit = fitted_order(ns, errs)
    print(f"deis p=3 lower-order warm-up ve: declared {sampler.order}, fitted {fit:.2f}, errors {errs}")
    assert sampler.order == 2.0 and abs(fit - 2.0) < 0.4, (fit, errs)


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_deis_3_singlestep_warmup_order_on_mixture(kind):
    """tAB3 with accurate starting values (``warmup='singlestep'``): declared 3, fitted on the two-component
    mixture against SciPy RK45 at rtol = atol = 1e-12 (on the linear Gaussian flow a multistep method of
    this family shows order 4, see tests/test_fast_samplers.py)."""
    ns = [65, 129, 257]
    sampler, errs = _errors("deis", {"solver_order": 3, "warmup": "singlestep"}, kind, ns, mixture_setup)
    fit = fitted_order(ns, errs)
    print(f"deis p=3 singlestep warm-up {kind} mixture: declared {sampler.order}, fitted {fit:.2f}, errors {errs}")
    assert sampler.order == 3.0 and abs(fit - 3.0) < 0.4, (fit, errs)


def test_deis_options_are_checked():
    with pytest.raises(ValueError, match="solver_order"):
        make_sampler("deis", solver_order=4)
    with pytest.raises(ValueError, match="prediction"):
        make_sampler("deis", prediction="data")
    s = make_sampler("deis", n_steps=9, denoise="none")
    problem, noise, x_T, _ = gaussian_setup(SDES["vp"])
    problem.counter.reset()
    sol = s.sample(problem, x_T, noise)
    assert sol.stats.nfe == problem.counter.nfe == s.expected_nfe == 8
