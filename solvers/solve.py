"""The one loop every built-in sampler runs: a method composed with a step-size controller.

A sampler is three parts (diffrax's split of solver, step-size controller and ``diffeqsolve``):

* the **method** — the update, with its own state (a multistep history, LMS's past slopes, …):
  ``check(problem)`` refuses what it cannot run before any score call, ``init(problem, x, walk)``
  builds its state, ``step(problem, x, t, t_next, state, noise) -> Step`` makes one step of the rows
  it is given. ``t``, ``t_next``: [B] float64; ``noise``: the noise source of those rows; ``walk``:
  the controller's walk (a fixed grid's ``grid`` [n + 1, B] and ``steps``; None-grid when adaptive);
* the **controller** — where the steps go: :class:`solvers.fixed.FixedSteps` (a grid from a
  schedule, every step accepted) or :class:`solvers.adaptive.AdaptiveSteps` (per-sample t and h,
  accepted or rejected on the method's error estimate). ``start(problem, x, noise, method)`` returns
  its *walk*, the controller's state during one solve;
* :func:`solve` — the loop: ask the walk for the next attempt, let the method step it, let the
  walk judge it; then the final denoise and the statistics.

Arguments mean the same under every controller. An adaptive walk attempts a subset of the rows
(``problem.select_rows``, so class labels follow them) and gives the method the noise source of those
rows, whose ``increment`` is one fresh draw per attempt; it also passes ``h=``, the step in the
method's own variable (t for Gotta Go Fast, λ for DPM-Solver), which only adaptive pairs take.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from solvers.base import Problem, Solution, Status, finite_status
from solvers.denoise import final_denoise

__all__ = ["Attempt", "solve"]


@dataclass
class Attempt:
    """One step the controller asks for: the rows' problem, state, times and noise source."""

    problem: Problem
    x: Tensor  # [b, ...] the rows' state
    t: Tensor  # [b] float64
    t_next: Tensor  # [b]
    noise: object
    kwargs: dict = field(default_factory=dict)  # what the controller adds (adaptive: h)


def solve(method, controller, problem: Problem, x_init: Tensor, noise, denoise: str, on_step=None) -> Solution:
    """Run ``method`` under ``controller`` from the prior sample ``x_init`` [B, ...] at T down to
    eps, then the final ``denoise`` (:mod:`solvers.denoise`). NFE is read from the problem's counter.
    ``on_step(x)``, where given, sees the state after every step (a teacher trajectory: solvers/gits.py)."""
    method.check(problem)  # before any score call
    counter = problem.counter
    nfe0 = counter.nfe
    with torch.no_grad():
        walk = controller.start(problem, x_init, noise, method)
        state = method.init(problem, x_init, walk)
        x = x_mean = walk.x
        while (attempt := walk.attempt(x)) is not None:
            out = method.step(attempt.problem, attempt.x, attempt.t, attempt.t_next, state, attempt.noise,
                              **attempt.kwargs)
            state = out.state
            x, x_mean = walk.judge(attempt, out)
            if on_step is not None:
                on_step(x)
        if walk.status == Status.OK:
            calls = counter.nfe
            x = final_denoise(problem, x, denoise, x_mean, t=walk.t_end)
            walk.denoised(counter.nfe - calls)
    status, message = (walk.status, walk.message) if walk.status != Status.OK else finite_status(x)
    return Solution(x, walk.stats(counter.nfe - nfe0), status, message)
