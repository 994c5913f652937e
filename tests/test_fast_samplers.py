"""Fast samplers (issue 9): denoiser view, σ/λ schedules, DDIM, EDM, DPM-Solver(++), UniPC.

Orders are fitted on Gaussian data, where the probability-flow map is exact and affine (see
tests/test_convergence.py). The NFE × sampler error table of docs/fast_samplers.md is produced by
``python tests/test_fast_samplers.py`` (and checked by the slow test at the bottom).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE, SubVPSDE
from solvers import Problem, SeededNoise, make_sampler, multistep
from solvers.denoiser import Denoiser, log_snr, phi, time_of_sigma, time_of_sigma_bisection, ve_sigma
from solvers.grids import SCHEDULES

MU, S0 = 0.3, 0.5
VE5 = VESDE(sigma_max=5.0)  # small σ_max: the asymptotic regime arrives within a few hundred steps
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VE5}


def exact_flow(sde, x_T):
    """Probability-flow map of N(μ, s₀² I) data from T to eps."""
    t = torch.tensor([sde.T, sde.eps], dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    st = (alpha**2 * S0**2 + sigma**2).sqrt()
    return alpha[1] * MU + st[1] / st[0] * (x_T - alpha[0] * MU)


def gaussian_setup(sde, n=8):
    problem = Problem(GaussianMixture.isotropic(sde, MU, S0, shape=(1, 2, 2)))
    noise = SeededNoise(range(n))
    x_T = problem.prior_sample(n, noise, dtype=torch.float64)
    return problem, noise, x_T, exact_flow(sde, x_T)


def fitted_order(ns, errs):
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


# ---- the denoiser view and the schedules -------------------------------------------------------
@pytest.mark.parametrize("kind", SDES)
def test_time_of_sigma_inverts_and_matches_closed_forms(kind):
    sde = SDES[kind]
    t = torch.linspace(sde.eps, sde.T, 11, dtype=torch.float64)
    sig = ve_sigma(sde, t)
    torch.testing.assert_close(time_of_sigma(sde, sig), t, rtol=0, atol=1e-13)
    # Closed forms: VP −lmc = ½ log(1 + σ²), sub-VP −lmc = asinh(σ/2), VE t = inverse_sigma(σ).
    if kind == "ve":
        torch.testing.assert_close(time_of_sigma(sde, sig), sde.inverse_sigma(sig), rtol=0, atol=1e-13)
    else:
        target = 0.5 * torch.log1p(sig**2) if kind == "vp" else torch.asinh(sig / 2)
        torch.testing.assert_close(-sde.log_mean_coeff(t), target, rtol=1e-12, atol=1e-14)
    # σ beyond σ_ve(T) (EDM's churn) maps beyond T; λ is −log σ_ve.
    assert float(time_of_sigma(sde, sig[-1:] * 1.5)) > sde.T
    torch.testing.assert_close(log_snr(sde, t), -sig.log())
    # The SDE's closed form (what time_of_sigma uses) agrees with bisection, below eps and beyond T too.
    wide = torch.cat([ve_sigma(sde, torch.linspace(0, 2 * sde.T, 41, dtype=torch.float64)), sig[-1:] * 3])
    torch.testing.assert_close(sde.inverse_ve_sigma(wide), time_of_sigma_bisection(sde, wide), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kind", SDES)
def test_denoiser_is_tweedie_in_ve_coordinates_and_one_call(kind):
    sde = SDES[kind]
    gm = GaussianMixture(torch.tensor([[-0.5, 0.2], [0.4, 0.1]], dtype=torch.float64), torch.tensor([0.2, 0.3]), sde)
    problem = Problem(gm)
    D = Denoiser(problem)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), 0.3, dtype=torch.float64)
    out = D(D.to_ve(x, t), D.sigma(t))  # t recovered from σ by the inversion
    assert problem.counter.nfe == 1
    torch.testing.assert_close(out, gm.denoise_mean(x, t), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(D.from_ve(D.to_ve(x, t), t), x)


def test_phi_series_and_closed_form_agree():
    z = torch.tensor([-3.0, -0.011, -0.009, 1e-6, 0.009, 0.011, 2.0], dtype=torch.float64)
    for k in (1, 2, 3, 4):
        # φ_k(z) = ∫₀¹ e^{(1−θ)z} θ^{k−1}/(k−1)! dθ, by a fine trapezoid rule.
        th = torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None]
        ref = torch.trapezoid(torch.exp((1 - th) * z) * th ** (k - 1) / math.factorial(k - 1), th[:, 0], dim=0)
        torch.testing.assert_close(phi(k, z), ref, rtol=1e-7, atol=0)


@pytest.mark.parametrize("kind", SDES)
def test_schedules_end_points_monotone_and_definitions(kind):
    sde = SDES[kind]
    karras = tuple(ve_sigma(sde, SCHEDULES["karras"](9, sde.T, sde.eps, sde=sde)).tolist())
    for name, fn in SCHEDULES.items():
        table = {"sigmas": karras} if name in ("table", "gits") else {}  # σ tables: tests/test_schedules.py
        ts = fn(9, sde.T, sde.eps, sde=sde, **table)
        assert ts.dtype == torch.float64 and ts.shape == (9,), name
        if name == "karras_float32":  # EDM2's float32 σ grid: the ends within float32 rounding of σ
            torch.testing.assert_close(ve_sigma(sde, ts[[0, -1]]), ve_sigma(sde, torch.tensor([sde.T, sde.eps])),
                                       rtol=1e-5, atol=0)
        elif name == "iddpm":  # EDM's iDDPM levels: table values inside [eps, T] (tests/test_edm_ablation.py)
            assert sde.eps <= float(ts[-1]) and float(ts[0]) <= sde.T, name
        else:
            assert float(ts[0]) == sde.T and float(ts[-1]) == sde.eps, name
        assert (ts[1:] < ts[:-1]).all(), name
    sig = ve_sigma(sde, SCHEDULES["karras"](9, sde.T, sde.eps, sde=sde))
    d = sig ** (1 / 7)
    torch.testing.assert_close(d[1:] - d[:-1], (d[1] - d[0]).expand(8), rtol=1e-9, atol=0)
    lam = log_snr(sde, SCHEDULES["log_snr"](9, sde.T, sde.eps, sde=sde))
    torch.testing.assert_close(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(8), rtol=1e-9, atol=0)
    if kind == "vp":  # EDM's VP schedule on score_sde's VP SDE is the uniform grid
        torch.testing.assert_close(SCHEDULES["edm_vp"](9, 1.0, 1e-3, sde=sde), SCHEDULES["uniform"](9, 1.0, 1e-3))
    with pytest.raises(ValueError, match="needs the SDE"):
        SCHEDULES["karras"](9, sde.T, sde.eps)


# ---- orders on the exact Gaussian flow ---------------------------------------------------------
# (registry name, options, problem). Every declared order is fitted in the default run and must lie in
# the symmetric band declared ± ORDER_TOL. ORDER_TOL = 0.4: the fits over n = 17, 33, 65 come out
# within 0.34 of the declared order (DPM-Solver-3 singlestep on VP: 3.34, still pre-asymptotic), and a
# method one order off (e.g. 4 declared 3) falls outside. 'mixture': the 3M methods with accurate
# starting values are fourth order on the linear Gaussian flow (measured 4.01 / 4.03), so their declared
# order 3 is fitted on a two-component mixture, against a SciPy RK45 solution at rtol = atol = 1e-12.
DETERMINISTIC = [
    ("ddim", {}, "gaussian"),
    ("edm_heun", {}, "gaussian"),
    ("dpm_solver", {"solver_order": 1}, "gaussian"),
    ("dpm_solver", {"solver_order": 2}, "gaussian"),
    ("dpm_solver", {"solver_order": 3}, "gaussian"),
    ("dpm_solver", {"solver_order": 2, "method": "multistep"}, "gaussian"),
    ("dpm_solver_pp", {}, "gaussian"),
    ("dpm_solver_pp", {"method": "singlestep"}, "gaussian"),
    ("dpm_solver_pp", {"solver_order": 3, "warmup": "singlestep"}, "mixture"),
    ("unipc", {"solver_order": 1}, "gaussian"),
    ("unipc", {"variant": "bh1"}, "gaussian"),
    ("unipc", {"variant": "bh2"}, "gaussian"),
]
ORDER_NS = {"gaussian": [17, 33, 65], "mixture": [65, 129, 257]}  # mixture: 17–65 is pre-asymptotic (2.5)
ORDER_TOL = 0.4


def mixture_setup(sde, n=8):
    """A two-component 2-d mixture (non-affine flow) and a SciPy RK45 solution at rtol = atol = 1e-12."""
    means = torch.tensor([[-0.5, 0.3], [0.4, -0.2]], dtype=torch.float64).reshape(2, 1, 1, 2)
    problem = Problem(GaussianMixture(means, torch.tensor([0.2, 0.3]), sde, weights=torch.tensor([0.4, 0.6])))
    noise = SeededNoise(range(n))
    x_T = problem.prior_sample(n, noise, dtype=torch.float64)
    ref = make_sampler("scipy_ode", rtol=1e-12, atol=1e-12, denoise="none").sample(problem, x_T, noise).x
    return problem, noise, x_T, ref


def _errors(name, opts, kind, ns=ORDER_NS["gaussian"], setup=gaussian_setup):
    problem, noise, x_T, exact = setup(SDES[kind])
    errs = []
    for n in ns:
        sampler = make_sampler(name, n_steps=n, denoise="none", **opts)
        problem.counter.reset()
        sol = sampler.sample(problem, x_T, noise)
        assert sol.stats.nfe == sampler.expected_nfe == problem.counter.nfe
        errs.append((sol.x - exact).abs().max().item())
    return sampler, errs


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("name, opts, problem", DETERMINISTIC,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o, _ in DETERMINISTIC])
def test_deterministic_order(name, opts, problem, kind):
    ns = ORDER_NS[problem]
    sampler, errs = _errors(name, opts, kind, ns, gaussian_setup if problem == "gaussian" else mixture_setup)
    fit = fitted_order(ns, errs)
    assert abs(fit - sampler.order) < ORDER_TOL, (sampler.order, fit, errs)
    print(f"{name} {opts} {kind}: declared {sampler.order}, fitted {fit:.2f}, errors {errs}")


@pytest.mark.parametrize("name, opts", [("dpm_solver_pp", {"solver_order": 3}),
                                        ("dpm_solver", {"solver_order": 3, "method": "multistep"})],
                         ids=["pp3m", "dpm3m"])
def test_multistep_lower_order_warmup_caps_declared_order(name, opts):
    """The reference codes' warm-up (first step first order) makes 3M asymptotically second order:
    declared 2, fitted on VE (where the first step's error shows) over n = 65…513, where the error is
    asymptotic (at n = 17, 33, 65 it is not even monotone: 2.8e-4, 2.1e-4, 5.8e-5); measured 2.03
    (pp3m) and 2.08 (dpm3m). The 'singlestep' warm-up (declared 3, fitted in test_deterministic_order)
    is ≥ 5× more accurate at n = 65."""
    ns = [65, 129, 257, 513]
    sampler, errs = _errors(name, opts, "ve", ns)
    fit = fitted_order(ns, errs)
    assert abs(fit - sampler.order) < 0.3, (sampler.order, fit, errs)
    s3, errs3 = _errors(name, {**opts, "warmup": "singlestep"}, "ve", [65])
    assert s3.order > sampler.order and errs3[-1] < errs[0] / 5, (errs3, errs)


def test_ddim_eta_one_is_ancestral_sampling_with_exact_transitions():
    problem, _, x_T, _ = gaussian_setup(VPSDE())
    a = make_sampler("ddim", n_steps=12, eta=1.0).sample(problem, x_T, SeededNoise(range(8))).x
    b = make_sampler("ancestral_sampling", n_steps=12, discretization="transition").sample(
        problem, x_T, SeededNoise(range(8))).x
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_ddim_ggf_table_option():
    problem, noise, x_T, exact = gaussian_setup(VPSDE())
    sol = make_sampler("ddim", n_steps=200, alphas="table", denoise="none").sample(problem, x_T, noise)
    assert (sol.x - exact).abs().max() < 0.05  # the discrete ᾱ table is a first-order approximation of α_t²
    with pytest.raises(ValueError, match="DDIM cannot run on the .ve. path.*needs a VP path"):
        make_sampler("ddim", alphas="table").sample(Problem(GaussianMixture.isotropic(VE5)), x_T, noise)
    with pytest.raises(ValueError, match="expected one of"):
        make_sampler("ddim", alphas="discrete")
    with pytest.raises(ValueError, match="eta"):
        make_sampler("ddim", eta=-1)


def test_edm_stochastic_without_churn_is_heun_and_with_churn_is_seeded_per_sample():
    problem, _, x_T, _ = gaussian_setup(VPSDE())
    heun = make_sampler("edm_heun", n_steps=10).sample(problem, x_T, SeededNoise(range(8))).x
    same = make_sampler("edm_stochastic", n_steps=10).sample(problem, x_T, SeededNoise(range(8))).x
    assert torch.equal(heun, same)
    churn = make_sampler("edm_stochastic", n_steps=10, S_churn=5.0, S_tmin=0.05, S_tmax=50.0)
    a = churn.sample(problem, x_T, SeededNoise(range(8)))
    b = churn.sample(problem, x_T[2:4], SeededNoise([2, 3]))
    assert a.stats.nfe == churn.expected_nfe == 19
    assert not torch.equal(a.x, heun)
    torch.testing.assert_close(b.x, a.x[2:4])
    with pytest.raises(ValueError, match="S_tmin <= S_tmax"):
        make_sampler("edm_stochastic", S_tmin=2.0, S_tmax=1.0)


def test_singlestep_warmup_nfe_and_lower_order_final():
    problem, noise, x_T, _ = gaussian_setup(VESDE(sigma_max=5.0))
    for opts, expected in [({"solver_order": 3, "warmup": "singlestep"}, 20 + 2 * 2 + 1),
                           ({"solver_order": 3}, 20 + 1), ({"solver_order": 3, "method": "singlestep"}, 60 + 1)]:
        sampler = make_sampler("dpm_solver_pp", n_steps=21, **opts)
        problem.counter.reset()
        assert sampler.sample(problem, x_T, noise).stats.nfe == sampler.expected_nfe == expected
    # Few steps: the last steps lower their order, and the warm-up order is capped by the steps left.
    s = make_sampler("unipc", n_steps=4, solver_order=3, warmup="singlestep")
    m = s.method
    assert [multistep.step_order(m, i, 3) for i in range(3)] == [1, 2, 1]
    assert [multistep.warmup_order(m, i, 3) for i in range(3)] == [3, 2, 0]
    assert s.expected_nfe == 3 + 2 + 1 + 1


def test_sde_dpm_solver_pp_samples_match_the_mixture():
    sde = VPSDE()
    means = torch.stack([torch.full((1, 2, 2), -0.5), torch.full((1, 2, 2), 0.4)]).double()
    gm = GaussianMixture(means, torch.tensor([0.15, 0.2]), sde, weights=torch.tensor([0.3, 0.7]))
    problem, n = Problem(gm), 1000
    noise = SeededNoise(range(n))
    sampler = make_sampler("dpm_solver_pp_sde", n_steps=41)
    x = sampler.sample(problem, problem.prior_sample(n, noise, torch.float64), noise).x.flatten(1)
    std = gm.covariance().diag().sqrt()
    assert ((x.mean(0) - gm.mean()).abs() < 4 * std / n**0.5 + 0.02).all()
    assert ((x.std(0) - std).abs() < 4 * std / (2 * n) ** 0.5 + 0.02).all()


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_adaptive_dpm_solver_meets_tolerance_and_counts(order, kind):
    """Data prediction: the error follows the tolerance. (With the paper's noise prediction the VP error is
    not monotone in the tolerance on this problem: order 3, rtol 1e-2 → 5.1e-3, 1e-3 → 1.1e-2; see the docs.)"""
    problem, noise, x_T, exact = gaussian_setup(SDES[kind])
    errs, nfes = [], []
    for rtol in (1e-2, 1e-3):
        sampler = make_sampler("dpm_solver_adaptive", solver_order=order, rtol=rtol, atol=rtol, denoise="none",
                               prediction="data")
        problem.counter.reset()
        sol = sampler.sample(problem, x_T, noise)
        assert sol.status == "ok" and sol.stats.nfe == problem.counter.nfe
        # Per-sample NFE against an independent count: each sample solved alone (the step control is
        # per sample, so its path does not depend on the batch), its calls counted by the wrapper.
        solo = []
        for i in range(len(x_T)):
            alone = Problem(problem.counter.model)
            sampler.sample(alone, x_T[i:i + 1], SeededNoise([i]))
            solo.append(alone.counter.nfe)
        assert torch.as_tensor(sol.stats.nfe_per_sample).tolist() == solo
        assert sol.stats.nfe == max(solo)  # the batch runs until its slowest sample is done
        errs.append((sol.x - exact).abs().max().item())
        nfes.append(sol.stats.nfe)
    assert errs[1] < errs[0] / 3 and errs[1] < 3e-3 and nfes[1] > nfes[0], (errs, nfes)
    tiny = make_sampler("dpm_solver_adaptive", rtol=1e-8, atol=1e-8, max_steps=3).sample(problem, x_T, noise)
    assert tiny.status == "max_steps" and "unfinished" in tiny.message


# ---- the NFE × sampler table (docs/fast_samplers.md) -------------------------------------------
TABLE_NFE = [5, 10, 15, 20, 30, 50]
# label: (registry name, options, NFE per step); every run ends with the Tweedie denoise (+1 NFE).
TABLE_SAMPLERS = {
    "pf_euler": ("pf_euler", {}, 1),
    "pf_heun": ("pf_heun", {}, 2),
    "ddim": ("ddim", {}, 1),
    "edm_heun": ("edm_heun", {}, 2),
    "dpm_solver-3S": ("dpm_solver", {"solver_order": 3}, 3),
    "dpm_solver_pp-2M": ("dpm_solver_pp", {}, 1),
    "dpm_solver_pp-3M": ("dpm_solver_pp", {"solver_order": 3}, 1),
    "unipc-bh1": ("unipc", {"variant": "bh1"}, 1),
    "unipc-bh2": ("unipc", {"variant": "bh2"}, 1),
    "euler_maruyama": ("euler_maruyama", {}, 1),
    "dpm_solver_pp_sde-2M": ("dpm_solver_pp_sde", {"solver_order": 2}, 1),
}
STOCHASTIC = {"euler_maruyama", "dpm_solver_pp_sde-2M"}


class _OneGenerator:
    """A batch noise source with one generator (fast for many samples; fine for measurements)."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, shape, dtype=torch.float64, device=None, index=None):
        return torch.randn(tuple(shape), generator=self.gen, dtype=dtype)

    def increment(self, t, t_next, shape, dtype=torch.float64, device=None, index=None):
        return self.normal(shape, dtype)


def table_mixture(sde):
    """quickstart's 2-D mixture: 4 components at (±0.6, ±0.6), std 0.1."""
    means = torch.tensor([[-0.6, -0.6], [-0.6, 0.6], [0.6, -0.6], [0.6, 0.6]], dtype=torch.float64)
    return GaussianMixture(means, torch.tensor(0.1), sde)


def measure_table(sde, n_samples=2048, nfes=TABLE_NFE, samplers=TABLE_SAMPLERS, seed=0):
    """{label: {nfe: (path_err, moment_err)}} and the reference's own errors.

    path_err: RMS over samples of ‖x − x_ref‖ with x_ref a fine Heun solution of the probability-flow
    ODE from the same x_T (EDM Heun on 2000 Karras points; checked against pf_heun on 4000 uniform
    points), after the Tweedie denoise. moment_err: ‖mean − mean_ref‖ + ‖cov − cov_ref‖_F of the
    outputs against the fine reference's outputs (Monte-Carlo noise cancels for the ODE samplers,
    which share x_T; for the stochastic ones it is ~1/√n_samples, reported as the floor).
    """
    problem = Problem(table_mixture(sde))
    x_T = torch.randn(n_samples, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_T = x_T * sde.prior_std()
    ref = make_sampler("edm_heun", n_steps=2000).sample(problem, x_T, _OneGenerator(0)).x
    check = make_sampler("pf_heun", n_steps=4000).sample(problem, x_T, _OneGenerator(0)).x

    def moments(x):
        return x.mean(0), torch.cov(x.T)

    m_ref, c_ref = moments(ref)

    def moment_err(x):
        m, c = moments(x)
        return float((m - m_ref).norm() + (c - c_ref).norm())

    out = {}
    for label, (name, opts, per_step) in samplers.items():
        out[label] = {}
        for nfe in nfes:
            steps = (nfe - 1) // per_step
            if steps < 1:
                continue
            sampler = make_sampler(name, n_steps=steps + 1, **opts)
            problem.counter.reset()
            x = sampler.sample(problem, x_T, _OneGenerator(seed + 1)).x
            path = float((x - ref).norm(dim=1).pow(2).mean().sqrt())
            out[label][problem.counter.nfe] = (path, moment_err(x))
    # Floor for stochastic samplers: two independent draws of exact samples of the reference law.
    floor = moment_err(make_sampler("euler_maruyama", n_steps=1000).sample(problem, x_T, _OneGenerator(7)).x)
    ref_err = float((check - ref).norm(dim=1).pow(2).mean().sqrt())
    return out, {"reference_vs_pf_heun_4000": ref_err, "stochastic_moment_floor": floor}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_fast_samplers_beat_em_and_pf_euler_at_low_nfe(kind):
    """At 15 and 20 NFE, DPM-Solver++(3M) and UniPC are ≥ 3× more accurate than pf_euler (path error
    against the exact ODE solution; measured 4–13×) and than Euler–Maruyama (moment error; EM has no
    path to compare; measured 5–65×, EM partly at its Monte-Carlo floor). At 10 NFE the margin is not
    asserted: with lower_order_final the 3M run is then mostly second order (VP: 1.2×)."""
    table, info = measure_table(SDES[kind], nfes=[15, 20],
                                samplers={k: TABLE_SAMPLERS[k] for k in
                                          ("pf_euler", "euler_maruyama", "dpm_solver_pp-3M", "unipc-bh2")})
    assert info["reference_vs_pf_heun_4000"] < 1e-5
    for nfe in (15, 20):
        for fast in ("dpm_solver_pp-3M", "unipc-bh2"):
            assert table[fast][nfe][0] * 3 < table["pf_euler"][nfe][0], (fast, nfe, table)
            assert table[fast][nfe][1] * 3 < table["euler_maruyama"][nfe][1], (fast, nfe, table)


if __name__ == "__main__":  # print the markdown tables of docs/fast_samplers.md (run from the repo root)
    torch.set_num_threads(1)
    for kind in ("vp", "ve"):
        table, info = measure_table(SDES[kind])
        print(f"\n### {kind}  ({info})\n")
        for col in (0, 1):
            print(f"\n{'path error (RMS)' if col == 0 else 'moment error'}\n")
            print("| sampler | " + " | ".join(f"NFE≈{n}" for n in TABLE_NFE) + " |")
            print("|---|" + "---|" * len(TABLE_NFE))
            for label, row in table.items():
                cells = []
                for n in TABLE_NFE:
                    hit = [k for k in row if k <= n and k > n - 3]  # the largest run within the budget
                    cells.append(f"{row[max(hit)][col]:.1e} ({max(hit)})" if hit else "–")
                if col == 0 and label in STOCHASTIC:
                    cells = ["(stochastic)"] * len(TABLE_NFE)
                print(f"| {label} | " + " | ".join(cells) + " |")
