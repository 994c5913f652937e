"""Fixed-step discretisations of the probability-flow ODE dx/dt = f(x, t) − ½ g(t)² s(x, t)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["ProbabilityFlowEuler", "ProbabilityFlowHeun", "probability_flow_drift"]


def probability_flow_drift(problem: Problem, x: Tensor, t: Tensor) -> Tensor:
    """f(x, t) − ½ g(t)² s(x, t), [B, ...] (one score call)."""
    sde = problem.sde
    g2 = expand_like(sde.diffusion(t) ** 2, x)
    return sde.drift(x, t) - 0.5 * g2 * problem.score(x, t)


@dataclass(frozen=True)
class ProbabilityFlowEuler:
    """Euler's method on the probability-flow ODE (Song et al. 2021, Eq. 13), on the grid's spacing.

    Integrates: the probability-flow ODE. Order: 1. NFE per step: 1. SDEs: VE, VP, sub-VP.
    """

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
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
