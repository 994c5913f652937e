"""Black-box probability-flow ODE samplers (SciPy, torchdiffeq): the exact affine flow of a Gaussian,
NFE accounting, per-sample solves, denoising, validation, and the sampled mixture distribution."""

from __future__ import annotations

import math

import pytest
import torch

from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE, SubVPSDE
from solvers import Problem, SeededNoise, make_sampler
from solvers.scipy_ode import SCIPY_METHODS
from solvers.torchdiffeq_ode import TORCHDIFFEQ_METHODS

MU, S0 = 0.25, 0.5
SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)]


def _exact_flow(sde, x_T):
    """x_eps = m_eps + (σ̃_eps/σ̃_T)(x_T − m_T), m_t = α_t μ, σ̃_t² = α_t² s₀² + σ_t² (DESIGN, 'ODE order')."""
    t = torch.tensor([sde.T, sde.eps], dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    m = alpha * MU
    s = (alpha**2 * S0**2 + sigma**2).sqrt()
    return m[1] + s[1] / s[0] * (x_T - m[0])


@pytest.mark.parametrize("sampler", ["scipy_ode", "torchdiffeq_ode"])
@pytest.mark.parametrize("sde", SDES, ids=["vp", "subvp", "ve"])
def test_exact_affine_flow(sampler, sde):
    model = GaussianMixture.isotropic(sde, MU, S0, shape=(1, 2, 2))
    x_T = sde.prior_std() * torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sol = make_sampler(sampler, rtol=1e-6, atol=1e-6, denoise="none").sample(Problem(model), x_T, None)
    assert sol.status == "ok"
    err = (sol.x - _exact_flow(sde, x_T)).abs().max().item()
    assert err < 1e-4, err


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun", "rk4", "euler"])
def test_torchdiffeq_nfe_accounting(method):
    """Counted NFE = start-up calls + calls per step × attempted steps (+1 denoise)."""
    _, adaptive, per_step, startup = TORCHDIFFEQ_METHODS[method]
    model = GaussianMixture.isotropic(VPSDE(), MU, S0, shape=(1, 2, 2))
    opts = {"rtol": 1e-4, "atol": 1e-4} if adaptive else {"n_steps": 10}
    problem = Problem(model)
    sol = make_sampler("torchdiffeq_ode", method=method, denoise="tweedie", **opts).sample(
        problem, torch.randn(3, 1, 2, 2, dtype=torch.float64), None)
    assert sol.stats.nfe == problem.counter.nfe == startup + per_step * sol.stats.n_steps + 1
    assert sol.stats.n_accepted + sol.stats.n_rejected == sol.stats.n_steps
    if not adaptive:
        assert sol.stats.n_steps == 10


def test_scipy_per_sample_and_batch():
    model = GaussianMixture.isotropic(VPSDE(), MU, S0, shape=(1, 2, 2))
    x_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    problem = Problem(model)
    per = make_sampler("scipy_ode", per_sample=True, denoise="ggf").sample(problem, x_T, None)
    batch = make_sampler("scipy_ode", denoise="ggf").sample(Problem(model), x_T, None)
    torch.testing.assert_close(per.x, batch.x, rtol=0, atol=1e-4)
    # Per-sample solves: total counted calls = sum of each sample's solves + one batched denoise call;
    # the per-sample NFE (counted around each solve) against SciPy's own nfev.
    assert per.stats.nfe == problem.counter.nfe == int(per.stats.nfe_per_sample.sum()) - 3 + 1
    assert per.stats.extra["nfev"] == int(per.stats.nfe_per_sample.sum()) - 3
    assert per.stats.nfe_per_sample.unique().numel() > 1  # the samples really took different solves
    assert (batch.stats.nfe_per_sample == batch.stats.nfe).all()
    assert batch.stats.nfe == batch.stats.extra["nfev"] + 1 and batch.stats.extra["batch_size"] == 3


@pytest.mark.parametrize("method", sorted(SCIPY_METHODS))
def test_scipy_attempted_steps_counted(method):
    """Attempted and rejected steps counted where SciPy decides them, checked against SciPy's nfev and
    against the accepted steps (the stages per step are the only formula, in the assertion)."""
    sde = VPSDE()
    model = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64), 0.05, sde)
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    problem = Problem(model)
    # A two-mode mixture with narrow modes: 16, 6 and 5 of 58, 17 and 13 attempts rejected (RK23, RK45, DOP853).
    sol = make_sampler("scipy_ode", method=method, rtol=1e-5, atol=1e-5, denoise="none").sample(problem, x_T, None)
    stages = SCIPY_METHODS[method][1]
    assert sol.stats.extra["nfev"] == problem.counter.nfe == stages * sol.stats.n_steps + 2
    assert sol.stats.n_accepted + sol.stats.n_rejected == sol.stats.n_steps
    assert sol.stats.n_rejected > 0  # the problem makes SciPy reject (else the count is untested)


def test_scipy_max_steps_status():
    model = GaussianMixture.isotropic(VPSDE(), MU, S0, shape=(1, 2, 2))
    x_T = torch.randn(2, 1, 2, 2)
    sol = make_sampler("scipy_ode", max_steps=2, denoise="tweedie").sample(Problem(model), x_T, None)
    assert sol.status == "max_steps" and sol.stats.extra["denoise_nfe"] == 0


def test_invalid_options():
    with pytest.raises(ValueError, match="RK23, RK45, DOP853"):
        make_sampler("scipy_ode", method="Radau")
    with pytest.raises(ValueError, match="none, reverse_diffusion, tweedie, ggf"):
        make_sampler("scipy_ode", denoise="x_mean")
    with pytest.raises(ValueError, match="needs n_steps"):
        make_sampler("torchdiffeq_ode", method="rk4")
    with pytest.raises(ValueError, match="adaptive"):
        make_sampler("torchdiffeq_ode", method="dopri5", n_steps=10)
    with pytest.raises(ValueError, match="dopri5"):
        make_sampler("torchdiffeq_ode", method="Dopri5")
    with pytest.raises(ValueError, match="expected one of"):
        make_sampler("scipy_ode", tol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["scipy_ode", "torchdiffeq_ode"])
def test_mixture_moments(sampler):
    """Samples at eps (no denoise) of the fixtures' 16-D mixture: moments of p_eps within MC error."""
    sde = VPSDE()
    means = torch.stack([torch.full((1, 4, 4), -0.5), torch.full((1, 4, 4), 0.4)]).double()
    model = GaussianMixture(means, torch.tensor([0.15, 0.15]), sde, weights=torch.tensor([0.3, 0.7]))
    B = 2000
    x_T = SeededNoise(range(B)).normal((B, 1, 4, 4), dtype=torch.float64)
    sol = make_sampler(sampler, denoise="none").sample(Problem(model), x_T, None)
    x = sol.x.flatten(1)
    cov = model.covariance(sde.eps)
    sd = cov.diagonal().sqrt()
    assert ((x.mean(0) - model.mean(sde.eps)).abs() < 5 * sd / math.sqrt(B)).all()
    assert ((torch.cov(x.T) - cov).abs() < 8 * (sd[:, None] * sd[None, :] + cov.abs()) / math.sqrt(B)).all()
