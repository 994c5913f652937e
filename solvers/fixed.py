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

**Schedule parameters** (:data:`solvers.grids.SCHEDULE_PARAMS`) are fields too, so a grid sweeps them
(``{schedule: karras, rho: [3, 5, 7]}``): ``rho`` (Karras' ρ, default 7; the polyexponential ρ,
default 1), ``sigmas`` and ``table_interp`` (schedule 'table': a list of σ values or a published table
of :data:`solvers.grids.SIGMA_TABLES`, interpolated log-linearly to ``n_steps`` values), and the
``gits_*`` options of schedule 'gits' (GITS' dynamic programming on a teacher trajectory,
:mod:`solvers.gits`; the harness computes its σ values once per model and caches them). A parameter
given to a schedule that does not take it is refused. :meth:`FixedSteps.schedule_record` is what every
record states: the schedule, its parameters and the σ values of the grid.

A method names its default :class:`FixedSteps` (its ``controller``) and, in ``conventions``, the
conventions it can walk with the final denoisings valid in each; :class:`solvers.sampler.Sampler`
composes the two (grids give ``n_steps``, ``schedule`` and ``convention`` flat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor

from models.discrete import train_sigmas
from solvers.base import Problem, SolveStats, Status, check_choice, check_positive
from solvers.denoise import check_denoise, denoise_nfe
from solvers.denoiser import time_of_sigma, ve_sigma
from solvers.grids import SCHEDULE_PARAMS, SCHEDULES, TABLE_INTERP, check_table, table_refusal
from solvers.solve import Attempt
from solvers.spacing import FINAL_SIGMAS, SPACINGS, spacing_sigmas

__all__ = ["FixedSteps", "FixedWalk", "CONVENTIONS", "GRID_DENOISE", "ON_GRID", "to_zero_conventions",
           "to_zero_default_denoise", "to_zero_warmup_nfe", "GITS_TEACHERS", "GITS_METRICS",
           "GITS_BASES"]

CONVENTIONS = ("grid", "score_sde")
# The final denoisings each convention allows (a method's ``conventions`` maps its own to them).
GRID_DENOISE = {"grid": ("tweedie", "ggf", "none"), "score_sde": ("x_mean", "none")}
ON_GRID = {"grid": GRID_DENOISE["grid"]}  # what most methods declare: the 'grid' convention only


# A method with a ``to_zero`` field takes the last step, from the grid's last point to σ = 0, itself
# (EDM's ablation_sampler, k-diffusion's LMS): one call more and no denoise after it. Its declarations,
# as properties of the method (``conventions = property(to_zero_conventions)``, ...):
def to_zero_conventions(method) -> dict:
    """The grid convention; with ``to_zero`` the last step is the method's own, so no further denoise."""
    return {"grid": ("none",) if method.to_zero else GRID_DENOISE["grid"]}


def to_zero_default_denoise(method) -> str:
    return "none" if method.to_zero else "tweedie"


def to_zero_warmup_nfe(method, n: int) -> int:
    """Calls beyond one step's on a walk of n steps: the last step to σ = 0's one (``to_zero``)."""
    del n
    return int(method.to_zero)
# GITS (solvers/gits.py): the teacher solvers (registry names of fixed-grid ODE methods), the cost
# metrics of the reference (zju-pi/diff-sampler gits-main), the teacher's base schedules.
GITS_TEACHERS = ("ipndm", "euler", "edm_heun", "dpm_solver_pp", "unipc", "deis")
GITS_METRICS = ("dev", "l1", "l2")
GITS_BASES = ("karras", "log_snr", "polyexponential", "uniform")
_GITS_DEFAULTS = {"gits_teacher": "ipndm", "gits_teacher_steps": 61, "gits_base": "karras", "gits_metric": "dev",
                  "gits_coeff": 1.15, "gits_warmup": 256, "gits_warmup_seed": 10**9}


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
        rho: ρ of 'karras', 'karras_float32' (default 7) and 'polyexponential' (default 1), and of the
            GITS teacher's base grid (gits_base 'karras' or 'polyexponential'); None: the default.
        sigmas: schedule 'table': its σ values (σ_ve, decreasing, σ_ve(T) first) or the name of a
            published table (:data:`solvers.grids.SIGMA_TABLES`); schedule 'gits': filled by the harness.
        table_interp: 'loglinear' (another length than n_steps is interpolated as the AYS authors do)
            or 'none' (the table must hold n_steps values).
        gits_teacher, gits_teacher_steps, gits_base: GITS' teacher: the method, its grid points, the
            schedule of its grid (reference: iPNDM on 61 points of Karras' ρ = 7 grid).
        gits_metric, gits_coeff: GITS' cost of a coarse step ('dev', 'l1', 'l2') and the DP's weight of
            later steps (reference: 'dev', 1.15).
        gits_warmup, gits_warmup_seed: how many warm-up trajectories, and the seed of the first (one
            seed each, from the prior as the run draws it).
    """

    n_steps: int = 1000
    schedule: str = "uniform"
    convention: str = "grid"
    steps_offset: int = 0
    final_sigma: str = "zero"
    shift: float = 1.0
    rho: float | None = None
    sigmas: tuple[float, ...] | str | None = None
    table_interp: str = "loglinear"
    gits_teacher: str = "ipndm"
    gits_teacher_steps: int = 61
    gits_base: str = "karras"
    gits_metric: str = "dev"
    gits_coeff: float = 1.15
    gits_warmup: int = 256
    gits_warmup_seed: int = 10**9

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
        self._check_schedule_params()

    def _check_schedule_params(self) -> None:
        """Each schedule parameter is valid and given only to a schedule that takes it."""
        takes = SCHEDULE_PARAMS.get(self.schedule, {})
        gits = self.schedule == "gits"
        if self.rho is not None:
            check_positive("FixedSteps", "rho", self.rho)
            if not math.isfinite(self.rho):
                raise ValueError(f"FixedSteps: rho must be a finite positive number, got {self.rho!r}")
            if "rho" not in takes and not (gits and self.gits_base in ("karras", "polyexponential")):
                raise ValueError(f"FixedSteps: field 'rho' applies to schedules karras, karras_float32, "
                                 f"polyexponential (and gits with gits_base karras or polyexponential); "
                                 f"got schedule={self.schedule!r}")
        check_choice("FixedSteps", "table_interp", self.table_interp, TABLE_INTERP)
        if self.table_interp != "loglinear" and self.schedule != "table":
            raise ValueError(f"FixedSteps: field 'table_interp' applies to schedule 'table'; "
                             f"got schedule={self.schedule!r}")
        if self.schedule == "table":
            if self.sigmas is None:
                raise ValueError("FixedSteps: schedule 'table' needs field 'sigmas' (a list of σ values, σ_ve(T) "
                                 "first, or a published table: see solvers.grids.SIGMA_TABLES)")
            check_table(self.sigmas, self.n_steps, self.table_interp)
        elif self.sigmas is not None:
            if not gits:
                raise ValueError(f"FixedSteps: field 'sigmas' applies to schedule 'table' (and 'gits', where the "
                                 f"harness fills it); got schedule={self.schedule!r}")
            values = check_table(self.sigmas, self.n_steps, "none")
            object.__setattr__(self, "sigmas", values)
        if isinstance(self.sigmas, list):
            object.__setattr__(self, "sigmas", tuple(self.sigmas))
        changed = [k for k, v in _GITS_DEFAULTS.items() if getattr(self, k) != v]
        if changed and not gits:
            raise ValueError(f"FixedSteps: field {changed[0]!r} applies to schedule 'gits'; "
                             f"got schedule={self.schedule!r}")
        check_choice("FixedSteps", "gits_teacher", self.gits_teacher, GITS_TEACHERS)
        check_choice("FixedSteps", "gits_metric", self.gits_metric, GITS_METRICS)
        check_choice("FixedSteps", "gits_base", self.gits_base, GITS_BASES)
        check_positive("FixedSteps", "gits_coeff", self.gits_coeff)
        check_positive("FixedSteps", "gits_warmup", self.gits_warmup, integer=True)
        check_positive("FixedSteps", "gits_teacher_steps", self.gits_teacher_steps, integer=True)
        if gits and self.gits_teacher_steps < self.n_steps:
            raise ValueError(f"FixedSteps: field 'gits_teacher_steps' ({self.gits_teacher_steps}) must be at least "
                             f"n_steps ({self.n_steps}): GITS picks the grid among the teacher's points")
        seed = self.gits_warmup_seed
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63 - self.gits_warmup:
            raise ValueError(f"FixedSteps: field 'gits_warmup_seed' must be an integer >= 0, got {seed!r}")

    def schedule_params(self) -> dict:
        """The parameters the schedule function takes, resolved (defaults filled in)."""
        params = dict(SCHEDULE_PARAMS.get(self.schedule, {}))
        if "rho" in params and self.rho is not None:
            params["rho"] = float(self.rho)
        if "sigmas" in params:
            params["sigmas"] = self.sigmas
        if "table_interp" in params:
            params["table_interp"] = self.table_interp
        return params

    def gits_options(self) -> dict:
        """What GITS' schedule depends on besides the model and the run's path (the cache key's options)."""
        return {"n_steps": self.n_steps, "rho": self.rho, **{k: getattr(self, k) for k in _GITS_DEFAULTS}}

    def path_refusal(self, sde) -> str | None:
        """Why this grid cannot run on ``sde`` (its T and eps), or None: a σ table must start at σ_ve(T) and
        stay within the model's σ range (:func:`solvers.grids.table_refusal`)."""
        if self.sigmas is None or self.schedule not in ("table", "gits"):
            return None
        return table_refusal(check_table(self.sigmas), sde, float(sde.T), float(sde.eps))

    def schedule_record(self, sde) -> dict:
        """What a record states about the grid: the schedule's name, its parameters and the grid's σ_ve
        values and times (lists of floats, from T; a score_sde grid's virtual point past eps left out)."""
        ts = self.grid(SimpleNamespace(sde=sde))
        if self.convention == "score_sde":
            ts = ts[:-1]
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.schedule_params().items()}
        if self.schedule == "gits":
            params.update({k: v for k, v in self.gits_options().items() if k != "n_steps"})
        elif self.schedule in SPACINGS:
            params.update(steps_offset=self.steps_offset, final_sigma=self.final_sigma)
        if self.shift != 1:
            params["shift"] = self.shift
        return {"name": self.schedule, "params": params, "n_points": len(ts),
                "sigmas": ve_sigma(sde, ts).tolist(), "t": ts.tolist()}

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
            ts = SCHEDULES[self.schedule](self.n_steps, sde.T, sde.eps, sde=sde, **self.schedule_params())
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

