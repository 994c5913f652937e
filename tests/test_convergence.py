"""Convergence on problems with exact solutions: ODE orders, EM strong order, distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE, SubVPSDE
from solvers import BrownianNoise, Problem, SeededNoise, make_sampler

SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)]
IDS = ["vp", "subvp", "ve"]
MU, S0 = 0.3, 0.5


def exact_flow(sde, x_T):
    """Probability-flow map of N(μ, s₀² I) data: x_eps = m_eps + (σ̃_eps/σ̃_T)(x_T − m_T), σ̃² = α² s₀² + σ²."""
    t = torch.tensor([sde.T, sde.eps], dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    st = (alpha**2 * S0**2 + sigma**2).sqrt()
    return alpha[1] * MU + st[1] / st[0] * (x_T - alpha[0] * MU)


def fitted_order(ns, errs):
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


@pytest.mark.parametrize("name, opts, order", [
    ("pf_euler", {}, 1.0),
    ("pf_heun", {}, 2.0),
    ("reverse_diffusion", {"probability_flow": True, "discretization": "transition"}, 1.0),
], ids=["pf_euler", "pf_heun", "rd_pf"])
@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_probability_flow_order(name, opts, order, sde):
    gm = GaussianMixture.isotropic(sde, MU, S0, shape=(1, 4, 4))
    noise = SeededNoise(range(8))
    problem = Problem(gm)
    x_T = problem.prior_sample(8, noise, dtype=torch.float64)
    exact = exact_flow(sde, x_T)
    ns = [17, 33, 65, 129, 257] if not (name == "pf_heun" and sde.kind == "subvp") else [65, 129, 257, 513, 1025]
    errs = []
    for n in ns:
        sol = make_sampler(name, n_steps=n, denoise="none", **opts).sample(problem, x_T, noise)
        errs.append((sol.x - exact).abs().max().item())
    assert abs(fitted_order(ns, errs) - order) < 0.3, errs


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_euler_maruyama_strong_order_on_shared_brownian_path(sde):
    """EM on one Brownian path against a fine EM reference on the same path: strong order 1 (additive noise)."""
    gm = GaussianMixture.isotropic(sde, MU, S0, shape=(2,))
    B = 64
    problem = Problem(gm)
    x_T = torch.randn(B, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * sde.prior_std()

    def solve(n):
        noise = BrownianNoise((B, 2), seed=11, t_min=sde.eps, t_max=sde.T, n_fine=2048)
        return make_sampler("euler_maruyama", n_steps=n, denoise="none").sample(problem, x_T, noise).x

    ref = solve(2049)
    ns = [17, 33, 65, 129]
    errs = [(solve(n) - ref).abs().mean().item() for n in ns]
    assert abs(fitted_order(ns, errs) - 1.0) < 0.3, errs


def _moment_check(sde, name, opts, n_samples, tol_bias):
    """Sample mean and std per dim vs the exact mixture, within Monte-Carlo error + a discretisation bias."""
    means = torch.stack([torch.full((1, 2, 2), -0.5), torch.full((1, 2, 2), 0.4)]).double()
    gm = GaussianMixture(means, torch.tensor([0.15, 0.2]), sde, weights=torch.tensor([0.3, 0.7]))
    problem = Problem(gm)
    noise = SeededNoise(range(n_samples))
    x = make_sampler(name, **opts).sample(problem, problem.prior_sample(n_samples, noise, torch.float64), noise).x
    flat = x.flatten(1)
    mean, std = gm.mean(), gm.covariance().diag().sqrt()
    mc_mean = 4 * std / n_samples**0.5
    mc_std = 4 * std / (2 * n_samples) ** 0.5
    return (flat.mean(0) - mean).abs() - mc_mean, (flat.std(0) - std).abs() - mc_std, tol_bias


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("name, opts", [
    ("euler_maruyama", {"n_steps": 200}),
    ("reverse_diffusion", {"n_steps": 200}),
    ("pc", {"n_steps": 100, "snr": 0.16}),
    ("pf_heun", {"n_steps": 50}),
], ids=["em", "rd", "pc", "pf_heun"])
def test_samples_match_exact_mixture(sde, name, opts):
    d_mean, d_std, bias = _moment_check(sde, name, opts, 1000, tol_bias=0.02)
    assert (d_mean < bias).all() and (d_std < bias).all(), (d_mean, d_std)


SHRINK_CASES = [(sde, i, name) for sde, i in zip(SDES, IDS)
                for name in ["euler_maruyama", "reverse_diffusion", "ancestral_sampling", "pc"]
                if not (name == "ancestral_sampling" and i == "subvp")]  # refused for sub-VP
# Where 25 steps is already within the Monte-Carlo bounds of 20k samples (measured 2026-12-01: sub-VP
# PC, beyond-MC error 0; the corrector needs n_steps > 20 there, so no coarser grid), only the fine run
# is checked. Elsewhere the 25-step error beyond MC was 2.5e-4 (VE EM) to 9.3e-2 (VE RD).
UNRESOLVED_AT_25 = {("subvp", "pc")}


@pytest.mark.slow
@pytest.mark.parametrize("sde, kind, name", SHRINK_CASES, ids=[f"{i}-{n}" for _, i, n in SHRINK_CASES])
def test_error_shrinks_as_steps_grow(sde, kind, name):
    """Moment errors at 1000 steps are within Monte-Carlo error (20k samples); at 25 steps they are
    measurably beyond it, and larger than at 1000."""
    coarse = _moment_check(sde, name, {"n_steps": 25}, 20_000, 0.0)
    fine = _moment_check(sde, name, {"n_steps": 1000}, 20_000, 0.003)
    assert (fine[0] < fine[2]).all() and (fine[1] < fine[2]).all(), fine
    err = lambda c: (c[0].clamp(min=0) + c[1].clamp(min=0)).sum()  # noqa: E731
    if (kind, name) not in UNRESOLVED_AT_25:
        assert err(coarse) > 0 and err(fine) < err(coarse), (coarse, fine)


@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_torchsde_strong_order_on_its_reusable_brownian_path(method):
    """torchsde methods on one reusable BrownianInterval path (same seed) converge at strong order 1."""
    sde = VPSDE()
    problem = Problem(GaussianMixture.isotropic(sde, MU, S0, shape=(2,)))
    x_T = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def solve(n):
        sampler = make_sampler("torchsde", method=method, n_steps=n, denoise="none", seed=7)
        return sampler.sample(problem, x_T, SeededNoise(range(16))).x

    ref = solve(1025)
    ns = [17, 33, 65, 129]
    errs = [(solve(n) - ref).abs().mean().item() for n in ns]
    assert abs(fitted_order(ns, errs) - 1.0) < 0.3, errs
