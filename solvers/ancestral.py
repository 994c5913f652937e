"""k-diffusion's ancestral two-stage DPM-Solver++ samplers (Crowson, after Lu et al. 2022b, Algorithm 1):
each stage solves the probability-flow ODE with a first-order DPM-Solver++ step from σ down to σ_down,
then adds fresh noise of std σ_up, where σ_down² + σ_up² = σ_target² and

    σ_up = min(σ_target, η √(σ_target² (σ² − σ_target²) / σ²))     (η = 1: the DDPM posterior's noise).

* ``sample_dpmpp_2s_ancestral`` (:class:`DPMSolverPP2SAncestral`): noise only at the end of the step;
* ``sample_dpmpp_sde`` (:class:`DPMSolverPP2SSDE`): noise at the midpoint and at the end, the two draws
  increments of one Brownian path in σ (k-diffusion's ``BrownianTreeNoiseSampler``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step
from solvers.denoiser import Denoiser
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["DPMSolverPP2SAncestral", "DPMSolverPP2SSDE", "ancestral_sigmas"]


def ancestral_sigmas(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(σ_down, σ_up), [B] each: the ODE target and the added noise's std of an ancestral step."""
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    return (sigma_next**2 - sigma_up**2).sqrt(), sigma_up


@dataclass(frozen=True)
class DPMSolverPP2SAncestral:
    """DPM-Solver++(2S) to σ_down, then σ_up·z (module docstring), on x_ve = x/α in σ_ve: with λ = −log σ,
    h = λ_down − λ and the midpoint s = λ + h/2,

        u = (σ_s/σ) x_ve − (e^{−h/2} − 1) D(x_ve; σ),   x_ve ← (σ_down/σ) x_ve − (e^{−h} − 1) D(u; σ_s) + σ_up z.

    Integrates: the reverse SDE (an ancestral discretisation; η = 0 is DPM-Solver++(2S) on the
    probability-flow ODE). Order: 1 (declared; stochastic). NFE per step: 2 (+1 for the final step to
    σ = 0, the x̂₀ prediction: k-diffusion's last Euler step). One noise draw per step.
    Reference: k-diffusion 0.1.1.post1 ``sampling.py`` ``sample_dpmpp_2s_ancestral``, run side by side
    in tests/test_kdiffusion_side_by_side.py.

    Args:
        eta: η ≥ 0, the share of the posterior noise (k-diffusion's default 1).
        s_noise: noise inflation (k-diffusion's ``s_noise``, default 1).
    """

    eta: float = 1.0
    s_noise: float = 1.0

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 2
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # σ_ve(T) = σ_T/α_T: finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="karras")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("eta", "s_noise"):
            v = getattr(self, key)
            if not isinstance(v, int | float) or isinstance(v, bool) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: {key} must be a number >= 0, got {v!r}")

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        D = Denoiser(problem)
        sigma, sigma_next = D.sigma(t), D.sigma(t_next)
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, self.eta)
        x_ve = D.to_ve(x, t)
        h = torch.log(sigma / sigma_down)
        sigma_s = sigma * torch.exp(-h / 2)
        u = expand_like(sigma_s / sigma, x_ve) * x_ve - expand_like(torch.expm1(-h / 2), x_ve) * D(x_ve, sigma, t)
        d_s = D(u, sigma_s)
        x_ve = expand_like(sigma_down / sigma, x_ve) * x_ve - expand_like(torch.expm1(-h), x_ve) * d_s
        x_mean = D.from_ve(x_ve, t_next)
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        x_ve = x_ve + expand_like(sigma_up * self.s_noise, x_ve) * z
        return Step(D.from_ve(x_ve, t_next), x_mean, state)


