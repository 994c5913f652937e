"""Gotta Go Fast adaptive solvers (solvers/adaptive.py): controller arithmetic by hand, the whole loop
against an independent transcription of REFERENCE §2.1 / fixtures README §3.7, NFE accounting, the
per-sample evaluation mode, and the sampled distribution."""

from __future__ import annotations

import math

import pytest
import torch

from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE
from solvers import IntegralController, Problem, RecordedNoise, SeededNoise, Status, make_sampler
from solvers.ggf import AdaptiveImprovedEuler

MU, S0 = 0.25, 0.5  # exact in float32 (GaussianMixture.isotropic builds its means in float32)


# ---- controller, by hand ----------------------------------------------------------------------------
def test_error_norms_by_hand():
    error = torch.tensor([[0.01, 0.02]])
    x_check = torch.tensor([[1.0, 0.05]])
    x_prev = torch.tensor([[0.5, 0.2]])
    # δ = max(0.01, 0.1·max(|x_prev|, |x_check|)) = [0.1, 0.02]  →  E/δ = [0.1, 1.0]
    for norm, expected in [("l2_scaled", math.sqrt(0.505)), ("l2", math.sqrt(1.01)), ("linf", 1.0)]:
        got = IntegralController(rtol=0.1, atol=0.01, norm=norm).error_norm(error, x_check, x_prev)
        assert got.item() == pytest.approx(expected, rel=1e-6)
    # Without x_prev (GGF error_use_prev=False): δ = [0.1, 0.01] → E/δ = [0.1, 2.0]
    got = IntegralController(rtol=0.1, atol=0.01, norm="linf").error_norm(error, x_check, None)
    assert got.item() == pytest.approx(2.0, rel=1e-6)


def test_propose_by_hand():
    ctrl = IntegralController(rtol=0.1, atol=0.01)  # θ = 0.9, r = 0.9
    h = torch.tensor([0.1, 0.1, 0.5], dtype=torch.float64)
    err = torch.tensor([0.5, 4.0, 0.0], dtype=torch.float64)
    accept, h_next = ctrl.propose(h, err)
    assert accept.tolist() == [True, False, True]
    expected = [0.9 * 0.1 * 0.5**-0.9,  # accepted: grows
                0.9 * 0.1 * 4.0**-0.9,  # rejected: shrinks, t unchanged
                0.9 * 0.5 * 1e-10**-0.9]  # E₂ = 0: floored at 1e-10 (the driver caps h at what is left)
    torch.testing.assert_close(h_next, torch.tensor(expected, dtype=torch.float64))
    # exponent=None: 1/order of the rule (DPM-Solver's 1/k).
    _, h_k = IntegralController(exponent=None).propose(h[:1], err[:1], order=3.0)
    assert h_k.item() == pytest.approx(0.9 * 0.1 * 0.5 ** (-1 / 3))


def test_invalid_options_name_choices():
    with pytest.raises(ValueError, match="accepted_proposal, current, none"):
        make_sampler("adaptive_improved_euler", x_prev="previous")
    with pytest.raises(ValueError, match="l2_scaled, l2, linf"):
        make_sampler("adaptive_em", norm="rms")
    with pytest.raises(ValueError, match="expected one of: .*atol"):
        make_sampler("adaptive_improved_euler", tol=0.1)
    with pytest.raises(ValueError, match="rtol"):
        make_sampler("adaptive_improved_euler", rtol=0)


# ---- the whole loop against an independent transcription -------------------------------------------
def _vp_coefs(t: float, beta_min=0.1, beta_max=20.0):
    """(f coefficient, g, α, σ) of score_sde's VP SDE at scalar t."""
    beta = beta_min + t * (beta_max - beta_min)
    lmc = -0.25 * t * t * (beta_max - beta_min) - 0.5 * t * beta_min
    return -0.5 * beta, math.sqrt(beta), math.exp(lmc), math.sqrt(1 - math.exp(2 * lmc))


