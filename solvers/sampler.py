"""A sampler = a method composed with a step-size controller and the final denoise.

``Sampler(method, controller, denoise)`` is what :func:`solvers.make_sampler` builds for every
built-in method: ``make_sampler('edm_heun', n_steps=18)`` is
``Sampler(EDMHeun(), FixedSteps(n_steps=18, schedule='karras'), 'tweedie')`` — the method's own
options go to the method, the controller's (``n_steps``, ``schedule``, ``convention``; ``rtol``,
``atol``, ``h_init``, …) to a copy of the method's default ``controller``. ``sample`` runs the one
loop (:func:`solvers.solve.solve`). The declarations the harness reads (:data:`solvers.base.PROTOCOL`)
come from the parts: order, NFE per step and batch invariance from the method, ``adaptive`` and the
expected NFE from the controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from solvers import requirements
from solvers.base import Problem, Solution
from solvers.denoise import DEFAULT_DENOISE
from solvers.solve import solve

__all__ = ["Sampler"]


@dataclass(frozen=True)
class Sampler:
    """``method`` stepped under ``controller`` from T to eps, then ``denoise``."""

    method: object
    controller: object
    denoise: str = DEFAULT_DENOISE

    per_sample_loop: ClassVar[bool] = False  # the loop is vectorised over the batch

    def __post_init__(self) -> None:
        self.controller.check(type(self.method).__name__, self.method, self.denoise)
        if hasattr(self.method, "check_controller"):  # a method whose options constrain its controller
            self.method.check_controller(self.controller)

    @property
    def order(self) -> float:
        return self.method.order

    @property
    def nfe_per_step(self) -> int:
        return self.method.nfe_per_step

    @property
    def batch_invariant(self) -> bool:
        return self.method.batch_invariant

    @property
    def needs(self) -> tuple[str, ...]:
        """What it needs from the path (solvers.requirements): the method's and its grid's."""
        return (*self.method.needs, *self.controller.needs)

    @property
    def adaptive(self) -> bool:
        return self.controller.adaptive

    @property
    def expected_nfe(self) -> int | None:
        return None if self.adaptive else self.controller.expected_nfe(self.method, self.denoise)

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution:
        requirements.check(self, problem.sde)  # before any score call
        return solve(self.method, self.controller, problem, x_init, noise, self.denoise)
