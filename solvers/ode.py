"""Fixed-step discretisations of the probability-flow ODE dx/dt = f(x, t) − ½ g(t)² s(x, t)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step
from solvers.denoiser import alpha_vanishes_at_T, denoised
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["ProbabilityFlowEuler", "ProbabilityFlowHeun", "probability_flow_drift", "velocity"]


def probability_flow_drift(problem: Problem, x: Tensor, t: Tensor) -> Tensor:
    """f(x, t) − ½ g(t)² s(x, t), [B, ...] (one score call).

    On a path where α_T = 0 (flow matching at T = 1, where f = −inf and g² = inf) the same drift is
    taken in its velocity form α̇_t x̂₀ + σ̇_t ε̂ (equal to it wherever both are finite: with
    s = −ε̂/σ and g² = 2σσ̇ − 2fσ², f x + ½ g² ε̂/σ = (α̇/α)(x − σ ε̂) + σ̇ ε̂), from one call of
    :func:`solvers.denoiser.denoised`; it is finite from pure noise on (the Euler step of diffusers'
    flow-matching scheduler).
    """
    sde = problem.sde
    if alpha_vanishes_at_T(sde):
        return velocity(problem, x, t)
    g2 = expand_like(sde.diffusion(t) ** 2, x)
    return sde.drift(x, t) - 0.5 * g2 * problem.score(x, t)


def velocity(problem: Problem, x: Tensor, t: Tensor) -> Tensor:
    """The probability-flow velocity α̇_t x̂₀ + σ̇_t ε̂ = E[dx_t/dt | x_t = x], [B, ...] (one call)."""
    x0, eps = denoised(problem, x, t)
    dalpha, dsigma = problem.sde.marginal_derivative(t)
    return expand_like(dalpha, x) * x0 + expand_like(dsigma, x) * eps


@dataclass(frozen=True)
class ProbabilityFlowEuler:
    """Euler's method on the probability-flow ODE (Song et al. 2021, Eq. 13), on the grid's spacing.

    Integrates: the probability-flow ODE. Order: 1. NFE per step: 1. SDEs: VE, VP, sub-VP.
    """

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    needs: ClassVar[tuple[str, ...]] = ()  # from α = 0 too, by the velocity form (its grid decides)
    batch_invariant: ClassVar[bool] = True
    controller: ClassVar[FixedSteps] = FixedSteps()
    conventions: ClassVar[dict] = ON_GRID

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        del noise
        x = x - probability_flow_drift(problem, x, t) * expand_like(t - t_next, x)
        return Step(x, x, state)


@dataclass(frozen=True)
class ProbabilityFlowHeun:
    """Heun's method (explicit trapezoid) on the probability-flow ODE (as EDM's Algorithm 1 with the
    time variable t).

    Integrates: the probability-flow ODE. Order: 2. NFE per step: 2. SDEs: VE, VP, sub-VP.
    """

    order: ClassVar[float] = 2.0
    nfe_per_step: ClassVar[int] = 2
    needs: ClassVar[tuple[str, ...]] = ()  # from α = 0 too, by the velocity form (its grid decides)
    batch_invariant: ClassVar[bool] = True
    controller: ClassVar[FixedSteps] = FixedSteps()
    conventions: ClassVar[dict] = ON_GRID

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        del noise
        dt = expand_like(t - t_next, x)
        d1 = probability_flow_drift(problem, x, t)
        x_euler = x - d1 * dt
        d2 = probability_flow_drift(problem, x_euler, t_next)
        x = x - 0.5 * (d1 + d2) * dt
        return Step(x, x, state)
