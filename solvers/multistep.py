"""The multistep driver: the fixed-grid loop with the rule's history of model outputs as its state.

One model evaluation per step (DPM-Solver++(2M)/(3M), UniPC, iPNDM, LMS, …). The history — the last
``solver_order`` outputs (λ_j, m_j), newest first — is the stepping rule's state, and so are the
warm-up and the lower-order final steps:

* warm-up (the first p − 1 steps, before p outputs exist): ``warmup='lower_order'`` (the reference
  codes' choice, default) takes order min(p, i + 1) at step i with 1 NFE. Its first step is then first
  order, with local error O(h²), which caps the global order at 2 for p = 3 (LMM theory needs starting
  values of order p); ``warmup='singlestep'`` takes those p − 1 steps with singlestep DPM-Solver of
  order p instead (p NFE each), so the global order is p.
* ``lower_order_final``: the last steps use order ≤ steps left, on grids of fewer than
  ``lower_order_final_below`` steps — each sampler sets that threshold from its own paper's reference
  code (its docstring says which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from solvers.base import Problem, Step, check_choice
from solvers.denoiser import log_snr
from solvers.exp_integrator import PREDICTIONS, model_output, singlestep
from solvers.fixed import FixedGrid

__all__ = ["History", "Multistep", "WARMUPS", "check_bool", "check_order"]

WARMUPS = ("lower_order", "singlestep")


def check_order(owner: str, value, choices=(1, 2, 3)) -> None:
    if isinstance(value, bool):
        raise ValueError(f"{owner}: solver_order must be an integer, got {value!r}")
    check_choice(owner, "solver_order", value, choices)


def check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")


@dataclass
class History:
    """A multistep rule's state: the grid's λ [n + 1, B], the index of the next step, the past
    outputs newest first, and what the last multistep step left (``memo``, for UniPC's corrector)."""

    lams: Tensor
    i: int = 0
    lam_past: list = field(default_factory=list)
    out_past: list = field(default_factory=list)
    memo: tuple | None = None


@dataclass(frozen=True, kw_only=True)
class Multistep(FixedGrid):
    """Base of the multistep samplers: the options common to all and the step template.

    A subclass implements ``update(problem, x, t, t_next, lams, outs, lam_next, noise) -> x_next`` from
    the newest ``len(outs)`` (= this step's order) outputs, and may implement ``correct`` (a corrector
    that reuses the output at the new point, as UniPC's). Statistics as the fixed-grid driver.
    """

    solver_order: int = 2
    prediction: str = "data"
    lower_order_final: bool = True
    warmup: str = "lower_order"
    schedule: str = "log_snr"

    lower_order_final_below: ClassVar[float] = math.inf  # steps; set from each paper's reference code
    conventions: ClassVar[tuple[str, ...]] = ("grid",)
    orders: ClassVar[tuple[int, ...]] = (1, 2, 3)
    warmups: ClassVar[tuple[str, ...]] = WARMUPS
    predictions: ClassVar[tuple[str, ...]] = PREDICTIONS

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_order(name, self.solver_order, self.orders)
        check_choice(name, "prediction", self.prediction, self.predictions)
        check_bool(name, "lower_order_final", self.lower_order_final)
        check_choice(name, "warmup", self.warmup, self.warmups)

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return 1

    @property
    def expected_nfe(self) -> int:
        n = self.steps_taken
        warm = sum(max(self.warmup_order(i, n) - 1, 0) for i in range(n))
        return super().expected_nfe + warm

    def _final_cap(self, p: int, i: int, n: int) -> int:
        return min(p, n - i) if self.lower_order_final and n < self.lower_order_final_below else p

    def step_order(self, i: int, n: int) -> int:
        """Multistep order of step i of n."""
        return self._final_cap(min(self.solver_order, i + 1), i, n)

    def warmup_order(self, i: int, n: int) -> int:
        """Order of the singlestep warm-up taken at step i, or 0 (a multistep step)."""
        if self.warmup != "singlestep" or i >= self.solver_order - 1:
            return 0
        return self._final_cap(self.solver_order, i, n)

    def init(self, problem: Problem, x: Tensor, ts: Tensor) -> History:
        return History(log_snr(problem.sde, ts))

    def correct(self, problem: Problem, x: Tensor, out: Tensor, memo) -> Tensor:
        """x revised once the output ``out`` at x is known (none by default; UniPC's UniC)."""
        del problem, out, memo
        return x

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state: History, noise) -> Step:
        i, n = state.i, len(state.lams) - 1
        lam, lam_next = state.lams[i], state.lams[i + 1]
        out = model_output(problem, x, t, self.prediction)
        x = self.correct(problem, x, out, state.memo)
        lams = [lam, *state.lam_past][: self.solver_order]
        outs = [out, *state.out_past][: self.solver_order]
        q = self.warmup_order(i, n)
        if q:  # singlestep warm-up of order q (q − 1 extra calls)
            x_next, memo = singlestep(problem, self.prediction, x, t, t_next, lam, lam_next - lam, out, q), None
        else:
            p = self.step_order(i, n)
            x_next = self.update(problem, x, t, t_next, lams[:p], outs[:p], lam_next, noise)
            memo = (x, t, t_next, lams[:p], outs[:p], lam_next)
        return Step(x_next, x_next, History(state.lams, i + 1, lams, outs, memo))
