"""EDM's design space (solvers/edm_ablation.py, NVlabs/edm ``ablation_sampler``): the EDM samplers it spans,
each choice's ODE against the probability-flow ODE on an exact mixture, its last step to σ = 0, the
iDDPM / VE / VP discretisations from their formulas, NFE per choice, and two grid cells through bench."""

from __future__ import annotations

import math

import pytest
import torch

from models.sde import VESDE, VPSDE
from solvers import SeededNoise, make_sampler
from solvers.denoiser import ve_sigma
from solvers.grids import SCHEDULES
from tests.helpers import run_grid_text
from tests.test_fast_samplers import SDES, fitted_order, mixture_setup


# ---- the samplers it spans ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_heun_edm_linear_none_is_edm_heun(kind):
    """(heun, 'karras' = EDM's discretisation, σ = t, s = 1), last step to σ = 0: EDM's Algorithm 1 =
    ``edm_heun`` with its final Tweedie denoise: the same samples (1e-12) and NFE (2N − 1 = 35 for N = 18)."""
    problem, noise, x_T, _ = mixture_setup(SDES[kind])
    ablation = make_sampler("edm_ablation", n_steps=18)
    problem.counter.reset()
    a = ablation.sample(problem, x_T, noise)
    assert a.stats.nfe == problem.counter.nfe == ablation.expected_nfe == 35
    b = make_sampler("edm_heun", n_steps=18).sample(problem, x_T, noise)
    torch.testing.assert_close(a.x, b.x, rtol=1e-12, atol=1e-12)


def test_churn_is_edm_stochastic_where_the_last_level_is_not_churned():
    """With churn on σ ∈ [0.05, 3] (the last level σ_min = 0.01 outside), the same seeds: ``edm_stochastic``
    (Algorithm 2) to 1e-12. With S_tmin = 0 ablation_sampler (as EDM's ``edm_sampler``) also churns before its
    last step to σ = 0, which ``edm_stochastic``'s final Tweedie denoise does not: the samples differ."""
    problem, _, x_T, _ = mixture_setup(SDES["ve"])

    def run(name, **churn):
        return make_sampler(name, n_steps=12, **churn).sample(problem, x_T, SeededNoise(range(len(x_T)))).x

    churn = dict(S_churn=20.0, S_tmin=0.05, S_tmax=3.0, S_noise=1.003)
    torch.testing.assert_close(run("edm_ablation", **churn), run("edm_stochastic", **churn), rtol=1e-12, atol=1e-12)
    churn["S_tmin"] = 0.0
    assert (run("edm_ablation", **churn) - run("edm_stochastic", **churn)).abs().max() > 1e-3


# ---- each choice's ODE is the probability-flow ODE ---------------------------------------------------
CHOICES = [(sigma, scaling) for sigma in ("vp", "ve", "linear") for scaling in ("vp", "none")]
ORDER_NS = {"heun": [65, 129, 257], "euler": [129, 257, 513]}


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("ode_solver", ["heun", "euler"])
@pytest.mark.parametrize("sigma_schedule, scaling", CHOICES)
def test_each_choice_integrates_the_probability_flow_ode(sigma_schedule, scaling, ode_solver, kind):
    """dx/dt = (σ̇/σ + ṡ/s) x − (σ̇ s/σ) D(x/s; σ) in the choice's t and x = s x̃, stopped at the grid's last
    point (``to_zero=False``, no denoise), converges to SciPy RK45's probability-flow solution (rtol = atol =
    1e-12) at the declared order ± 0.4 (measured 2026-12-07: 1.95–2.09 heun, 0.98–1.06 euler)."""
    problem, noise, x_T, ref = mixture_setup(SDES[kind])
    ns, errs = ORDER_NS[ode_solver], []
    for n in ns:
        s = make_sampler("edm_ablation", ode_solver=ode_solver, sigma_schedule=sigma_schedule, scaling=scaling,
                         to_zero=False, denoise="none", n_steps=n)
        problem.counter.reset()
        sol = s.sample(problem, x_T, noise)
        assert sol.stats.nfe == problem.counter.nfe == s.expected_nfe == (n - 1) * s.nfe_per_step
        errs.append((sol.x - ref).abs().max().item())
    fit = fitted_order(ns, errs)
    print(f"edm_ablation {ode_solver} σ={sigma_schedule} s={scaling} {kind}: fitted {fit:.2f}, errors {errs}")
    assert abs(fit - s.order) < 0.4


# ---- the last step to σ = 0 -------------------------------------------------------------------------
@pytest.mark.parametrize("ode_solver", ["heun", "euler"])
def test_last_step_to_zero(ode_solver):
    """One Euler step from t_{N−1} to t = 0 (1 call): with σ = t, s = 1 it is D(x; σ_min), the Tweedie denoise;
    with σ = √t (VE's schedule, t = σ²) it is x + (0 − t)(x − D)/(2t) = ½(x + D): not a denoise (on the VE SDE,
    where x is x̃)."""
    problem, noise, x_T, _ = mixture_setup(SDES["ve"])

    def run(sigma_schedule, **opts):
        s = make_sampler("edm_ablation", ode_solver=ode_solver, sigma_schedule=sigma_schedule, n_steps=10, **opts)
        problem.counter.reset()
        sol = s.sample(problem, x_T, noise)
        assert sol.stats.nfe == problem.counter.nfe == s.expected_nfe
        return sol

    for sigma_schedule in ("linear", "ve"):
        zero = run(sigma_schedule)
        stop = run(sigma_schedule, to_zero=False, denoise="none").x
        denoised = run(sigma_schedule, to_zero=False, denoise="tweedie").x
        assert zero.stats.nfe == 9 * (2 if ode_solver == "heun" else 1) + 1
        want = denoised if sigma_schedule == "linear" else 0.5 * (stop + denoised)
        torch.testing.assert_close(zero.x, want, rtol=1e-12, atol=1e-12)
        if sigma_schedule == "ve":  # ½(x − D): of the order of σ_min = 0.01 (measured 2.4e-4 heun, euler alike)
            assert (zero.x - denoised).abs().max() > 1e-5