def _reverse_drift(x: list[float], t: float) -> list[float]:
    """f − g² s for data N(MU, S0²) per coordinate, in plain floats."""
    f, g, a, s = _vp_coefs(t)
    v = a * a * S0 * S0 + s * s
    return [f * xi + g * g * (xi - a * MU) / v for xi in x]


def _ggf_reference(x0, draws, *, rtol, atol, h_init, eps, improved_euler, extrapolation, x_prev, norm):
    """REFERENCE §2.1 / fixtures §3.7 written out per sample with Python floats (batch-mode GGF)."""
    B = len(x0)
    x = [list(r) for r in x0]
    prev = [list(r) for r in x0]
    t, h = [1.0] * B, [h_init] * B
    it = 0
    while any(abs(ti - eps) > 1e-6 for ti in t):
        z = draws[it]
        it += 1
        for i in range(B):
            if abs(t[i] - eps) <= 1e-6:
                continue
            hi, ti, xi, zi = h[i], t[i], x[i], z[i]
            g_t, g_n = _vp_coefs(ti)[1], _vp_coefs(ti - hi)[1]
            if improved_euler:
                k1 = [-hi * d + g_t * math.sqrt(hi) * zz for d, zz in zip(_reverse_drift(xi, ti), zi)]
                x_em = [a + b for a, b in zip(xi, k1)]
                k2 = [-hi * d + g_n * math.sqrt(hi) * zz for d, zz in zip(_reverse_drift(x_em, ti - hi), zi)]
                x_heun = [a + 0.5 * (b + c) for a, b, c in zip(xi, k1, k2)]
                E = [0.5 * (c - b) for b, c in zip(k1, k2)]
                cand, check = (x_heun, x_em) if extrapolation else (x_em, x_heun)
            else:  # Lamba EM
                d1 = _reverse_drift(xi, ti)
                xm = [a - hi * d for a, d in zip(xi, d1)]
                d2 = _reverse_drift(xm, ti - hi)
                if extrapolation:
                    xm = [a - 0.5 * hi * (p + q) for a, p, q in zip(xi, d1, d2)]
                cand = [m + g_t * math.sqrt(hi) * zz for m, zz in zip(xm, zi)]
                E = [0.5 * hi * (q - p) for p, q in zip(d1, d2)]
                check = xm
            ref = {"accepted_proposal": prev[i], "current": xi, "none": [0.0] * len(xi)}[x_prev]
            r = [e / max(atol, rtol * max(abs(p), abs(c))) for e, p, c in zip(E, ref, check)]
            E2 = {"l2_scaled": math.sqrt(sum(v * v for v in r) / len(r)), "l2": math.sqrt(sum(v * v for v in r)),
                  "linf": max(abs(v) for v in r)}[norm]
            if E2 <= 1:
                x[i], prev[i], t[i] = cand, check, ti - hi
            h[i] = min(max(t[i] - eps, 0.0), 0.9 * hi * E2**-0.9) if hi > 0 else 0.0
    # Tweedie (GGF): x + σ(eps)² s(x, eps).
    _, _, a, s = _vp_coefs(eps)
    v = a * a * S0 * S0 + s * s
    return [[xi - s * s * (xi - a * MU) / v for xi in row] for row in x], it


CONVENTIONS = [
    ("adaptive_improved_euler", True, "accepted_proposal", "l2_scaled"),  # torch port / fixtures / paper text
    ("adaptive_improved_euler", True, "current", "l2_scaled"),  # the JAX code behind the paper's numbers
    ("adaptive_improved_euler", False, "none", "linf"),
    ("adaptive_em", True, "accepted_proposal", "l2"),
    ("adaptive_em", False, "accepted_proposal", "l2_scaled"),
]


@pytest.mark.parametrize("name, extrapolation, x_prev, norm, per_sample_eval",
                         [c + (i == 0,) for i, c in enumerate(CONVENTIONS)])
