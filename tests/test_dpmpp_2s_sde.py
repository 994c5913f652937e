"""dpm_solver_pp_2s_sde (k-diffusion's ``sample_dpmpp_sde``; side by side in tests/test_kdiffusion_side_by_side.py):
its deterministic part's order (η = 0: DPM-Solver++(2S) with r, of order 2) on the exact mixture, and the
law of its two draws per step (one Brownian path in σ)."""

from __future__ import annotations

import pytest
import torch

from solvers import make_sampler
from solvers.ancestral import ancestral_sigmas
from solvers.denoiser import ve_sigma
from tests.test_fast_samplers import SDES, _errors, fitted_order, gaussian_setup, mixture_setup


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("r", [0.5, 0.3])
def test_eta_0_is_second_order(kind, r):
    """η = 0 (no noise): DPM-Solver++(2S) in σ with the intermediate point at r; fitted on the two-component
    mixture against SciPy RK45 (rtol = atol = 1e-12), n = 33, 65, 129: 2 ± 0.4."""
    ns = [33, 65, 129]
    _, errs = _errors("dpm_solver_pp_2s_sde", {"eta": 0.0, "r": r}, kind, ns, mixture_setup)
    fit = fitted_order(ns, errs)
    print(f"dpm_solver_pp_2s_sde eta=0 r={r} {kind}: fitted {fit:.2f}, errors {errs}")
    assert abs(fit - 2.0) < 0.4, (fit, errs)


class Draws:
    """A noise source whose increments are given: (a, b) for every step, recorded with their intervals."""

    def __init__(self, values) -> None:
        self.values, self.asked = iter(values), []

    def increment(self, t, t_next, shape, dtype=torch.float64, device=None, index=None):
        self.asked.append((float(t[0]), float(t_next[0])))
        return next(self.values)


def test_second_draw_is_the_increment_over_the_whole_step():
    """With a = 0 the end noise is √(σ_s − σ_next)/√(σ − σ_next)·b, with b = 0 it is √(σ − σ_s)/√(σ − σ_next)·a:
    the normalised increment of one Brownian path over [σ_next, σ] made of the two sub-increments (checked
    against the sample the step gives with the end noise written out: the difference between two runs that
    differ only in b is σ_up' · √(σ_s − σ_next)/√(σ − σ_next) · Δb, in x_ve)."""
    problem, _, x_T, _ = gaussian_setup(SDES["ve"])
    sampler = make_sampler("dpm_solver_pp_2s_sde", n_steps=2, denoise="none")
    zero, one = torch.zeros_like(x_T), torch.ones_like(x_T)
    noise0, noise1 = Draws([zero, zero]), Draws([zero, one])
    x0 = sampler.sample(problem, x_T, noise0).x
    x1 = sampler.sample(problem, x_T, noise1).x
    (t, t_s), (_, t_next) = noise1.asked
    sigma, sigma_s, sigma_next = (ve_sigma(problem.sde, torch.tensor([v], dtype=torch.float64))
                                  for v in (t, t_s, t_next))
    up = ancestral_sigmas(sigma, sigma_next, 1.0)[1]
    expected = up * ((sigma_s - sigma_next) / (sigma - sigma_next)).sqrt() * problem.marginal(torch.tensor([t_next]))[0]
    torch.testing.assert_close(x1 - x0, expected.item() * one, rtol=1e-10, atol=1e-12)
