"""The fixed-grid driver shared by every fixed-step sampler, and the final denoising step.

Two loop conventions, selected by ``convention``:

* ``"grid"`` (default): the grid has ``n_steps`` points from T to eps (``schedule``), the stepper
  moves between consecutive points (n_steps − 1 steps, with the true spacing), then an optional
  final denoising step at eps. NFE = (n_steps − 1)·nfe_per_step (+1 for ``denoise='tweedie'``). This
  is Gotta Go Fast's fixed-step baseline (REFERENCE §2.3).
* ``"score_sde"``: score_sde's PC loop (REFERENCE §1.4): a step at every one of the n_steps points of
  ``linspace(T, eps, N)``, the last one at eps; ``denoise='x_mean'`` returns the last step's
  noise-free mean (no extra call), ``'none'`` its noisy state. NFE = n_steps·nfe_per_step.

Denoising: ``'tweedie'`` is E[x_0 | x_eps] = (x + σ_eps² s(x, eps)) / α_eps (1 call);
``'tweedie_ggf'`` is Gotta Go Fast's x + σ_eps² s(x, eps) (no division by α_eps; 1 call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Solution, SolveStats, Step, check_choice, check_positive, finite_status
from solvers.grids import SCHEDULES

__all__ = ["FixedGridSampler", "tweedie", "DENOISE"]

CONVENTIONS = ("grid", "score_sde")
DENOISE = {"grid": ("tweedie", "tweedie_ggf", "none"), "score_sde": ("x_mean", "none")}


def tweedie(problem: Problem, x: Tensor, t: Tensor, divide_by_alpha: bool = True) -> Tensor:
    """Final denoising at time t [B]: x + σ_t² s(x, t), divided by α_t unless ``divide_by_alpha`` is off."""
    alpha, sigma = problem.sde.marginal(t)
    x0 = x + expand_like(sigma**2, x) * problem.score(x, t)
    return x0 / expand_like(alpha, x) if divide_by_alpha else x0


@dataclass(frozen=True, kw_only=True)
class FixedGridSampler:
    """Base of every fixed-step sampler: options common to all, and the loop over the grid.

    Subclasses implement ``step`` (and ``correct`` for predictor–corrector) and declare
    ``nfe_per_step`` and ``order``.
    """

    n_steps: int = 1000
    schedule: str = "uniform"
    convention: str = "grid"
    denoise: str | None = None

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
        if self.denoise is None:
            object.__setattr__(self, "denoise", DENOISE[self.convention][0])
        check_choice(name, f"denoise (convention={self.convention!r})", self.denoise, DENOISE[self.convention])
        if self.convention == "score_sde" and self.schedule != "uniform":
            raise ValueError(f"{name}: convention 'score_sde' uses the uniform grid; got schedule={self.schedule!r}")

    # --- what subclasses provide -------------------------------------------------------------
    def check(self, problem: Problem) -> None:
        """Raise ValueError if this sampler cannot run on ``problem`` (called before any NFE)."""
        del problem

    def coefficients(self, problem: Problem, t: Tensor, t_next: Tensor) -> tuple[Tensor, ...]:
        """The per-sample scalars of the update from t to t_next (elementwise in t, any shape).

        The driver evaluates them once for the whole grid and hands each step its row, reshaped to
        broadcast against x (``coef``); a step called without them computes its own. () by default.
        """
        del problem, t, t_next
        return ()

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, noise,
             coef: tuple[Tensor, ...] = ()) -> Step:
        raise NotImplementedError

    def correct(self, problem: Problem, x: Tensor, t: Tensor, noise, coef: tuple[Tensor, ...] = ()) -> Tensor:
        """Corrector applied before each predictor step (none by default)."""
        del problem, t, noise, coef
        return x

    def _row(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, coef) -> tuple[Tensor, ...]:
        """``coef`` if the driver gave it, else this step's coefficients computed here."""
        if coef:
            return coef
        return tuple(expand_like(c, x) for c in self.coefficients(problem, t, t_next))

    # --- derived ----------------------------------------------------------------------------
    @property
    def steps_taken(self) -> int:
        return self.n_steps if self.convention == "score_sde" else self.n_steps - 1

    @property
    def expected_nfe(self) -> int:
        """Declared NFE (tests compare it with the counter; never reported)."""
        denoise = self.denoise in ("tweedie", "tweedie_ggf")
        return self.startup_nfe + self.steps_taken * self.nfe_per_step + denoise

    def grid(self, problem: Problem) -> Tensor:
        sde = problem.sde
        return SCHEDULES[self.schedule](self.n_steps, sde.T, sde.eps, sde=sde)

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution:
        self.check(problem)
        counter = problem.counter
        nfe0 = counter.nfe
        B = x_init.shape[0]
        ts = self.grid(problem).to(x_init.device)
        if self.steps_taken >= len(ts):  # one more (virtual) point so that the last step sits at eps
            ts = torch.cat([ts, (2 * ts[-1] - ts[-2]).clamp(min=0.0)[None]])
        ts_b = ts[:, None].expand(-1, B)
        n = self.steps_taken
        times = ts_b.unbind(0)  # one tensor per grid point: step i's t_next is step i + 1's t
        # Every step's coefficients in one pass over the grid, each [n, B, 1, ...] in x's dtype.
        ones = (1,) * (x_init.dim() - 1)
        table = [c.to(x_init.dtype).reshape(*c.shape, *ones)
                 for c in self.coefficients(problem, ts_b[:n], ts_b[1:n + 1])]
        x, x_mean = x_init, x_init
        with torch.no_grad():
            for i in range(n):
                t, t_next, coef = times[i], times[i + 1], tuple(c[i] for c in table)
                # Corrector first, then the predictor, both at t (score_sde's order).
                x = self.correct(problem, x, t, noise, coef)
                out = self.step(problem, x, t, t_next, noise, coef)
                x, x_mean = out.x, out.x_mean
            if self.denoise == "x_mean":
                x = x_mean
            elif self.denoise in ("tweedie", "tweedie_ggf"):
                x = tweedie(problem, x, ts_b[-1], divide_by_alpha=self.denoise == "tweedie")
        status, message = finite_status(x)
        n = self.steps_taken
        return Solution(x, SolveStats(nfe=counter.nfe - nfe0, n_steps=n, n_accepted=n), status, message)
