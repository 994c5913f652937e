"""The fixed-grid step-size controller: a grid of times from a schedule, every step accepted.

``n_steps`` is N, the number of grid points t_0 = T > … > t_{N−1} = eps, in both conventions
(``convention``); they differ only in what happens at eps:

* ``"grid"`` (default): one step between consecutive points (N − 1 steps with the true spacing),
  then the final ``denoise`` at eps. NFE = (N − 1)·nfe_per_step (+1 for a Tweedie denoise). This is
  Gotta Go Fast's fixed-step baseline (REFERENCE §2.3) and EDM's loop.
* ``"score_sde"``: score_sde's PC loop (REFERENCE §1.4): a step *from* every one of the N points of
  ``linspace(T, eps, N)`` (the last one from eps); ``denoise='x_mean'`` returns the last step's
  noise-free mean (no extra call), ``'none'`` its noisy state. NFE = N·nfe_per_step. NCSNv2's
  annealed Langevin visits its N noise levels the same way.

On a discrete-time model (a tabulated ᾱ, :mod:`models.discrete`) the schedule may also be one of
diffusers' timestep spacings (:data:`solvers.spacing.SPACINGS`): ``n_steps`` is then the number of
network calls n of the diffusers scheduler, ``steps_offset`` its offset, and ``final_sigma`` where
it ends: 'zero' (n grid points, then the Tweedie denoise: diffusers' last step to σ = 0) or
'sigma_min' (n + 1 points, the last the first trained level σ_0; DDIM's ``set_alpha_to_one=False``).
``shift`` applies SD3's time shift t ↦ shift·t/(1 + (shift − 1) t) (Esser et al. 2024, Eq. 23) to
every grid time, on paths whose time runs in [0, 1] (flow matching: diffusers'
``FlowMatchEulerDiscreteScheduler`` samples uniform t shifted by its ``shift``).

A method names its default :class:`FixedSteps` (its ``controller``) and, in ``conventions``, the
conventions it can walk with the final denoisings valid in each; :class:`solvers.sampler.Sampler`
composes the two (grids give ``n_steps``, ``schedule`` and ``convention`` flat).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.discrete import train_sigmas
from solvers.base import Problem, SolveStats, Status, check_choice, check_positive
from solvers.denoise import check_denoise, denoise_nfe
from solvers.denoiser import time_of_sigma
from solvers.grids import SCHEDULES
from solvers.solve import Attempt
from solvers.spacing import FINAL_SIGMAS, SPACINGS, spacing_sigmas

__all__ = ["FixedSteps", "FixedWalk", "CONVENTIONS", "GRID_DENOISE", "ON_GRID"]

CONVENTIONS = ("grid", "score_sde")
# The final denoisings each convention allows (a method's ``conventions`` maps its own to them).
GRID_DENOISE = {"grid": ("tweedie", "ggf", "none"), "score_sde": ("x_mean", "none")}
ON_GRID = {"grid": GRID_DENOISE["grid"]}  # what most methods declare: the 'grid' convention only


@dataclass(frozen=True)
class FixedSteps:
    """A grid of ``n_steps`` points from T to eps (``schedule``), walked in ``convention``.

    Args:
        n_steps: N, grid points from T to eps (see the module docstring), ≥ 2.
        schedule: a key of :data:`solvers.grids.SCHEDULES` or :data:`solvers.spacing.SPACINGS`.
        convention: 'grid' or 'score_sde' (module docstring).
        steps_offset: diffusers' ``steps_offset`` (spacings 'leading' and 'leading_n1' only).
        final_sigma: 'zero' or 'sigma_min' (spacings only; module docstring).
        shift: SD3's time shift of the grid's times (> 0; 1: none).
    """

    n_steps: int = 1000
    schedule: str = "uniform"
    convention: str = "grid"
    steps_offset: int = 0
    final_sigma: str = "zero"
    shift: float = 1.0

    def __post_init__(self) -> None:
        check_positive("FixedSteps", "n_steps", self.n_steps, integer=True)
        if self.n_steps < 2:
            raise ValueError(f"FixedSteps: n_steps must be >= 2 (grid points from T to eps), got {self.n_steps}")
        check_choice("FixedSteps", "schedule", self.schedule, (*SCHEDULES, *SPACINGS))
        check_choice("FixedSteps", "convention", self.convention, CONVENTIONS)
        check_choice("FixedSteps", "final_sigma", self.final_sigma, FINAL_SIGMAS)
        check_positive("FixedSteps", "shift", self.shift)
        if not isinstance(self.steps_offset, int) or isinstance(self.steps_offset, bool) or self.steps_offset < 0:
            raise ValueError(f"FixedSteps: steps_offset must be an integer >= 0, got {self.steps_offset!r}")
        spacing = self.schedule in SPACINGS
        if not spacing and (self.final_sigma != "zero" or self.steps_offset):
            raise ValueError(f"FixedSteps: steps_offset and final_sigma apply to diffusers' spacings "
                             f"({', '.join(SPACINGS)}); got schedule={self.schedule!r}")
        if self.steps_offset and self.schedule not in ("leading", "leading_n1"):
            raise ValueError(f"FixedSteps: steps_offset applies to schedules 'leading' and 'leading_n1' (diffusers "
                             f"ignores it elsewhere); got schedule={self.schedule!r}")
        if self.convention == "score_sde" and self.schedule != "uniform":
            raise ValueError(f"FixedSteps: convention 'score_sde' uses the uniform grid; "
                             f"got schedule={self.schedule!r}")

    adaptive = False

    @property
    def needs(self) -> tuple[str, ...]:
        """α_T > 0 for a grid in σ_ve or λ (its end point σ_ve(T) = σ_T/α_T), none for a grid in t; a
        spacing needs the model's trained timesteps, a shift a path on [0, 1]."""
        if self.schedule in SPACINGS:
            own = ("timesteps",)
        elif self.schedule in ("uniform", "quadratic"):
            own = ()
        else:
            own = ("alpha_T",)
        return own + (("unit_time",) if self.shift != 1 else ())

    @property
    def steps_taken(self) -> int:
        if self.convention == "score_sde" or self.final_sigma == "sigma_min":
            return self.n_steps
        return self.n_steps - 1

    def check(self, owner: str, method, denoise: str) -> None:
        """ValueError unless ``method`` walks this convention and ``denoise`` is valid in it."""
        conventions = method.conventions
        check_choice(owner, "convention", self.convention, tuple(conventions))
        check_denoise(owner, denoise, conventions[self.convention], f"convention={self.convention!r}")
        if self.schedule in SPACINGS and self.final_sigma == "zero" and denoise == "none":
            raise ValueError(f"{owner}: final_sigma 'zero' ends with the step to σ = 0, the x̂₀ prediction; "
                             f"expected denoise 'tweedie' (or final_sigma 'sigma_min' with denoise 'none')")

    def expected_nfe(self, method, denoise: str) -> int:
        """Declared NFE of a solve: steps × the method's ``nfe_per_step`` + its warm-up's extra calls (a
        multistep method's ``warmup_nfe(steps)``, where it has one) + the denoise's calls (tests compare
        it with the counter; never reported)."""
        warmup = method.warmup_nfe(self.steps_taken) if hasattr(method, "warmup_nfe") else 0
        return warmup + self.steps_taken * method.nfe_per_step + denoise_nfe(denoise)

    def grid(self, problem: Problem) -> Tensor:
        """The steps' end points, [steps_taken + 1] float64 from T (score_sde: one virtual point past eps)."""
        sde = problem.sde
        if self.schedule in SPACINGS:
            sigmas = train_sigmas(torch.tensor(sde.alphas_cumprod, dtype=torch.float64))
            ts = time_of_sigma(sde, spacing_sigmas(self.schedule, self.n_steps, sigmas, self.steps_offset,
                                                   self.final_sigma))
        else:
            ts = SCHEDULES[self.schedule](self.n_steps, sde.T, sde.eps, sde=sde)
        if self.shift != 1:
            ts = self.shift * ts / (1 + (self.shift - 1) * ts)
        if self.convention == "score_sde":  # the last step starts at eps
            ts = torch.cat([ts, (2 * ts[-1] - ts[-2]).clamp(min=0.0)[None]])
        return ts

    def start(self, problem: Problem, x: Tensor, noise, method) -> FixedWalk:
        del method
        ts = self.grid(problem).to(x.device)[:, None].expand(-1, x.shape[0])  # [n + 1, B]
        return FixedWalk(self, problem, x, noise, ts)


