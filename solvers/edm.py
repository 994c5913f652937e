"""EDM's samplers (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models"): Heun's method in σ space (Algorithm 1) and its stochastic variant with churn (Algorithm 2).

Both run on the denoiser view of the model (:class:`solvers.denoiser.Denoiser`): the state is
x_ve = x/α_t and the ODE is dx_ve/dσ = (x_ve − D(x_ve; σ))/σ, i.e. EDM's choice σ(t) = t, s(t) = 1,
for every SDE. The grid's times t_i give σ_i = σ_ve(t_i) (default schedule: Karras' ρ = 7). EDM's
last step to σ = 0 is an Euler step, x_ve + (0 − σ)(x_ve − D)/σ = D(x_ve; σ): exactly the final
'tweedie' denoising of the fixed-grid driver (1 NFE), so with ``n_steps`` grid points the NFE is
2(n_steps − 1) + 1, EDM's 2N − 1 (35 NFE for N = 18).
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

__all__ = ["EDMHeun", "EDMStochastic", "Euler", "CHURN_DRAWS", "check_churn"]

CHURN_DRAWS = ("every_step", "in_range")  # EDM's edm_sampler, EDM2's


def check_churn(method) -> None:
    """ValueError unless S_churn, S_tmin, S_tmax, S_noise are numbers >= 0 with S_tmin <= S_tmax."""
    name = type(method).__name__
    for key in ("S_churn", "S_tmin", "S_tmax", "S_noise"):
        v = getattr(method, key)
        if not isinstance(v, int | float) or isinstance(v, bool) or not v >= 0:
            raise ValueError(f"{name}: {key} must be a number >= 0, got {v!r}")
    if method.S_tmin > method.S_tmax:
        raise ValueError(f"{name}: need S_tmin <= S_tmax, got {method.S_tmin} > {method.S_tmax}")


def _slope(D: Denoiser, x_ve: Tensor, sigma: Tensor, t: Tensor) -> Tensor:
    """dx_ve/dσ = (x_ve − D(x_ve; σ))/σ at (x_ve, σ) (1 denoiser call), [B, ...]."""
    return (x_ve - D(x_ve, sigma, t)) / expand_like(sigma, x_ve)


def _heun(D: Denoiser, x_ve: Tensor, sigma: Tensor, t: Tensor, sigma_next: Tensor, t_next: Tensor) -> Tensor:
    """One Heun step of dx_ve/dσ = (x_ve − D)/σ from σ to σ_next > 0 (2 denoiser calls), [B, ...]."""
    d = _slope(D, x_ve, sigma, t)
    dsigma = expand_like(sigma_next - sigma, x_ve)
    x_euler = x_ve + dsigma * d
    d_next = _slope(D, x_euler, sigma_next, t_next)
    return x_ve + dsigma * 0.5 * (d + d_next)


@dataclass(frozen=True)
class EDMHeun:
    """EDM's deterministic sampler: Heun's 2nd-order method in σ (Karras et al. 2022, Algorithm 1).

    Integrates: the probability-flow ODE, written as dx_ve/dσ = (x_ve − D(x_ve; σ))/σ. Order: 2.
    NFE per step: 2 (+1 for the final step to σ = 0, ``denoise='tweedie'``). SDEs: VE, VP, sub-VP
    (through x_ve = x/α_t, σ_ve = σ_t/α_t).
    """

    order: ClassVar[float] = 2.0
    nfe_per_step: ClassVar[int] = 2
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # f(T), g²(T) or σ_ve(T): finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="karras")
    conventions: ClassVar[dict] = ON_GRID

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        del noise
        D = Denoiser(problem)
        x_ve = _heun(D, D.to_ve(x, t), D.sigma(t), t, D.sigma(t_next), t_next)
        x = D.from_ve(x_ve, t_next)
        return Step(x, x, state)


@dataclass(frozen=True)
class Euler:
    """Euler's method in σ: x_ve ← x_ve + (σ_next − σ)(x_ve − D(x_ve; σ))/σ (Karras et al. 2022, Table 1's
    Euler; k-diffusion's ``sample_euler`` without churn; diffusers' ``EulerDiscreteScheduler``, whose
    state is x_ve and whose last step to σ = 0 is the final 'tweedie' denoise).

    Integrates: the probability-flow ODE dx_ve/dσ = (x_ve − D(x_ve; σ))/σ. Order: 1. NFE per step: 1
    (+1 for the final step to σ = 0). SDEs: any path with α_T > 0 (through x_ve = x/α_t).
    """

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="karras")
    conventions: ClassVar[dict] = ON_GRID

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        del noise
        D = Denoiser(problem)
        sigma, sigma_next = D.sigma(t), D.sigma(t_next)
        x_ve = D.to_ve(x, t)
        x_ve = x_ve + expand_like(sigma_next - sigma, x_ve) * _slope(D, x_ve, sigma, t)
        x = D.from_ve(x_ve, t_next)
        return Step(x, x, state)


@dataclass(frozen=True)
class EDMStochastic:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): churn, then a Heun step.

    At each step with σ_i ∈ [S_tmin, S_tmax]: γ = min(S_churn/N, √2 − 1) (N = ``n_steps``, the number
    of grid points, as EDM's ``num_steps``), σ̂ = (1 + γ) σ_i, x̂ = x + √(σ̂² − σ_i²) S_noise z; then one
    Heun step of the ODE from σ̂ to σ_{i+1}. σ̂ may exceed σ_ve(T) on the first steps (EDM does not
    cap it); the score is then evaluated beyond T unless S_tmax excludes those steps.

    Integrates: the reverse SDE, as the probability-flow ODE plus Langevin-like churn (Eq. 6 split
    into noise injection and an ODE step). Order: 2 for S_churn = 0 (it is then EDMHeun); with churn
    the sampler is stochastic and its declared order is 1. NFE per step: 2 (+1 for the final step to
    σ = 0). SDEs: VE, VP, sub-VP. One noise draw per step while churn is on (``churn_draws``).

    Args:
        S_churn: total churn (EDM's CIFAR-10 VP ablations use 0–80; 0 disables the noise).
        S_tmin, S_tmax: the σ_ve range where churn is applied.
        S_noise: noise inflation (EDM: 1.007 on ImageNet, 1 otherwise).
        churn_draws: when a noise draw is taken (with S_churn > 0): 'every_step', as EDM's
            ``edm_sampler`` (NVlabs/edm: a draw each step, multiplied by 0 outside [S_tmin, S_tmax]), or
            'in_range', as EDM2's (NVlabs/edm2 ``generate_images.py``: only on steps that churn). The
            noise applied is the same; the draws a seeded or recorded noise stream gives later steps differ.
    """

    S_churn: float = 0.0
    S_tmin: float = 0.0
    S_tmax: float = math.inf
    S_noise: float = 1.0
    churn_draws: str = "every_step"

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 2
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # f(T), g²(T) or σ_ve(T): finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="karras")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_churn(self)
        if self.churn_draws not in CHURN_DRAWS:
            raise ValueError(f"{name}: churn_draws must be one of: {', '.join(CHURN_DRAWS)}; got {self.churn_draws!r}")

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> int:
        """The state: N, the grid's number of points (EDM's ``num_steps``, in γ)."""
        del problem, x
        return walk.steps.n_steps

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state: int, noise) -> Step:
        D = Denoiser(problem)
        sigma, sigma_next = D.sigma(t), D.sigma(t_next)
        x_ve = D.to_ve(x, t)
        in_range = (sigma >= self.S_tmin) & (sigma <= self.S_tmax)
        if self.S_churn > 0 and (self.churn_draws == "every_step" or bool(in_range.any())):
            # Churn: raise the noise level to σ̂ = (1 + γ) σ by adding fresh noise.
            gamma_max = min(self.S_churn / state, math.sqrt(2) - 1)
            gamma = torch.where(in_range, torch.full_like(sigma, gamma_max), torch.zeros_like(sigma))
            sigma_hat = sigma * (1 + gamma)
            z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
            x_ve = x_ve + expand_like((sigma_hat**2 - sigma**2).sqrt() * self.S_noise, x) * z
            t_hat = torch.where(gamma > 0, D.time(sigma_hat), t)
            sigma = sigma_hat
        else:
            t_hat = t
        # Heun step of the ODE from σ̂ to σ_next.
        x_ve = _heun(D, x_ve, sigma, t_hat, sigma_next, t_next)
        x = D.from_ve(x_ve, t_next)
        return Step(x, x, state)
