"""What the multistep methods share: their state, a history of model outputs, and the step around it.

One model evaluation per step (DPM-Solver++(2M)/(3M), UniPC, iPNDM, SDE-DPM-Solver++(2M)). The
history — the last ``solver_order`` outputs (λ_j, m_j), newest first — is the method's state
(:class:`History`, built by :func:`init` from the grid's λ), and :func:`step` is the step every such
method takes: evaluate the output at x, let the method correct x with it (UniPC's UniC), then either a
warm-up step or the method's ``update`` from the newest outputs. The method is the first argument of
every function here, so a method class takes them as its own (``init = multistep.init``, ``step =
multistep.step``, …): a frozen dataclass with the fields ``solver_order``, ``prediction``,
``lower_order_final``, ``warmup`` and ``update(problem, x, t, t_next, lams, outs, lam_next, noise) ->
x_next`` (and ``correct``).

* warm-up (the first p − 1 steps, before p outputs exist): ``warmup='lower_order'`` (the reference
  codes' choice, default) takes order min(p, i + 1) at step i with 1 NFE. Its first step is then first
  order, with local error O(h²), which caps the global order at 2 for p = 3 (LMM theory needs starting
  values of order p); ``warmup='singlestep'`` takes those p − 1 steps with singlestep DPM-Solver of
  order p instead (p NFE each), so the global order is p.
* ``lower_order_final``: the last steps use order ≤ steps left, on grids of fewer than the method's
  ``lower_order_final_below`` steps — each method sets that threshold from its own paper's reference
  code (its docstring says which).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from solvers.base import Problem, Step, check_choice
from solvers.denoiser import log_snr
from solvers.exp_integrator import model_output, singlestep

__all__ = ["History", "WARMUPS", "check_bool", "check_order", "check_multistep", "check", "init", "step",
           "no_correction", "warmup_nfe"]

WARMUPS = ("lower_order", "singlestep")


def check_order(owner: str, value, choices=(1, 2, 3)) -> None:
    if isinstance(value, bool):
        raise ValueError(f"{owner}: solver_order must be an integer, got {value!r}")
    check_choice(owner, "solver_order", value, choices)


def check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")


def check_multistep(method, orders=(1, 2, 3), predictions=("noise", "data"), warmups=WARMUPS) -> None:
    """ValueError naming the option and its choices, for the four options every multistep method has."""
    name = type(method).__name__
    check_order(name, method.solver_order, orders)
    check_choice(name, "prediction", method.prediction, predictions)
    check_bool(name, "lower_order_final", method.lower_order_final)
    check_choice(name, "warmup", method.warmup, warmups)


@dataclass
class History:
    """A multistep method's state: the grid's λ [n + 1, B], the index of the next step, the past
    outputs newest first, and what the last multistep step left (``memo``, for UniPC's corrector)."""

    lams: Tensor
    i: int = 0
    lam_past: list = field(default_factory=list)
    out_past: list = field(default_factory=list)
    memo: tuple | None = None


def check(method, problem: Problem) -> None:
    """A multistep method runs on any path it declares no ``needs`` against (solvers.requirements)."""
    del method, problem


def init(method, problem: Problem, x: Tensor, walk) -> History:
    """The empty history on the walk's grid."""
    del method, x
    return History(log_snr(problem.sde, walk.grid))


def no_correction(method, problem: Problem, x: Tensor, out: Tensor, memo) -> Tensor:
    """x as it is: a method without a corrector (UniPC has UniC)."""
    del method, problem, out, memo
    return x


def _final_cap(method, p: int, i: int, n: int) -> int:
    return min(p, n - i) if method.lower_order_final and n < method.lower_order_final_below else p


def step_order(method, i: int, n: int) -> int:
    """Multistep order of step i of n."""
    return _final_cap(method, min(method.solver_order, i + 1), i, n)


def warmup_order(method, i: int, n: int) -> int:
    """Order of the singlestep warm-up taken at step i, or 0 (a multistep step)."""
    if method.warmup != "singlestep" or i >= method.solver_order - 1:
        return 0
    return _final_cap(method, method.solver_order, i, n)


def warmup_nfe(method, n: int) -> int:
    """The warm-up's calls beyond one per step, on a walk of n steps (declared; tests count them)."""
    return sum(max(warmup_order(method, i, n) - 1, 0) for i in range(n))


def step(method, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state: History, noise,
         singlestep_only: bool = False) -> Step:
    """One step of a multistep ``method`` (module docstring); ``singlestep_only``: every step a singlestep
    DPM-Solver step of order ``solver_order`` (the history then only supplies λ)."""
    i, n = state.i, len(state.lams) - 1
    lam, lam_next = state.lams[i], state.lams[i + 1]
    out = model_output(problem, x, t, method.prediction)
    x = method.correct(problem, x, out, state.memo)
    lams = [lam, *state.lam_past][: method.solver_order]
    outs = [out, *state.out_past][: method.solver_order]
    q = method.solver_order if singlestep_only else warmup_order(method, i, n)
    if q:  # singlestep step of order q (q − 1 extra calls)
        x_next, memo = singlestep(problem, method.prediction, x, t, t_next, lam, lam_next - lam, out, q), None
    else:
        p = step_order(method, i, n)
        x_next = method.update(problem, x, t, t_next, lams[:p], outs[:p], lam_next, noise)
        memo = (x, t, t_next, lams[:p], outs[:p], lam_next)
    return Step(x_next, x_next, History(state.lams, i + 1, lams, outs, memo))
