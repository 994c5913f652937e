"""The one solver protocol: Problem in, Solution out; NFE read from the counting wrapper.

A sampler is a **stepping rule** run by one of three **drivers** (diffrax's separation):

* the rule (:class:`SteppingRule`) declares ``order`` and ``nfe_per_step``, builds its state with
  ``init(problem, x, ts)`` and makes one step with ``step(problem, x, t, t_next, state, noise) ->
  Step`` (new x, its noise-free mean, the new state and, for embedded pairs, an error estimate);
* the driver owns the loop: :class:`solvers.fixed.FixedGrid` (a grid from a schedule),
  :class:`solvers.multistep.Multistep` (the same loop; the rule's state is its history) and
  :class:`solvers.adaptive.Adaptive` (per-sample t and h, one controller).

Every registered sampler is a frozen dataclass whose fields are its options (validated in
``__post_init__``), a driver subclass whose ``rule`` is usually itself. See docs/adding_a_sampler.md.
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

__all__ = ["Problem", "Step", "SolveStats", "Solution", "Status", "Sampler", "SteppingRule"]


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
    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution: ...


class SteppingRule(Protocol):
    """One step of a method. ``t``, ``t_next``: [B] float64; ``state``: what ``init`` (or the last
    step) returned; ``noise``: a NoiseSource (or, in the adaptive driver, the attempt's normal draw)."""

    nfe_per_step: int
    order: float

    def init(self, problem: Problem, x: Tensor, ts: Tensor | None) -> object: ...

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
