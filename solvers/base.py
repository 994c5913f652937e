"""The one solver protocol: Problem in, Solution out; NFE read from the counting wrapper.

A sampler is a frozen dataclass whose fields are its options (validated in ``__post_init__``) with
``sample(problem, x_init, noise) -> Solution``. The built-in ones compose a **method** (the update
and its state) with a **step-size controller** (a fixed grid, or the adaptive error controller),
run by the one loop of :mod:`solvers.solve`; SciPy, torchdiffeq and torchsde keep their own loops.

Every sampler declares what the harness reads of it (:data:`PROTOCOL`, read by :func:`declared`):
``order``, ``nfe_per_step``, ``expected_nfe`` (the NFE its options fix, None where it is adaptive),
``batch_invariant`` (sample i is the same at any batch size and composition), ``per_sample_loop``
(it loops over the batch's samples in Python) and ``adaptive``. See docs/adding_a_sampler.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import torch
from torch import Tensor

from models.priors import GaussianPrior
from models.score import CountingScore, ScoreModel, conditioned, select_rows

__all__ = ["Problem", "Step", "SolveStats", "Solution", "Status", "Sampler", "Method", "PROTOCOL", "declared"]


class Status(StrEnum):
    OK = "ok"
    MAX_STEPS = "max_steps"
    DT_MIN = "dt_min"
    NONFINITE = "nonfinite"
    SOLVER_FAILED = "solver_failed"


@dataclass
class Problem:
    """What a sampler solves: a score model (wrapped in a CountingScore) and the prior at T.

    Args:
        score: any score model; wrapped in :class:`CountingScore` unless it already is one.
        prior: object with ``sample(shape, noise, dtype, device)`` and ``log_prob(x)``; default the
            SDE's Gaussian prior.
    """

    score: ScoreModel
    prior: object | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.score, CountingScore):
            self.score = CountingScore(self.score)
        if self.prior is None:
            self.prior = GaussianPrior(self.sde)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t) of the SDE at times t [B]."""
        return self.sde.marginal(t)

    @property
    def sde(self):
        return self.score.sde

    @property
    def counter(self) -> CountingScore:
        return self.score

    def prior_sample(self, n: int, noise, dtype=torch.float32, device="cpu") -> Tensor:
        """n draws from the prior at T, [n, *shape]."""
        return self.prior.sample((n, *self.score.shape), noise, dtype=dtype, device=device)

    def conditioned(self, labels: Tensor) -> Problem:
        """The problem for a batch whose row i asks for class ``labels[i]`` (class-conditional models;
        :func:`models.score.conditioned`); the calls are counted by this problem's counter."""
        return dataclasses.replace(self, score=conditioned(self.score, labels))

    def select_rows(self, idx: Tensor | slice) -> Problem:
        """The problem on rows ``idx`` of the batch: itself unless the score holds per-sample state
        (class labels), which then follows the rows. Every solver that evaluates the score on a
        subset of its batch's rows solves that subset on ``problem.select_rows(idx)``."""
        score = select_rows(self.score, idx)
        return self if score is self.score else dataclasses.replace(self, score=score)


@dataclass
class Step:
    x: Tensor  # [B, ...] state at t_next
    x_mean: Tensor  # the same without the last noise injection
    state: object = None  # the rule's state after the step (a multistep history, ...)
    error: Tensor | None = None  # [B, ...] local error estimate (embedded pairs only)
    x_check: Tensor | None = None  # [B, ...] the state the relative tolerance is measured on


@dataclass
class SolveStats:
    nfe: int  # score calls on the batch, read from CountingScore
    n_steps: int  # attempted steps (accepted + rejected)
    n_accepted: int
    n_rejected: int = 0
    nfe_per_sample: Tensor | None = None  # [B] score evaluations of each sample (adaptive solvers)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        per = self.nfe_per_sample
        d = {"nfe": self.nfe, "n_steps": self.n_steps, "n_accepted": self.n_accepted,
             "n_rejected": self.n_rejected}
        if per is not None:
            per = per.double()
            d.update(nfe_per_sample_mean=per.mean().item(), nfe_per_sample_min=per.min().item(),
                     nfe_per_sample_max=per.max().item())
        d.update(self.extra)
        return d


@dataclass
class Solution:
    x: Tensor  # [B, ...] after the optional final denoising
    stats: SolveStats
    status: Status = Status.OK
    message: str = ""


class Sampler(Protocol):
    """What the harness calls and reads: ``sample`` and the declarations of :data:`PROTOCOL`."""

    order: float  # ODE order, or strong order for SDE samplers (0: MCMC)
    nfe_per_step: int
    expected_nfe: int | None  # the NFE its options fix (tests compare it with the counter); None: adaptive
    batch_invariant: bool  # sample i is the same at any batch size and composition
    per_sample_loop: bool  # loops over the batch's samples in Python (its cost grows with the batch)
    adaptive: bool  # NFE chosen at run time by an error controller
    needs: tuple[str, ...]  # what it needs from the noise path (solvers.requirements.NEEDS)

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution: ...


PROTOCOL = ("order", "nfe_per_step", "expected_nfe", "batch_invariant", "per_sample_loop", "adaptive", "needs")


def declared(sampler) -> dict:
    """The sampler's declarations {name: value} of :data:`PROTOCOL`; ValueError naming the ones it
    lacks (no default is assumed: a sampler says what it is)."""
    missing = [k for k in PROTOCOL if not hasattr(sampler, k)]
    if missing:
        raise ValueError(f"sampler {type(sampler).__name__} does not declare {', '.join(missing)} "
                         f"(every sampler declares {', '.join(PROTOCOL)}; see docs/adding_a_sampler.md)")
    return {k: getattr(sampler, k) for k in PROTOCOL}


class Method(Protocol):
    """One step of a method, run by :func:`solvers.solve.solve` under any controller.

    ``t``, ``t_next``: [B] float64; ``state``: what ``init`` (or the last step) returned; ``noise``: the
    noise source of the rows being stepped (``increment(t, t_next, shape, ...)`` for the step's draw,
    ``normal(shape, ...)`` for others). ``grid``: [n + 1, B] for a fixed grid, None under the adaptive
    controller. Adaptive pairs also take ``h=`` (the step in their own variable) and return
    ``Step.error`` and ``Step.x_check``."""

    def check(self, problem: Problem) -> None: ...

    def init(self, problem: Problem, x: Tensor, grid: Tensor | None) -> object: ...

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step: ...


def finite_status(x: Tensor) -> tuple[Status, str]:
    """One host sync at the end of a solve: NONFINITE with a message if any entry is NaN/Inf."""
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    n_bad = int(bad.sum())
    if n_bad:
        return Status.NONFINITE, f"{n_bad} of {x.shape[0]} samples are NaN/Inf"
    return Status.OK, ""


def check_choice(owner: str, name: str, value, choices) -> None:
    """ValueError naming the option and the valid choices."""
    if value not in choices:
        raise ValueError(f"{owner}: invalid {name}={value!r}; expected one of: {', '.join(map(str, choices))}")


def check_positive(owner: str, name: str, value, integer: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, int | float)
    if not ok or not value > 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{owner}: {name} must be {kind}, got {value!r}")
