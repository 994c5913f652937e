"""Reverse-SDE predictors of Song et al. 2021: Euler–Maruyama, reverse diffusion, ancestral sampling.

All integrate the reverse SDE dx = [f(x, t) − g(t)² s(x, t)] dt + g(t) dW̄ from T to eps with one
score call per step; noise is additive, so Euler–Maruyama has strong order 1 with the exact score.
They walk a fixed grid in either convention (:mod:`solvers.fixed`); their state is that grid's
:class:`~solvers.fixed.FixedSteps` (score_sde's dt = T/N and tables with N = n_steps need it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step, check_choice
from solvers.fixed import GRID_DENOISE, FixedSteps

__all__ = ["EulerMaruyama", "ReverseDiffusion", "AncestralSampling"]

DISCRETIZATIONS = ("table", "transition")


def check_table(method, problem: Problem, n_steps: int) -> None:
    """score_sde's tables need β_i < 1 (VP: n_steps > β_max·T); refuse before any score call."""
    if method.discretization != "table":
        return
    sde = problem.sde
    c, G = sde.discretize(torch.tensor([sde.T], dtype=torch.float64), n_steps)
    if not (torch.isfinite(c).all() and torch.isfinite(G).all()):
        raise ValueError(f"{type(method).__name__}: score_sde's discrete table is invalid for n_steps="
                         f"{n_steps} on this SDE (β_i ≥ 1); use more steps or discretization='transition'")


def check_uniform_table(method, steps: FixedSteps) -> None:
    """score_sde's tables are indexed by the uniform grid: refuse another schedule (at construction)."""
    if method.discretization == "table" and steps.schedule != "uniform":
        raise ValueError(f"{type(method).__name__}: discretization 'table' needs schedule 'uniform'; "
                         f"use discretization='transition' for schedule={steps.schedule!r}")


@dataclass(frozen=True)
class EulerMaruyama:
    """Euler–Maruyama on the reverse SDE.

    Integrates: the reverse SDE. Order: strong 1.0 (additive noise; 0.5 in general). NFE per step: 1.
    SDEs: VE, VP, sub-VP. Step: x_mean = x − [f − g² s]·dt, x = x_mean + g √dt z, with dt = t − t_next
    from the grid (convention 'grid'), or score_sde's dt = T/N (convention 'score_sde', Song et al.
    2021 code, ``EulerMaruyamaPredictor``). z is drawn before the score call, as score_sde does.
    """

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    batch_invariant: ClassVar[bool] = True
    controller: ClassVar[FixedSteps] = FixedSteps()
    conventions: ClassVar[dict] = GRID_DENOISE
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # f(T), g²(T) or σ_ve(T): finite only where α_T > 0

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> FixedSteps:
        del problem, x
        return walk.steps

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state: FixedSteps, noise) -> Step:
        sde = problem.sde
        dt = t - t_next if state.convention == "grid" else torch.full_like(t, sde.T / state.n_steps)
        g = sde.diffusion(t)
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        # x_mean = x − (f − g² s)·dt, written as (1 − f_coef·dt)·x + g²·dt·s.
        x_mean = expand_like(1 - sde.drift_coef(t) * dt, x) * x + expand_like(g**2 * dt, x) * problem.score(x, t)
        return Step(x_mean + expand_like(g * dt.sqrt(), x) * z, x_mean, state)


