"""Ancestral DPM-Solver++(2S) (k-diffusion's ``sample_dpmpp_2s_ancestral``; Crowson, after Lu et al.
2022b, Algorithm 1): each step solves the probability-flow ODE with DPM-Solver++(2S) from σ down to
σ_down, then adds fresh noise of std σ_up, where σ_down² + σ_up² = σ_next² and

    σ_up = min(σ_next, η √(σ_next² (σ² − σ_next²) / σ²))     (η = 1: the DDPM posterior's noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step
from solvers.denoiser import Denoiser
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["DPMSolverPP2SAncestral", "ancestral_sigmas"]


def ancestral_sigmas(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(σ_down, σ_up), [B] each: the ODE target and the added noise's std of an ancestral step."""
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    return (sigma_next**2 - sigma_up**2).sqrt(), sigma_up


@dataclass(frozen=True)
class DPMSolverPP2SAncestral:
    """DPM-Solver++(2S) to σ_down, then σ_up·z (module docstring), on x_ve = x/α in σ_ve: with λ = −log σ,
    h = λ_down − λ and the midpoint s = λ + h/2,

        u = (σ_s/σ) x_ve − (e^{−h/2} − 1) D(x_ve; σ),   x_ve ← (σ_down/σ) x_ve − (e^{−h} − 1) D(u; σ_s) + σ_up z.

    Integrates: the reverse SDE (an ancestral discretisation; η = 0 is DPM-Solver++(2S) on the
    probability-flow ODE). Order: 1 (declared; stochastic). NFE per step: 2 (+1 for the final step to
    σ = 0, the x̂₀ prediction: k-diffusion's last Euler step). One noise draw per step.
    Reference: k-diffusion 0.1.1.post1 ``sampling.py`` ``sample_dpmpp_2s_ancestral``, run side by side
    in tests/test_kdiffusion_side_by_side.py.

    Args:
        eta: η ≥ 0, the share of the posterior noise (k-diffusion's default 1).
        s_noise: noise inflation (k-diffusion's ``s_noise``, default 1).
    """

    eta: float = 1.0
    s_noise: float = 1.0

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 2
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # σ_ve(T) = σ_T/α_T: finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="karras")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("eta", "s_noise"):
            v = getattr(self, key)
            if not isinstance(v, int | float) or isinstance(v, bool) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: {key} must be a number >= 0, got {v!r}")

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        D = Denoiser(problem)
        sigma, sigma_next = D.sigma(t), D.sigma(t_next)
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, self.eta)
        x_ve = D.to_ve(x, t)
        h = torch.log(sigma / sigma_down)
        sigma_s = sigma * torch.exp(-h / 2)
        u = expand_like(sigma_s / sigma, x_ve) * x_ve - expand_like(torch.expm1(-h / 2), x_ve) * D(x_ve, sigma, t)
        d_s = D(u, sigma_s)
        x_ve = expand_like(sigma_down / sigma, x_ve) * x_ve - expand_like(torch.expm1(-h), x_ve) * d_s
        x_mean = D.from_ve(x_ve, t_next)
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        x_ve = x_ve + expand_like(sigma_up * self.s_noise, x_ve) * z
        return Step(D.from_ve(x_ve, t_next), x_mean, state)
