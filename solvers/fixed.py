"""The fixed-grid driver: a stepping rule run over a grid of times from a schedule.

``n_steps`` is N, the number of grid points t_0 = T > … > t_{N−1} = eps, in both conventions
(``convention``); they differ only in what happens at eps:

* ``"grid"`` (default): one step between consecutive points (N − 1 steps with the true spacing),
  then the final ``denoise`` at eps. NFE = (N − 1)·nfe_per_step (+1 for a Tweedie denoise). This is
  Gotta Go Fast's fixed-step baseline (REFERENCE §2.3) and EDM's loop.
* ``"score_sde"``: score_sde's PC loop (REFERENCE §1.4): a step *from* every one of the N points of
  ``linspace(T, eps, N)`` (the last one from eps); ``denoise='x_mean'`` returns the last step's
  noise-free mean (no extra call), ``'none'`` its noisy state. NFE = N·nfe_per_step.

The rule is ``sampler.rule`` (the sampler itself unless it composes parts, as predictor–corrector
does); its state, from ``rule.init(problem, x, ts)``, is threaded through the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from solvers.base import Problem, Solution, SolveStats, check_choice, check_positive, finite_status
from solvers.denoise import DEFAULT_DENOISE, check_denoise, denoise_nfe, final_denoise, tweedie
from solvers.grids import SCHEDULES

__all__ = ["FixedGrid", "tweedie", "CONVENTIONS", "GRID_DENOISE"]

CONVENTIONS = ("grid", "score_sde")
GRID_DENOISE = {"grid": ("tweedie", "ggf", "none"), "score_sde": ("x_mean", "none")}


@dataclass(frozen=True, kw_only=True)
class FixedGrid:
    """Driver of every fixed-step sampler: the options common to all and the loop over the grid.

    A subclass is a stepping rule: it declares ``nfe_per_step`` and ``order`` and implements
    ``step(problem, x, t, t_next, state, noise) -> Step`` (and ``init`` if it keeps a state).

    Args:
        n_steps: N, grid points from T to eps (see the module docstring), ≥ 2.
        schedule: a key of :data:`solvers.grids.SCHEDULES`.
        convention: 'grid' or 'score_sde' (module docstring).
        denoise: the final denoising (:mod:`solvers.denoise`); 'tweedie' by default, 'x_mean' or
            'none' with ``convention='score_sde'``.
    """

    n_steps: int = 1000
    schedule: str = "uniform"
    convention: str = "grid"
    denoise: str = DEFAULT_DENOISE

    nfe_per_step: ClassVar[int] = 1
    startup_nfe: ClassVar[int] = 0  # calls before the first step (e.g. a library's shape check)
    order: ClassVar[float] = 1.0
    conventions: ClassVar[tuple[str, ...]] = CONVENTIONS

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(name, "n_steps", self.n_steps, integer=True)
        if self.n_steps < 2:
            raise ValueError(f"{name}: n_steps must be >= 2 (grid points from T to eps), got {self.n_steps}")
        check_choice(name, "schedule", self.schedule, tuple(SCHEDULES))
        check_choice(name, "convention", self.convention, self.conventions)
        check_denoise(name, self.denoise, GRID_DENOISE[self.convention], f"convention={self.convention!r}")
        if self.convention == "score_sde" and self.schedule != "uniform":
            raise ValueError(f"{name}: convention 'score_sde' uses the uniform grid; got schedule={self.schedule!r}")

    @property
    def rule(self):
        """The stepping rule this driver runs (the sampler itself by default)."""
        return self

    def check(self, problem: Problem) -> None:
        """Raise ValueError if this sampler cannot run on ``problem`` (called before any NFE)."""
        del problem

    def init(self, problem: Problem, x: Tensor, ts: Tensor) -> object:
        """The rule's state before the first step (none by default); ``ts`` [n + 1, B] is the grid."""
        del problem, x, ts

    @property
    def steps_taken(self) -> int:
        return self.n_steps if self.convention == "score_sde" else self.n_steps - 1

    @property
    def expected_nfe(self) -> int:
        """Declared NFE (tests compare it with the counter; never reported)."""
        return self.startup_nfe + self.steps_taken * self.rule.nfe_per_step + denoise_nfe(self.denoise)

    def grid(self, problem: Problem) -> Tensor:
        """The steps' end points, [steps_taken + 1] float64 from T (score_sde: one virtual point past eps)."""
        sde = problem.sde
        ts = SCHEDULES[self.schedule](self.n_steps, sde.T, sde.eps, sde=sde)
        if self.convention == "score_sde":  # the last step starts at eps
            ts = torch.cat([ts, (2 * ts[-1] - ts[-2]).clamp(min=0.0)[None]])
        return ts

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution:
        rule = self.rule
        rule.check(problem)
        counter = problem.counter
        nfe0 = counter.nfe
        ts = self.grid(problem).to(x_init.device)[:, None].expand(-1, x_init.shape[0])  # [n + 1, B]
        x = x_mean = x_init
        with torch.no_grad():
            state = rule.init(problem, x, ts)
            for t, t_next in zip(ts[:-1], ts[1:]):
                out = rule.step(problem, x, t, t_next, state, noise)
                x, x_mean, state = out.x, out.x_mean, out.state
            x = final_denoise(problem, x, self.denoise, x_mean)
        status, message = finite_status(x)
        n = self.steps_taken
        return Solution(x, SolveStats(nfe=counter.nfe - nfe0, n_steps=n, n_accepted=n), status, message)


FixedGridSampler = FixedGrid  # the name solvers/torchsde_solver.py imports