@dataclass(frozen=True)
class ReverseDiffusion:
    """Reverse diffusion: the reverse of the forward process' own discretisation.

    Integrates: the reverse SDE, or with ``probability_flow=True`` the probability-flow ODE (the
    paper's "probability flow" predictor, no noise). Order: strong 1.0 / ODE 1. NFE per step: 1.
    SDEs: VE, VP, sub-VP. Update (Song et al. 2021, Eq. 46–47; score_sde ``ReverseDiffusionPredictor``):
    with the forward step x_{i+1} = x_i + c_i x_i + G_i z,
    x_mean = x − c_i x + G_i² s (½ G_i² s for the probability flow), x = x_mean + G_i z.
    ``discretization='table'`` takes (c_i, G_i) from score_sde's discrete tables with N = n_steps
    (VP: DDPM β_i; VE: SMLD σ_i; sub-VP: Euler with dt = T/N); ``'transition'`` from the exact forward
    transition between the grid points (any schedule): c = a − 1, G² = v.
    """

    probability_flow: bool = False
    discretization: str = "table"

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    batch_invariant: ClassVar[bool] = True
    controller: ClassVar[FixedSteps] = FixedSteps()
    conventions: ClassVar[dict] = GRID_DENOISE

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "discretization", self.discretization, DISCRETIZATIONS)
        check_choice(type(self).__name__, "probability_flow", self.probability_flow, (False, True))

    @property
    def needs(self) -> tuple[str, ...]:
        """score_sde's tables, or (transition) the exact transition from T, a = α_next/α_T."""
        return ("tables",) if self.discretization == "table" else ("alpha_T",)

    def check_controller(self, steps: FixedSteps) -> None:
        check_uniform_table(self, steps)

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> int:
        del x
        check_table(self, problem, walk.steps.n_steps)
        return walk.steps.n_steps

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state: int, noise) -> Step:
        if self.discretization == "table":
            c, G = problem.sde.discretize(t, state)
            G2 = G**2
        else:
            a, G2 = problem.sde.transition(t, t_next)
            c = a - 1
        scale = 0.5 if self.probability_flow else 1.0
        x_mean = x - expand_like(c, x) * x + expand_like(scale * G2, x) * problem.score(x, t)
        if self.probability_flow:
            return Step(x_mean, x_mean, state)
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        return Step(x_mean + expand_like(G2.sqrt(), x) * z, x_mean, state)


@dataclass(frozen=True)
class AncestralSampling:
    """Ancestral sampling (DDPM for VP, SMLD for VE).

    Integrates: the reverse Markov chain of the discretised forward process. Order: strong 1.0.
    NFE per step: 1. SDEs: VP and VE; sub-VP is refused (no ancestral step is defined for it, as in
    score_sde). Update (Song et al. 2021, Eq. 47 and App. F; score_sde ``AncestralSamplingPredictor``):
    VP x_mean = (x + β_i s)/√(1 − β_i), noise √β_i; VE x_mean = x + (σ_i² − σ_{i−1}²) s, noise
    √(σ_{i−1}²(σ_i² − σ_{i−1}²)/σ_i²). ``discretization='transition'`` uses the exact transition
    between grid points (x + v s)/a with the posterior std σ_next √v / σ_t (any schedule).
    """

    discretization: str = "table"

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    batch_invariant: ClassVar[bool] = True
    controller: ClassVar[FixedSteps] = FixedSteps()
    conventions: ClassVar[dict] = GRID_DENOISE

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "discretization", self.discretization, DISCRETIZATIONS)

    @property
    def needs(self) -> tuple[str, ...]:
        """score_sde's ancestral step (and tables), or (transition) α_T > 0."""
        return ("ancestral", "tables") if self.discretization == "table" else ("ancestral", "alpha_T")

    def check_controller(self, steps: FixedSteps) -> None:
        check_uniform_table(self, steps)

    def check(self, problem: Problem) -> None:
        if getattr(problem.sde, "ancestral", None) is None:
            raise ValueError(f"AncestralSampling needs an SDE with `ancestral()` (VP or VE); "
                             f"{type(problem.sde).__name__} has none")

    def init(self, problem: Problem, x: Tensor, walk) -> int:
        del x
        check_table(self, problem, walk.steps.n_steps)
        return walk.steps.n_steps

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state: int, noise) -> Step:
        sde = problem.sde
        if self.discretization == "table":
            cx, cs, std = sde.ancestral(t, state)
        else:
            a, v = sde.transition(t, t_next)
            cx, cs, std = 1 / a, v / a, sde.marginal(t_next)[1] * v.sqrt() / sde.marginal(t)[1]
        x_mean = expand_like(cx, x) * x + expand_like(cs, x) * problem.score(x, t)
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        return Step(x_mean + expand_like(std, x) * z, x_mean, state)
