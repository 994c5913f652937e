"""SDE conventions against score_sde (REFERENCE §1.1) and against their own variance ODEs."""

from __future__ import annotations

import math

import pytest
import torch

from models.priors import GaussianPrior
from models.sde import VESDE, VPSDE, SubVPSDE, make_sde

SDES = [VPSDE(), SubVPSDE(), VESDE()]
IDS = ["vp", "subvp", "ve"]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginal_variance_solves_variance_ode(sde):
    """d/dt Var = 2 f_coef Var + g² (for VE, σ(t)² − σ_min² solves it; the offset has zero derivative)."""
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    var = lambda s: sde.marginal(s)[1] ** 2  # noqa: E731
    dvar = (var(t + h) - var(t - h)) / (2 * h)
    rhs = 2 * sde.drift_coef(t) * var(t) + sde.diffusion(t) ** 2
    assert torch.allclose(dvar, rhs, rtol=1e-6)
    # The mean coefficient solves dα/dt = f_coef α.
    alpha = lambda s: sde.marginal(s)[0]  # noqa: E731
    dalpha = (alpha(t + h) - alpha(t - h)) / (2 * h)
    assert torch.allclose(dalpha, sde.drift_coef(t) * alpha(t), rtol=1e-6, atol=1e-12)


def test_vp_and_subvp_identities():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    a, s = VPSDE().marginal(t)
    assert torch.allclose(a**2 + s**2, torch.ones_like(t))
    a2, s2 = SubVPSDE().marginal(t)
    assert torch.allclose(a2, a) and torch.allclose(s2, 1 - a2**2)  # sub-VP std has no square root


def test_ve_convention_keeps_sigma_min():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(sde.marginal(t)[1], 0.01 * 5000.0**t)
    assert sde.marginal(t)[1][0] == pytest.approx(0.01)


def test_discrete_tables_match_score_sde():
    N = 50
    vp, ve = VPSDE(), VESDE()
    ts = torch.linspace(1, 1e-3, N, dtype=torch.float64)
    i = (ts * (N - 1)).long()
    betas = torch.linspace(0.1 / N, 20.0 / N, N, dtype=torch.float64)
    assert torch.allclose(vp.discrete_beta(ts, N), betas[i])
    sigmas = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), N, dtype=torch.float64))
    s_i, s_prev = ve.discrete_sigmas(ts, N)
    assert torch.allclose(s_i, sigmas[i])
    assert torch.allclose(s_prev, torch.where(i > 0, sigmas[(i - 1).clamp(min=0)], torch.zeros_like(s_i)))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior_logp_matches_torch_normal(sde):
    z = torch.randn(5, 3, 4, 4, dtype=torch.float64) * sde.prior_std()
    ref = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(sde.prior_logp(z), ref)
    assert torch.allclose(GaussianPrior(sde).log_prob(z), ref)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_inverse_sigma(sde):
    t = torch.linspace(0.01, 1.0, 7, dtype=torch.float64)
    assert torch.allclose(sde.inverse_sigma(sde.marginal(t)[1]), t, atol=1e-9)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_transition_composes_marginals(sde):
    s, t = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64)
    a, v = sde.transition(t, s)
    alpha_s, sigma_s = sde.marginal(s)
    alpha_t, sigma_t = sde.marginal(t)
    assert torch.allclose(a * alpha_s, alpha_t) and torch.allclose(a**2 * sigma_s**2 + v, sigma_t**2)


def test_truncated_T_and_bad_params():
    assert VESDE(T=0.4).prior_std() == pytest.approx(0.01 * 5000.0**0.4)
    with pytest.raises(ValueError, match="eps"):
        VPSDE(T=0.5, eps=0.6)
    with pytest.raises(ValueError, match="T must be"):
        VPSDE(T=-1.0)
    with pytest.raises(ValueError, match="expected one of: vp, subvp, ve"):
        make_sde("vpp")
    with pytest.raises(ValueError, match="unknown option"):
        make_sde("vp", sigma_max=3.0)