def test_loop_matches_transcription(name, extrapolation, x_prev, norm, per_sample_eval):
    sde = VPSDE()
    model = GaussianMixture.isotropic(sde, MU, S0, shape=(3,))
    B, eps, kw = 3, sde.eps, dict(rtol=0.1, atol=0.0078, h_init=0.01)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(B, 3, generator=gen, dtype=torch.float64)
    draws = torch.randn(400, B, 3, generator=gen, dtype=torch.float64)
    expected, iterations = _ggf_reference(x0.tolist(), draws.tolist(), eps=eps, improved_euler=name.endswith("euler"),
                                          extrapolation=extrapolation, x_prev=x_prev, norm=norm, **kw)
    sampler = make_sampler(name, extrapolation=extrapolation, x_prev=x_prev, norm=norm,
                           per_sample_eval=per_sample_eval, denoise="ggf", **kw)
    sol = sampler.sample(Problem(model), x0, RecordedNoise(draws))
    assert sol.status == Status.OK
    assert sol.stats.n_steps == iterations
    torch.testing.assert_close(sol.x, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    # Counted calls: 2 per iteration + 1 Tweedie, in both modes.
    assert sol.stats.nfe == 2 * iterations + 1


# ---- NFE accounting, modes, failures ------------------------------------------------------------------
def _problem(sde=None, shape=(1, 4, 4)):
    sde = sde or VPSDE()
    return Problem(GaussianMixture.isotropic(sde, MU, S0, shape=shape))


def test_per_sample_mode_same_samples_fewer_rows():
    B = 24
    x0 = torch.randn(B, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sols = {}
    for mode in (False, True):
        problem = _problem()
        sols[mode] = make_sampler("adaptive_improved_euler", rtol=0.05, atol=0.0078,
                                  per_sample_eval=mode).sample(problem, x0, SeededNoise(range(B)))
        # Every evaluated row is accounted to one sample.
        assert int(sols[mode].stats.nfe_per_sample.sum()) == problem.counter.rows == sols[mode].stats.extra["rows"]
    batch, per = sols[False], sols[True]
    torch.testing.assert_close(per.x, batch.x, rtol=1e-12, atol=1e-12)
    assert per.stats.nfe == batch.stats.nfe == 2 * batch.stats.n_steps + 1
    assert (batch.stats.nfe_per_sample == batch.stats.nfe).all()  # batch mode evaluates everyone every time
    assert per.stats.nfe_per_sample.max() == per.stats.nfe
    assert per.stats.nfe_per_sample.min() < per.stats.nfe  # per-sample mode stops evaluating finished samples
    assert per.stats.extra["rows"] < batch.stats.extra["rows"]
    assert (per.stats.n_accepted, per.stats.n_rejected) == (batch.stats.n_accepted, batch.stats.n_rejected)


def test_nfe_falls_as_rtol_grows():
    B = 8
    x0 = torch.randn(B, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nfe = [make_sampler("adaptive_improved_euler", rtol=rtol, atol=0.0078).sample(_problem(), x0,
                                                                                  SeededNoise(range(B))).stats.nfe
           for rtol in (0.03, 0.1, 0.3)]
    assert nfe[0] > nfe[1] > nfe[2], nfe


def test_max_steps_status_and_no_denoise():
    x0 = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sol = make_sampler("adaptive_improved_euler", max_steps=3).sample(_problem(), x0, SeededNoise(range(4)))
    assert sol.status == Status.MAX_STEPS and "max_steps=3" in sol.message
    assert sol.stats.nfe == 6 and sol.stats.n_steps == 3


def test_stepper_error_is_half_the_stage_difference():
    """One step by hand: E = ½(K2 − K1) = x_heun − x_em, and x_check is the EM proposal."""
    problem = _problem(shape=(2,))
    x = torch.tensor([[0.4, -1.0]], dtype=torch.float64)
    t, t_next = torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.45], dtype=torch.float64)
    z = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    out = AdaptiveImprovedEuler().step(problem, x, t, t_next, None, RecordedNoise([z]))
    torch.testing.assert_close(out.error, out.x - out.x_check)
    fr = torch.tensor([_reverse_drift(x[0].tolist(), 0.5)], dtype=torch.float64)
    k1 = -0.05 * fr + _vp_coefs(0.5)[1] * math.sqrt(0.05) * z
    torch.testing.assert_close(out.x_check, x + k1)


# ---- distribution ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", [VPSDE(), pytest.param(VESDE(sigma_max=5.0), marks=pytest.mark.slow)],
                         ids=["vp", "ve"])
