"""A user's own method, outside the package: what docs/adding_a_sampler.md walks through, used by
tests/test_new_samplers.py from a grid as ``solver: "tests.user_sampler:TwoStageRK"``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from models.sde import expand_like
from solvers.base import Step
from solvers.fixed import ON_GRID, FixedSteps
from solvers.ode import probability_flow_drift


@dataclass(frozen=True)
class TwoStageRK:
    """Explicit two-stage Runge–Kutta on the probability-flow ODE: the slope at x − α·dt·f(x, t),
    t − α·dt, weighted (1 − 1/(2α), 1/(2α)) with the first. Order 2 for any α in (0, 1] (½: midpoint,
    1: Heun, ⅔: Ralston). NFE per step: 2. SDEs: any."""

    alpha: float = 0.5                                   # an option: a field, checked below

    order: ClassVar[float] = 2.0                         # declared; the tests fit it
    nfe_per_step: ClassVar[int] = 2                      # declared; the tests compare it with the counter
    batch_invariant: ClassVar[bool] = True               # sample i does not depend on its batch
    needs: ClassVar[tuple[str, ...]] = ()                # what it needs from the path: nothing (any path)
    controller: ClassVar[FixedSteps] = FixedSteps()      # its default step-size controller
    conventions: ClassVar[dict] = ON_GRID                # the 'grid' walk, and the denoisings valid there

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, int | float) and 0 < self.alpha <= 1):
            raise ValueError(f"TwoStageRK: alpha must be in (0, 1], got {self.alpha!r}")

    def check(self, problem) -> None:                    # refuse an SDE it cannot run on (none here)
        del problem

    def init(self, problem, x, walk) -> None:            # its state before the first step (none)
        del problem, x, walk

    def step(self, problem, x, t, t_next, state, noise) -> Step:
        dt = t - t_next                                    # [B] float64, from the grid
        f1 = probability_flow_drift(problem, x, t)         # one counted score call
        f2 = probability_flow_drift(problem, x - self.alpha * expand_like(dt, x) * f1, t - self.alpha * dt)
        w = 1 / (2 * self.alpha)
        x = x - expand_like(dt, x) * ((1 - w) * f1 + w * f2)
        return Step(x, x, state)                           # new x, its noise-free mean, the state