@dataclass(frozen=True)
class DPMSolverPP2SSDE:
    """Stochastic DPM-Solver++(2S) (k-diffusion's ``sample_dpmpp_sde``), on x_ve = x/α in σ_ve: with λ = −log σ,
    h = λ_next − λ and the intermediate point σ_s = σ e^{−r h},

        u = (σ_d/σ) x_ve + (1 − σ_d/σ) D(x_ve; σ) + σ_u s_noise z₁          ((σ_d, σ_u): ancestral to σ_s),
        x_ve ← (σ_d'/σ) x_ve + (1 − σ_d'/σ) D̄ + σ_u' s_noise z₂,  D̄ = (1 − 1/(2r)) D(x_ve; σ) + 1/(2r) D(u; σ_s)
                                                                       ((σ_d', σ_u'): ancestral to σ_next).

    z₁ and z₂ are the normalised increments of ONE Brownian path W in σ over [σ_s, σ] and [σ_next, σ], as
    k-diffusion's ``BrownianTreeNoiseSampler`` gives them: two draws per step, a = ``noise.increment`` over
    [t_s, t] and b over [t_next, t_s], make W(σ) − W(σ_s) = √(σ − σ_s)·a and W(σ_s) − W(σ_next) = √(σ_s − σ_next)·b,
    so z₁ = a and z₂ = (√(σ − σ_s)·a + √(σ_s − σ_next)·b)/√(σ − σ_next) (correlated, as on the tree). With the
    run's per-sample seeded noise each sample has its own path: batch invariant.

    Integrates: the reverse SDE (an ancestral discretisation; η = 0 is DPM-Solver++(2S) with r on the
    probability-flow ODE). Order: 1 (declared; stochastic). NFE per step: 2 (+1 for the final step to
    σ = 0, the x̂₀ prediction: k-diffusion's last Euler step). Two noise draws per step.
    Reference: k-diffusion 0.1.1.post1 ``sampling.py`` ``sample_dpmpp_sde`` and ``BrownianTreeNoiseSampler``,
    run side by side in tests/test_kdiffusion_side_by_side.py with one per-sample Brownian tree.

    Args:
        eta: η ≥ 0, the share of the posterior noise (k-diffusion's default 1).
        s_noise: noise inflation (k-diffusion's ``s_noise``, default 1).
        r: the intermediate point's share of the step in λ, 0 < r < 1 (k-diffusion's default ½).
    """

    eta: float = 1.0
    s_noise: float = 1.0
    r: float = 0.5

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 2
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="karras")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        DPMSolverPP2SAncestral.__post_init__(self)
        if not isinstance(self.r, int | float) or isinstance(self.r, bool) or not 0 < self.r < 1:
            raise ValueError(f"{type(self).__name__}: r must be a number in (0, 1), got {self.r!r}")

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        D = Denoiser(problem)
        sigma, sigma_next = D.sigma(t), D.sigma(t_next)
        sigma_s = sigma * torch.exp(-self.r * torch.log(sigma / sigma_next))
        t_s = D.time(sigma_s)
        x_ve = D.to_ve(x, t)
        a = noise.increment(t, t_s, x.shape, dtype=x.dtype, device=x.device)
        b = noise.increment(t_s, t_next, x.shape, dtype=x.dtype, device=x.device)
        z1 = a
        z2 = (expand_like((sigma - sigma_s).sqrt(), x) * a + expand_like((sigma_s - sigma_next).sqrt(), x) * b) \
            / expand_like((sigma - sigma_next).sqrt(), x)
        d = D(x_ve, sigma, t)
        down, up = ancestral_sigmas(sigma, sigma_s, self.eta)
        u = _first_order(x_ve, d, sigma, down) + expand_like(up * self.s_noise, x) * z1
        fac = 1 / (2 * self.r)
        d_bar = (1 - fac) * d + fac * D(u, sigma_s, t_s)
        down, up = ancestral_sigmas(sigma, sigma_next, self.eta)
        x_ve = _first_order(x_ve, d_bar, sigma, down)
        x_mean = D.from_ve(x_ve, t_next)
        x_ve = x_ve + expand_like(up * self.s_noise, x) * z2
        return Step(D.from_ve(x_ve, t_next), x_mean, state)


def _first_order(x_ve: Tensor, d: Tensor, sigma: Tensor, sigma_to: Tensor) -> Tensor:
    """The DPM-Solver++ first-order (DDIM) step from σ to σ_to with the denoised d: (σ_to/σ) x + (1 − σ_to/σ) d."""
    ratio = expand_like(sigma_to / sigma, x_ve)
    return ratio * x_ve + (1 - ratio) * d