def test_samples_match_gaussian_moments(sde):
    """N(MU, S0²) in D = 192 (3×8×8): mean and std within Monte-Carlo error. (In very few dimensions the
    algorithm itself is biased, see test_rejection_bias_shrinks_with_dimension.)"""
    B = 32
    problem = _problem(sde, shape=(3, 8, 8))
    x0 = sde.prior_std() * torch.randn(B, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sol = make_sampler("adaptive_improved_euler", rtol=0.05, atol=0.0078).sample(problem, x0, SeededNoise(range(B)))
    x = sol.x.flatten()
    assert abs(x.mean().item() - MU) < 5 * S0 / math.sqrt(x.numel())
    assert abs(x.std().item() - S0) < 5 * S0 / math.sqrt(2 * x.numel())


@pytest.mark.slow
def test_rejection_bias_shrinks_with_dimension():
    """Characterisation, not a wish: GGF redraws z after a rejection, so accepted noise is selected by the
    error test (cf. Rackauckas & Nie 2017, rejection sampling with memory). With a per-sample RMS error
    over D dimensions the selection weakens as D grows: std of N(0.25, 0.5²) samples ≈ 0.80 at D = 1,
    0.52 at D = 16, 0.506 at D = 64 (rtol 0.02, atol 0.005), and it does not vanish with the tolerance."""
    stds = {}
    for D, B in [(1, 600), (64, 40)]:
        problem = _problem(shape=(D,))
        x0 = torch.randn(B, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        sol = make_sampler("adaptive_improved_euler", rtol=0.02, atol=0.005).sample(problem, x0, SeededNoise(range(B)))
        stds[D] = sol.x.std().item()
    assert stds[1] > S0 * 1.3
    assert abs(stds[64] - S0) < abs(stds[1] - S0) / 5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adaptive_improved_euler", "adaptive_em"])
def test_mixture_distribution_at_tight_tolerance(name):
    """The fixtures' 16-D two-component mixture: mean and covariance within Monte-Carlo error."""
    sde = VPSDE()
    means = torch.stack([torch.full((1, 4, 4), -0.5), torch.full((1, 4, 4), 0.4)]).double()
    model = GaussianMixture(means, torch.tensor([0.15, 0.15]), sde, weights=torch.tensor([0.3, 0.7]))
    B = 2000
    x0 = torch.randn(B, 1, 4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sol = make_sampler(name, rtol=0.005, atol=0.002).sample(Problem(model), x0, SeededNoise(range(B)))
    x = sol.x.flatten(1)
    exact_mean, exact_cov = model.mean(), model.covariance()
    sd = exact_cov.diagonal().sqrt()
    assert ((x.mean(0) - exact_mean).abs() < 5 * sd / math.sqrt(B)).all()
    cov = torch.cov(x.T)
    # Var of a covariance entry estimate ≈ (Σ_ii Σ_jj + Σ_ij²)/B for near-Gaussian data; the mixture is
    # bimodal, so allow a wider band.
    band = 8 * (sd[:, None] * sd[None, :] + exact_cov.abs()) / math.sqrt(B)
    assert ((cov - exact_cov).abs() < band).all()
