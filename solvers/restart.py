"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes"): EDM's Heun
ODE solver in σ on the main grid, and at one point of it a *restart*: K times, re-noise forward from
σ_min of the interval to its σ_max, x ← x + √(σ_max² − σ_min²)·ε, and solve the ODE back down to σ_min.
The re-noising contracts the error the ODE solver has accumulated; the backward solves add little of
their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step, check_positive
from solvers.denoiser import Denoiser, ve_sigma
from solvers.edm import _heun
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["Restart", "RestartState", "restart_sigmas"]


def restart_sigmas(sigma_min: Tensor, sigma_max: float, n: int, rho: float) -> Tensor:
    """The restart's backward grid, [n, B] float64: Karras' ρ-schedule of n points from ``sigma_max``
    down to ``sigma_min`` [B] (the reference's ``get_steps``, with the main grid's ρ)."""
    u = torch.linspace(0, 1, n, dtype=torch.float64, device=sigma_min.device)[:, None]
    hi, lo = sigma_max ** (1 / rho), sigma_min.to(torch.float64) ** (1 / rho)
    return (hi + u * (lo - hi)) ** rho


@dataclass
class RestartState:
    """The index of the next main step, and the grid index after which the restarts run (−1: none)."""

    i: int = 0
    index: int = -1


