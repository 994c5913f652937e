"""DEIS (solvers/deis.py): side by side with diffusers' DEISMultistepScheduler, and its fitted orders on
the exact Gaussian flow and a two-component mixture (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from solvers import make_sampler
from solvers.denoiser import ve_sigma
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


# ---- tAB and ρAB (basis 't', 'rho'): qsh-zh/deis's variants, on known answers --------------------------
from scipy.integrate import quad  # noqa: E402

from models.sde import VESDE, VPSDE  # noqa: E402
from solvers.deis import deis_coefficients  # noqa: E402
from tests.test_fast_samplers import VE5  # noqa: E402

VP_LINEAR = VPSDE(beta_min=0.1, beta_max=20.0)


def drho_dt(sde, t: float) -> float:
    """dρ/dt of ρ = σ_ve(t) in closed form: VP-linear ρ = √(e^{B(t)} − 1), B = β_min t + ½(β_max − β_min)t²;
    VE ρ = σ_min (σ_max/σ_min)^t."""
    if isinstance(sde, VESDE):
        rho = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
        return rho * math.log(sde.sigma_max / sde.sigma_min)
    B = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2
    dB = sde.beta_min + (sde.beta_max - sde.beta_min) * t
    return dB * math.exp(B) / (2 * math.sqrt(math.expm1(B)))


def lagrange(nodes, j, v):
    out = 1.0
    for m, v_m in enumerate(nodes):
        if m != j:
            out *= (v - v_m) / (nodes[j] - v_m)
    return out


def ours(sde, nodes, t, t_next, basis):
    rho = ve_sigma(sde, torch.tensor([t, t_next], dtype=torch.float64))
    v = [torch.tensor([n], dtype=torch.float64) for n in nodes]
    return [float(c) for c in deis_coefficients(sde, v, rho[:1], rho[1:], basis)]


STEPS = [([0.5, 0.6, 0.7], 0.4), ([0.05, 0.1, 0.15], 1e-3), ([1.0, 1.05, 1.1], 0.95), ([0.3, 0.4], 0.2)]


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("nodes, t_next", STEPS)
def test_tab_coefficients_against_adaptive_quadrature(nodes, t_next, kind):
    """tAB: ∫_t^{t_next} ℓ_j(τ) dρ(τ), by Gauss–Legendre in log ρ, against SciPy's adaptive ``quad`` of
    ℓ_j(τ) ρ'(τ) in t with ρ' in closed form (VP-linear β 0.1–20; VE σ 0.01–5): 1e-10 relative."""
    sde = VP_LINEAR if kind == "vp" else VE5
    t = nodes[0]
    got = ours(sde, nodes, t, t_next, "t")
    for j in range(len(nodes)):
        want = quad(lambda tau, j=j: lagrange(nodes, j, tau) * drho_dt(sde, tau), t, t_next, epsabs=0, epsrel=1e-13,
                    limit=200)[0]
        assert got[j] == pytest.approx(want, rel=1e-10, abs=1e-14), (j, got[j], want)


@pytest.mark.parametrize("nodes, t_next", STEPS)
def test_rab_coefficients_are_polynomial_integrals(nodes, t_next):
    """ρAB: ∫ ℓ_j(ρ) dρ of a polynomial in ρ, in closed form (numpy's polyint of the Lagrange polynomial)."""
    rho_nodes = ve_sigma(VP_LINEAR, torch.tensor(nodes, dtype=torch.float64)).tolist()
    r0, r1 = ve_sigma(VP_LINEAR, torch.tensor([nodes[0], t_next], dtype=torch.float64)).tolist()
    got = ours(VP_LINEAR, rho_nodes, nodes[0], t_next, "rho")
    for j in range(len(nodes)):
        ys = np.eye(len(nodes))[j]
        poly = np.polyint(np.polyfit(rho_nodes, ys, len(nodes) - 1))
        want = np.polyval(poly, r1) - np.polyval(poly, r0)
        assert got[j] == pytest.approx(want, rel=1e-9, abs=1e-13), (j, got[j], want)


def reference_rule(sde, nodes, t, t_next, j, n):
    """qsh-zh/deis's quadrature, from its formula: Σ over n left end points τ of [t, t_next) of
    Ψ(τ, t_next)·(−½ d log ᾱ/dτ)/√(1 − ᾱ_τ)·ℓ_j(τ)·Δt on VP (ᾱ = α²), divided by α_next."""
    tau = torch.linspace(t, t_next, n + 1, dtype=torch.float64)[:-1]
    alpha, sigma = sde.marginal(tau)
    alpha_n = float(sde.marginal(torch.tensor([t_next], dtype=torch.float64))[0])
    f = -0.5 * (sde.beta_min + (sde.beta_max - sde.beta_min) * tau)  # d log α/dτ
    integrand = alpha_n / alpha * (-f / sigma) * lagrange(nodes, j, tau)
    return float(integrand.sum() * (t_next - t) / n) / alpha_n


def test_reference_left_sum_converges_to_ours_at_first_order():
    """The reference's 10 000-point left sum differs from the Gauss–Legendre value by O(1/n): the difference
    shrinks 4× (3–5×) from n = 10 000 to 40 000 and is below 1e-3 relative at 10 000."""
    nodes, t_next = STEPS[0]
    got = ours(VP_LINEAR, nodes, nodes[0], t_next, "t")
    for j in range(3):
        d1 = abs(reference_rule(VP_LINEAR, nodes, nodes[0], t_next, j, 10_000) - got[j])
        d4 = abs(reference_rule(VP_LINEAR, nodes, nodes[0], t_next, j, 40_000) - got[j])
        assert d1 < 1e-3 * abs(got[j]) and 3 < d1 / d4 < 5, (j, d1, d4)


@pytest.mark.parametrize("basis", ["t", "rho"])
def test_p1_is_ddim_for_every_basis(basis):
    problem, noise, x_T, _ = gaussian_setup(SDES["vp"])
    def run(name, **opts):
        return make_sampler(name, n_steps=12, schedule="log_snr", denoise="none", **opts).sample(problem, x_T, noise).x

    torch.testing.assert_close(run("deis", solver_order=1, basis=basis), run("ddim"), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("basis", ["t", "rho"])
@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_tab_rab_fitted_order_on_mixture(order, kind, basis):
    """tAB-p / ρAB-p with accurate starting values (``warmup='singlestep'``, p = 3), on the two-component
    mixture against SciPy RK45 at 1e-12: declared p ± 0.4."""
    ns = [65, 129, 257]
    opts = {"solver_order": order, "basis": basis, "warmup": "singlestep" if order == 3 else "lower_order"}
    sampler, errs = _errors("deis", opts, kind, ns, mixture_setup)
    fit = fitted_order(ns, errs)
    print(f"deis basis={basis} p={order} {kind} mixture: declared {sampler.order}, fitted {fit:.2f}, errors {errs}")
    assert sampler.order == order and abs(fit - order) < 0.4, (fit, errs)


def test_tab_3_differs_from_log_rho_and_counts():
    """The bases are different methods (same NFE): tAB3 and the log-ρ DEIS differ at 10 steps."""
    problem, noise, x_T, _ = mixture_setup(SDES["vp"])
    out = {}
    for basis in ("log_rho", "t", "rho"):
        s = make_sampler("deis", solver_order=3, basis=basis, n_steps=11, denoise="none")
        problem.counter.reset()
        out[basis] = s.sample(problem, x_T, noise).x
        assert problem.counter.nfe == s.expected_nfe == 10
    assert (out["t"] - out["log_rho"]).abs().max() > 1e-5 and (out["rho"] - out["t"]).abs().max() > 1e-5
    with pytest.raises(ValueError, match="basis"):
        make_sampler("deis", basis="logrho")


def test_tab_is_log_rho_deis_on_ve():
    """On VE, log ρ = log σ_min + t log(σ_max/σ_min) is affine in t: a polynomial in t is one in log ρ, so tAB-p
    and the log-ρ DEIS (exact weights) take the same steps — to quadrature precision (1e-10 relative)."""
    problem, noise, x_T, _ = mixture_setup(SDES["ve"])
    opts = dict(solver_order=3, n_steps=15, denoise="none")
    tab = make_sampler("deis", basis="t", **opts).sample(problem, x_T, noise).x
    torch.testing.assert_close(tab, make_sampler("deis", **opts).sample(problem, x_T, noise).x, rtol=1e-10, atol=1e-12)