class FixedWalk:
    """A solve on a fixed grid: every row, every step, all accepted. The method's ``init`` sees it:
    ``grid`` [n + 1, B] and ``steps`` (the FixedSteps: n_steps, convention)."""

    status, message = Status.OK, ""

    def __init__(self, steps: FixedSteps, problem: Problem, x: Tensor, noise, ts: Tensor) -> None:
        self.steps, self.problem, self.x, self.noise = steps, problem, x, noise
        self.grid = ts  # [n + 1, B]
        self.i = 0

    @property
    def t_end(self) -> Tensor:
        """The last grid time [B], where the final denoise evaluates (eps, unless a spacing or a shift ends
        the grid elsewhere)."""
        return self.grid[-1]

    def attempt(self, x: Tensor) -> Attempt | None:
        if self.i == len(self.grid) - 1:
            return None
        self.i += 1
        return Attempt(self.problem, x, self.grid[self.i - 1], self.grid[self.i], self.noise)

    def judge(self, attempt: Attempt, out) -> tuple[Tensor, Tensor]:
        del attempt
        return out.x, out.x_mean

    def denoised(self, calls: int) -> None:
        del calls

    def stats(self, nfe: int) -> SolveStats:
        return SolveStats(nfe=nfe, n_steps=self.i, n_accepted=self.i)