@dataclass(frozen=True)
class Restart:
    """Restart sampling: EDM Heun on the main grid; after the main step that lands on the grid point
    σ_j nearest ``t_min``, K restarts, each: x_ve ← x_ve + S_noise·√(t_max² − σ_j²)·ε (forward noise of
    the VE process from σ_j to t_max), then ``restart_steps`` − 1 Heun steps down the Karras grid
    (ρ = ``restart_rho``) from t_max to σ_j. As the reference, the interval's lower end is the main grid
    point σ_j nearest ``t_min`` (not ``t_min`` itself), and inside the restart each step may first
    churn, σ̂ = (1 + ``restart_gamma``)·σ where ``S_tmin`` ≤ σ ≤ ``S_tmax`` (EDM's Algorithm 2).

    Integrates: the probability-flow ODE dx_ve/dσ = (x_ve − D(x_ve; σ))/σ (the main solve and each
    restart's backward solve, of order 2 as EDM Heun), with forward re-noising in between; a stochastic
    sampler, declared order 1 (with ``t_min = t_max = None`` it is EDM Heun, order 2). NFE per main step:
    2 (+1 for the final step to σ = 0, ``denoise='tweedie'``), plus 2·K·(``restart_steps`` − 1) once
    (:meth:`warmup_nfe`; counted by the wrapper). SDEs: any path with α_T > 0 (through x_ve = x/α_t).
    Noise: K re-noising draws (``noise.normal``), and one per churned restart step.

    Reference: Newbeeer/diffusion_restart_sampling, ``benchmarks/generate_restart.py``
    (``restart_sampler``, commit 8cbcb07, read, not copied): its ``restart_info`` {i: [N_restart, K,
    t_min, t_max]} is one interval here (``restart_steps``, ``K``, ``t_min``, ``t_max``); its README runs
    use S_noise = 1.003 and restart_gamma = 0.05 on [0.01, 1]; its main steps' churn (S_churn, default 0)
    is ``edm_stochastic``'s and not offered; it draws (and multiplies by 0) a normal on every step
    without churn, the harness draws only the normals it uses; with its ``t_min`` nearest the first
    grid point it never restarts, the harness refuses that run (:meth:`init`). Several intervals
    (its ImageNet settings) are not offered. Tested in tests/test_restart.py.

    Args:
        t_min, t_max: the restart interval in σ_ve (the paper's CIFAR-10 EDM setting: [0.14, 0.30],
            K = 2, 3 steps); both None: no restart. Inside (σ_min, σ_max) of the path (:meth:`refusal`).
        K: restarts (≥ 1).
        restart_steps: points of each restart's backward grid (≥ 2): restart_steps − 1 Heun steps.
        restart_rho: ρ of the restart's Karras grid (the reference uses the main grid's, 7).
        S_noise: inflation of the re-noising and churn noise (reference: 1.003 in its README runs).
        restart_gamma, S_tmin, S_tmax: churn inside the restarts, where S_tmin ≤ σ ≤ S_tmax (the
            reference's ``restart_gamma``, ``S_min``, ``S_max``; default no churn).
    """

    t_min: float | None = 0.14
    t_max: float | None = 0.30
    K: int = 2
    restart_steps: int = 3
    restart_rho: float = 7.0
    S_noise: float = 1.0
    restart_gamma: float = 0.0
    S_tmin: float = 0.01
    S_tmax: float = 1.0

    ode_order: ClassVar[float] = 2.0  # the deterministic part's (EDM Heun), fitted in tests/test_restart.py
    nfe_per_step: ClassVar[int] = 2
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="karras")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        name = type(self).__name__
        if (self.t_min is None) != (self.t_max is None):
            raise ValueError(f"{name}: give both t_min and t_max (the restart interval in σ), or neither; "
                             f"got t_min={self.t_min!r}, t_max={self.t_max!r}")
        if self.t_min is not None:
            check_positive(name, "t_min", self.t_min)
            check_positive(name, "t_max", self.t_max)
            if not self.t_min < self.t_max:
                raise ValueError(f"{name}: need t_min < t_max (the restart interval in σ), "
                                 f"got t_min={self.t_min} >= t_max={self.t_max}")
        if isinstance(self.K, bool) or not isinstance(self.K, int) or self.K < 1:
            raise ValueError(f"{name}: K (restarts) must be an integer >= 1, got {self.K!r}")
        if isinstance(self.restart_steps, bool) or not isinstance(self.restart_steps, int) or self.restart_steps < 2:
            raise ValueError(f"{name}: restart_steps must be an integer >= 2, got {self.restart_steps!r}")
        check_positive(name, "restart_rho", self.restart_rho)
        for key in ("S_noise", "restart_gamma", "S_tmin", "S_tmax"):
            v = getattr(self, key)
            if not isinstance(v, int | float) or isinstance(v, bool) or not (v >= 0 and not math.isnan(v)):
                raise ValueError(f"{name}: {key} must be a number >= 0, got {v!r}")

    @property
    def restarts(self) -> bool:
        return self.t_min is not None

    @property
    def order(self) -> float:
        """2 (EDM Heun) without a restart interval; 1 with one (a stochastic sampler)."""
        return 1.0 if self.restarts else 2.0

    def warmup_nfe(self, steps: int) -> int:
        """The restarts' calls beyond the main steps': 2 per Heun step, restart_steps − 1 steps, K times."""
        del steps
        return 2 * self.K * (self.restart_steps - 1) if self.restarts else 0

    def refusal(self, sde) -> str | None:
        """Why the interval does not fit the path: it must lie inside (σ_ve(eps), σ_ve(T))."""
        if not self.restarts:
            return None
        t = torch.tensor([float(sde.eps), float(sde.T)], dtype=torch.float64)
        lo, hi = (float(s) for s in ve_sigma(sde, t))
        if not lo < self.t_min < self.t_max < hi:
            return (f"Restart's interval [t_min, t_max] = [{self.t_min:g}, {self.t_max:g}] must lie inside "
                    f"(σ_min, σ_max) = ({lo:.4g}, {hi:.4g}) of the {sde.kind!r} path")
        return None

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> RestartState:
        """The grid index nearest ``t_min`` (the reference's ``argmin |t_steps − t_min|``)."""
        del x
        if not self.restarts:
            return RestartState()
        sigmas = ve_sigma(problem.sde, walk.grid[:, 0])
        index = int(torch.argmin((sigmas - self.t_min).abs()))
        if index == 0:
            raise ValueError(f"Restart: t_min={self.t_min:g} is nearest the grid's first point "
                             f"σ={float(sigmas[0]):.4g}; "
                             f"the reference restarts after a step lands there, so it would never restart: "
                             f"use more steps or a lower t_min")
        if float(sigmas[index]) >= self.t_max:
            raise ValueError(f"Restart: the grid point nearest t_min={self.t_min:g} is σ={float(sigmas[index]):.4g}, "
                             f"not below t_max={self.t_max:g}: the forward re-noising needs σ < t_max; use more steps "
                             f"or a higher t_max")
        return RestartState(index=index)

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state: RestartState, noise) -> Step:
        D = Denoiser(problem)
        x_ve = _heun(D, D.to_ve(x, t), D.sigma(t), t, D.sigma(t_next), t_next)
        if state.i + 1 == state.index:
            for _ in range(self.K):
                x_ve = self.restart(D, x_ve, t_next, noise)
        x = D.from_ve(x_ve, t_next)
        return Step(x, x, replace(state, i=state.i + 1))

    def restart(self, D: Denoiser, x_ve: Tensor, t_low: Tensor, noise) -> Tensor:
        """One restart from the grid point t_low [B]: forward noise to t_max, Heun steps back to t_low."""
        sigmas = restart_sigmas(D.sigma(t_low), self.t_max, self.restart_steps, self.restart_rho)  # [n, B]
        eps = noise.normal(x_ve.shape, dtype=x_ve.dtype, device=x_ve.device)
        x_ve = x_ve + expand_like((sigmas[0] ** 2 - sigmas[-1] ** 2).sqrt() * self.S_noise, x_ve) * eps
        times = D.time(sigmas)
        times[-1] = t_low  # land exactly on the main grid point
        for j in range(self.restart_steps - 1):
            sigma, t = sigmas[j], times[j]
            in_range = (sigma >= self.S_tmin) & (sigma <= self.S_tmax)
            if self.restart_gamma > 0 and bool(in_range.any()):
                sigma_hat = torch.where(in_range, sigma * (1 + self.restart_gamma), sigma)
                z = noise.increment(t, times[j + 1], x_ve.shape, dtype=x_ve.dtype, device=x_ve.device)
                x_ve = x_ve + expand_like((sigma_hat**2 - sigma**2).sqrt() * self.S_noise, x_ve) * z
                sigma, t = sigma_hat, D.time(sigma_hat)
            x_ve = _heun(D, x_ve, sigma, t, sigmas[j + 1], times[j + 1])
        return x_ve
