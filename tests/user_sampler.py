"""A user's own sampler, outside the package: what docs/adding_a_sampler.md walks through, used by
tests/test_new_samplers.py from a grid as ``solver: "tests.user_sampler:TwoStageRK"``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from models.sde import expand_like
from solvers.base import Step
from solvers.fixed import FixedGrid
from solvers.ode import probability_flow_drift


@dataclass(frozen=True, kw_only=True)
class TwoStageRK(FixedGrid):
    """Explicit two-stage Runge–Kutta on the probability-flow ODE: the slope at x − α·dt·f(x, t),
    t − α·dt, weighted (1 − 1/(2α), 1/(2α)) with the first. Order 2 for any α in (0, 1] (½: midpoint,
    1: Heun, ⅔: Ralston). NFE per step: 2. SDEs: any."""

    alpha: float = 0.5
    nfe_per_step: ClassVar[int] = 2
    order: ClassVar[float] = 2.0
    conventions: ClassVar[tuple[str, ...]] = ("grid",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.alpha, int | float) and 0 < self.alpha <= 1):
            raise ValueError(f"TwoStageRK: alpha must be in (0, 1], got {self.alpha!r}")

    def step(self, problem, x, t, t_next, state, noise) -> Step:
        dt = t - t_next
        f1 = probability_flow_drift(problem, x, t)
        f2 = probability_flow_drift(problem, x - self.alpha * expand_like(dt, x) * f1, t - self.alpha * dt)
        w = 1 / (2 * self.alpha)
        x = x - expand_like(dt, x) * ((1 - w) * f1 + w * f2)
        return Step(x, x, state)