# ---- the discretisations from their formulas ------------------------------------------------------------
def iddpm_levels(C_1=0.001, C_2=0.008, M=1000) -> list[float]:
    """u_0 … u_M of EDM's Table 1 (iDDPM), in plain Python floats."""
    def alpha_bar(j):
        return math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2

    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
    return u


@pytest.mark.parametrize("sigma_max, j0", [(81.0, 8), (80.0, 9)])
def test_iddpm_discretisation(sigma_max, j0):
    """σ_i = u_{j_i} with j_i = j_0 + round(i (j_1 − j_0)/(N − 1)), j_0 the first level ≤ σ_max (EDM's j_0 = 8
    with its σ_max = 81), j_1 the last ≥ σ_min: 1e-12 relative."""
    sde = VESDE(sigma_min=0.002, sigma_max=sigma_max)
    u = iddpm_levels()
    sigma_min = float(ve_sigma(sde, torch.tensor([sde.eps], dtype=torch.float64)))
    kept = [j for j, v in enumerate(u) if sigma_min <= v <= sigma_max]
    assert kept[0] == j0
    n = 18
    want = [u[kept[0] + round(i * (len(kept) - 1) / (n - 1))] for i in range(n)]
    got = ve_sigma(sde, SCHEDULES["iddpm"](n, sde.T, sde.eps, sde=sde))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)


def test_ve_discretisation_is_log_snr_and_vp_ablation_formula():
    """EDM's 've' discretisation σ_i = √(σ_max² (σ_min²/σ_max²)^{i/(N−1)}) is the 'log_snr' schedule; its 'vp' one
    σ_i = σ_vp(1 + i (ε_s − 1)/(N − 1)) with β_d, β_min fitted to (σ_min, σ_max) is 'edm_vp_ablation', which on
    score_sde's VP SDE (ε_s = eps = 1e-3) is 'uniform'."""
    sde = VESDE(sigma_min=0.002, sigma_max=80.0)
    lo, hi = ve_sigma(sde, torch.tensor([sde.eps, sde.T], dtype=torch.float64)).tolist()
    i = torch.arange(18, dtype=torch.float64)
    want = (hi**2 * (lo**2 / hi**2) ** (i / 17)).sqrt()
    got = ve_sigma(sde, SCHEDULES["log_snr"](18, sde.T, sde.eps, sde=sde))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    beta_d = 2 * (math.log(lo**2 + 1) / 1e-3 - math.log(hi**2 + 1)) / (1e-3 - 1)
    beta_min = math.log(hi**2 + 1) - 0.5 * beta_d
    t = 1 + i / 17 * (1e-3 - 1)
    want = (torch.exp(0.5 * beta_d * t**2 + beta_min * t) - 1).sqrt()
    got = ve_sigma(sde, SCHEDULES["edm_vp_ablation"](18, sde.T, sde.eps, sde=sde))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    vp = VPSDE()
    torch.testing.assert_close(SCHEDULES["edm_vp_ablation"](18, vp.T, vp.eps, sde=vp),
                               SCHEDULES["uniform"](18, vp.T, vp.eps), rtol=1e-12, atol=1e-12)


# ---- bad input ---------------------------------------------------------------------------------------
def test_bad_options_are_rejected():
    for bad, match in [({"ode_solver": "rk4"}, "ode_solver"), ({"sigma_schedule": "cosine"}, "sigma_schedule"),
                       ({"scaling": "ve"}, "scaling"), ({"S_churn": -1.0}, "S_churn"),
                       ({"epsilon_s": 1.5}, "epsilon_s"),
                       ({"to_zero": "yes"}, "to_zero"), ({"denoise": "tweedie"}, "invalid denoise='tweedie'"),
                       ({"schedule": "iddpm2"}, "schedule")]:
        with pytest.raises(ValueError, match=match):
            make_sampler("edm_ablation", **bad)


# ---- grid cells through bench -----------------------------------------------------------------------------
def test_grid_cells_euler_ve_and_heun_iddpm(tmp_path):
    """"Euler in t = σ² with the VE schedule" (EDM's VE column: the 've' discretisation = 'log_snr') and "Heun with
    the iDDPM discretisation" as cells of one grid on an exact VE mixture: both run, NFE as declared (N = 8:
    Euler 7 + 1, Heun 2·7 + 1), options and schedule recorded."""
    records = run_grid_text(tmp_path, """
name: ablation
model: {kind: mixture, means: [[-0.5, 0.0], [0.5, 0.0]], std: 0.1, sde: {kind: ve}}
eval: {num_samples: 4, batch_size: 4, device: cpu, metrics: [fd_exact]}
sweeps:
  - {solver: edm_ablation, ode_solver: euler, sigma_schedule: ve, scaling: none, schedule: log_snr, n_steps: 8}
  - {solver: edm_ablation, ode_solver: heun, schedule: iddpm, n_steps: 8}
""")
    by_solver = {r["options"].get("ode_solver"): r for r in records}
    assert set(by_solver) == {"euler", "heun"}
    assert all(r["status"] == "ok" for r in records)
    assert by_solver["euler"]["nfe"] == 8 and by_solver["euler"]["options"]["schedule"] == "log_snr"
    assert by_solver["heun"]["nfe"] == 15 and by_solver["heun"]["options"]["schedule"] == "iddpm"
