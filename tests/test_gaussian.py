"""The exact-score mixture: score = ∇ log p_t (autograd), log-densities, samples."""

from __future__ import annotations

import pytest
import torch

from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE, SubVPSDE


def mixture(sde, diagonal=False):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    stds = (0.2 + torch.rand(3, 2, 3, 3, generator=g, dtype=torch.float64)) if diagonal else torch.tensor(
        [0.1, 0.3, 0.5], dtype=torch.float64)
    return GaussianMixture(means, stds, sde, weights=torch.tensor([0.2, 0.3, 0.5]))


@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "subvp", "ve"])
def test_score_is_gradient_of_log_density(sde, diagonal):
    gm = mixture(sde, diagonal)
    x = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(6, dtype=torch.float64) * 0.99 + 0.01
    (grad,) = torch.autograd.grad(gm.log_prob(x, t).sum(), x)
    assert torch.allclose(gm(x.detach(), t), grad, atol=1e-10)


def test_log_prob_matches_sampling_moments_and_torch():
    gm = mixture(VPSDE(), diagonal=True)
    x = gm.sample(200_000, generator=torch.Generator().manual_seed(1))
    flat = x.flatten(1)
    mc_err = 4 * flat.std(0) / 200_000**0.5
    assert ((flat.mean(0) - gm.mean()).abs() < mc_err).all()
    cov = torch.cov(flat.T)
    assert (cov - gm.covariance()).abs().max() < 0.02
    # log p_0 of a single diagonal component equals torch's Normal.
    one = GaussianMixture(gm.means[:1], gm.stds[:1], gm.sde)
    ref = torch.distributions.Normal(gm.means[0], gm.stds[0]).log_prob(x[:10]).flatten(1).sum(1)
    assert torch.allclose(one.log_prob_data(x[:10]), ref)


def test_diffused_samples_at_t():
    sde = VESDE(sigma_max=5.0)
    gm = mixture(sde)
    x = gm.sample(100_000, t=0.6, generator=torch.Generator().manual_seed(2)).flatten(1)
    assert (x.mean(0) - gm.mean(0.6)).abs().max() < 4 * x.std(0).max() / 100_000**0.5
    assert (torch.cov(x.T) - gm.covariance(0.6)).abs().max() < 0.1


def test_bad_mixtures_rejected():
    with pytest.raises(ValueError, match="stds must have shape"):
        GaussianMixture(torch.zeros(2, 4), torch.ones(3), VPSDE())
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 4), 0.5, VPSDE(), weights=torch.tensor([1.0, -1.0]))
