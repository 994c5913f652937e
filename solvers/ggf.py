"""Gotta Go Fast's adaptive methods (Jolicoeur-Martineau et al. 2021, Algorithm 1): embedded pairs on
the reverse SDE, stepped by the adaptive controller (:mod:`solvers.adaptive`, whose docstring has the
conventions: one z per attempt and sample, the error norm, x_prev, the end within 1e-6 of eps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from models.sde import expand_like
from solvers.adaptive import IntegralController
from solvers.base import Problem, Step, check_choice

__all__ = ["AdaptiveImprovedEuler", "AdaptiveEM"]


def _reverse_drift(problem: Problem, x: Tensor, t: Tensor) -> Tensor:
    """f_r(x, t) = f(x, t) − g(t)² s(x, t), [B, ...] (one score call)."""
    sde = problem.sde
    return sde.drift(x, t) - expand_like(sde.diffusion(t) ** 2, x) * problem.score(x, t)


@dataclass(frozen=True)
class _ReverseSDEPair:
    """What GGF's two pairs share: steps of h in t from T down to eps, one normal draw per attempt,
    finished within 1e-6 of eps (GGF's loop condition). ``extrapolation``: continue from the
    higher-order state (default, GGF) or from the lower one."""

    extrapolation: bool = True

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 2
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # f(T), g²(T) or σ_ve(T): finite only where α_T > 0
    controller: ClassVar[IntegralController] = IntegralController()
    end_tol: ClassVar[float] = 1e-6

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "extrapolation", self.extrapolation, (True, False))

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def span(self, problem: Problem, t: Tensor) -> Tensor:
        return t - problem.sde.eps

    def advance(self, problem: Problem, t: Tensor, h: Tensor, last: Tensor) -> Tensor:
        del problem, last
        return t - h


@dataclass(frozen=True)
class AdaptiveImprovedEuler(_ReverseSDEPair):
    """Gotta Go Fast's adaptive sampler: stochastic Improved Euler (Heun) with an embedded
    Euler–Maruyama error estimate (GGF §3.1, ``sde_improved_euler=True``).

    K1 = −h f_r(x, t) + g(t)√h z, K2 = −h f_r(x + K1, t − h) + g(t − h)√h z, E = ½(K2 − K1); with
    extrapolation the candidate is x + ½(K1 + K2) and the tolerance is measured on x + K1.

    Integrates: the reverse SDE from T to eps with per-sample step sizes, then the final denoise.
    Order: strong 1 (additive noise; the drift part is second order). NFE per step: 2 (per attempt,
    rejections included) + 1 denoise. SDEs: VE, VP, sub-VP. Source: Jolicoeur-Martineau et al. 2021,
    Algorithm 1 (REFERENCE §2.1); the controller's options in :class:`IntegralController`.
    """

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise,
             h: Tensor | None = None) -> Step:
        g = problem.sde.diffusion
        h = t - t_next if h is None else h
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        sqrt_h, h_x = expand_like(h.sqrt(), x), expand_like(h, x)
        k1 = -h_x * _reverse_drift(problem, x, t) + expand_like(g(t), x) * sqrt_h * z
        x_em = x + k1
        k2 = -h_x * _reverse_drift(problem, x_em, t_next) + expand_like(g(t_next), x) * sqrt_h * z
        x_heun = x + 0.5 * (k1 + k2)
        x_new, x_check = (x_heun, x_em) if self.extrapolation else (x_em, x_heun)
        return Step(x_new, x_new, state, error=0.5 * (k2 - k1), x_check=x_check)


@dataclass(frozen=True)
class AdaptiveEM(_ReverseSDEPair):
    """Gotta Go Fast's adaptive sampler with Lamba's Euler–Maruyama pair (``sde_improved_euler=False``):
    the drift re-evaluated at the noise-free EM point.

    x_mean = x − h f_r(x, t); f_r' = f_r(x_mean, t − h); with extrapolation x_mean = x − ½h(f_r + f_r');
    x_new = x_mean + g(t)√h z; E = ½h(f_r' − f_r); the tolerance is measured on x_mean.

    Integrates: the reverse SDE from T to eps with per-sample step sizes, then the final denoise.
    Order: strong 1 (additive noise). NFE per step: 2 + 1 denoise. SDEs: VE, VP, sub-VP. Source:
    Lamba 2003 as used by Jolicoeur-Martineau et al. 2021 (REFERENCE §2.1).
    """

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise,
             h: Tensor | None = None) -> Step:
        h = t - t_next if h is None else h
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        h_x = expand_like(h, x)
        d1 = _reverse_drift(problem, x, t)
        x_mean = x - h_x * d1
        d2 = _reverse_drift(problem, x_mean, t_next)
        if self.extrapolation:
            x_mean = x - 0.5 * h_x * (d1 + d2)
        x_new = x_mean + expand_like(problem.sde.diffusion(t) * h.sqrt(), x) * z
        return Step(x_new, x_mean, state, error=0.5 * h_x * (d2 - d1), x_check=x_mean)
