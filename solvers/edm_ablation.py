"""EDM's design space (Karras et al. 2022, Table 1): the deterministic and stochastic samplers of VP, VE,
iDDPM and EDM as choices of ODE solver, noise schedule σ(t), scaling s(t) and time discretisation, with
churn — NVlabs/edm ``generate.py`` ``ablation_sampler`` at commit 008a4e5 (read, not copied).

The state is x = s(t) x̃ with x̃ in the VE view of the model (noise level σ(t)), and the ODE (EDM's Eq. 4) is

    dx/dt = (σ̇/σ + ṡ/s) x − (σ̇ s/σ) D(x/s; σ(t)),

which is the probability-flow ODE of the model for every choice of σ(t) and s(t). The time discretisation
is the grid's ``schedule`` (σ values of the model, converted to t by σ(t)'s inverse): EDM's 'edm' is
'karras', its 've' (σ geometric) is 'log_snr', its 'vp' is 'edm_vp_ablation' and its 'iddpm' is 'iddpm'
(:mod:`solvers.grids`). The choices:

* ``sigma_schedule``: 'linear' σ = t; 've' σ = √t; 'vp' σ = √(exp(½ β_d t² + β_min t) − 1), with β_d and
  β_min chosen (as ablation_sampler does) so that σ(1) = σ_max and σ(ε_s) = σ_min, the model's σ range;
* ``scaling``: 'none' s = 1; 'vp' s = 1/√(1 + σ²);
* ``ode_solver``: 'euler' or 'heun' (EDM's α = 1: the second evaluation at the step's end);
* churn: at σ(t_i) ∈ [S_tmin, S_tmax], t̂ = σ⁻¹((1 + γ) σ(t_i)) with γ = min(S_churn/N, √2 − 1),
  x̂ = (s(t̂)/s(t_i)) x + √(σ(t̂)² − σ(t_i)²) s(t̂) S_noise z, then the step from t̂ (one draw per step
  while S_churn > 0, as ablation_sampler).

EDM's last step goes from the grid's last point to t = 0 (``to_zero``): churn, then one Euler step of the
ODE (1 call). With σ = t and s = 1 it is D(x; σ_min), the final Tweedie denoise; with σ = √t it is
½(x + D), not a denoise; with s = 1/√(1 + σ²) the output is x at s(0) = 1. EDM's ``round_sigma`` (the
identity for EDM's own networks) is not applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step, check_choice
from solvers.denoiser import Denoiser, ve_sigma
from solvers.edm import check_churn
from solvers.fixed import FixedSteps, to_zero_conventions, to_zero_default_denoise, to_zero_warmup_nfe

__all__ = ["EDMAblation", "AblationODE", "ODE_SOLVERS", "SIGMA_SCHEDULES", "SCALINGS"]

ODE_SOLVERS = ("euler", "heun")
SIGMA_SCHEDULES = ("vp", "ve", "linear")
SCALINGS = ("vp", "none")


class AblationODE:
    """σ(t), σ̇(t), σ⁻¹, s(t), ṡ(t) and the slope dx/dt of one choice (module docstring); t, σ: [B] float64."""

    def __init__(self, sigma_schedule: str, scaling: str, sigma_min: float, sigma_max: float, epsilon_s: float):
        self.kind, self.scaling = sigma_schedule, scaling
        # VP: β_d, β_min with σ(1) = σ_max and σ(ε_s) = σ_min (ablation_sampler's vp_beta_d, vp_beta_min).
        self.beta_d = 2 * (math.log1p(sigma_min**2) / epsilon_s - math.log1p(sigma_max**2)) / (epsilon_s - 1)
        self.beta_min = math.log1p(sigma_max**2) - 0.5 * self.beta_d

    def sigma(self, t: Tensor) -> Tensor:
        if self.kind == "vp":
            return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()
        return t.sqrt() if self.kind == "ve" else t

    def sigma_deriv(self, t: Tensor) -> Tensor:
        if self.kind == "vp":
            sigma = self.sigma(t)
            return 0.5 * (self.beta_min + self.beta_d * t) * (sigma + 1 / sigma)
        return 0.5 / t.sqrt() if self.kind == "ve" else torch.ones_like(t)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        if self.kind == "vp":
            return ((self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt() - self.beta_min) / self.beta_d
        return sigma**2 if self.kind == "ve" else sigma

    def s(self, t: Tensor) -> Tensor:
        return 1 / (1 + self.sigma(t) ** 2).sqrt() if self.scaling == "vp" else torch.ones_like(t)

    def s_deriv(self, t: Tensor) -> Tensor:
        if self.scaling == "vp":
            return -self.sigma(t) * self.sigma_deriv(t) * self.s(t) ** 3
        return torch.zeros_like(t)

    def slope(self, x: Tensor, t: Tensor, denoised: Tensor) -> Tensor:
        """dx/dt = (σ̇/σ + ṡ/s) x − (σ̇ s/σ) D, [B, ...]."""
        sigma, dsigma, s = self.sigma(t), self.sigma_deriv(t), self.s(t)
        return expand_like(dsigma / sigma + self.s_deriv(t) / s, x) * x - expand_like(dsigma * s / sigma, x) * denoised


@dataclass(frozen=True)
class EDMAblation:
    """EDM's ``ablation_sampler``: Euler or Heun on EDM's Eq. 4 for a chosen σ(t) and s(t), with churn (module
    docstring). With ``ode_solver='heun'``, ``sigma_schedule='linear'``, ``scaling='none'``, no churn and the
    'karras' grid it is :class:`solvers.edm.EDMHeun` (EDM's Algorithm 1); with churn, Algorithm 2.

    Integrates: the probability-flow ODE (S_churn = 0), or the reverse SDE as ODE steps plus churn. Order: 2
    (heun) or 1 (euler) without churn, 1 with churn. NFE per step: 2 (heun) or 1 (euler), + 1 for the last
    step to σ = 0 (``to_zero``; EDM's 2N − 1 for Heun on N points). SDEs: any path with α_T > 0.

    Args:
        ode_solver: 'euler' or 'heun'.
        sigma_schedule: σ(t): 'vp', 've' (√t) or 'linear' (t).
        scaling: s(t): 'vp' (1/√(1 + σ²)) or 'none' (1).
        S_churn, S_tmin, S_tmax, S_noise: churn, as :class:`solvers.edm.EDMStochastic` (γ from N = ``n_steps``).
        epsilon_s: ε_s of the 'vp' σ(t) (ablation_sampler: 1e-3).
        to_zero: EDM's last step to σ = 0 (then ``denoise`` is 'none', the default); False: stop at the grid's
            last point and apply ``denoise`` (default 'tweedie').
    """

    ode_solver: str = "heun"
    sigma_schedule: str = "linear"
    scaling: str = "none"
    S_churn: float = 0.0
    S_tmin: float = 0.0
    S_tmax: float = math.inf
    S_noise: float = 1.0
    epsilon_s: float = 1e-3
    to_zero: bool = True

    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # σ_ve(T): finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="karras")

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_choice(name, "ode_solver", self.ode_solver, ODE_SOLVERS)
        check_choice(name, "sigma_schedule", self.sigma_schedule, SIGMA_SCHEDULES)
        check_choice(name, "scaling", self.scaling, SCALINGS)
        check_churn(self)
        eps_s = self.epsilon_s
        if not isinstance(eps_s, float | int) or isinstance(eps_s, bool) or not 0 < eps_s < 1:
            raise ValueError(f"{name}: epsilon_s must be a number in (0, 1), got {self.epsilon_s!r}")
        if not isinstance(self.to_zero, bool):
            raise ValueError(f"{name}: to_zero must be True or False, got {self.to_zero!r}")

    @property
    def order(self) -> float:
        return 2.0 if self.ode_solver == "heun" and self.S_churn == 0 else 1.0

    @property
    def nfe_per_step(self) -> int:
        return 2 if self.ode_solver == "heun" else 1

    conventions = property(to_zero_conventions)
    default_denoise = property(to_zero_default_denoise)
    warmup_nfe = to_zero_warmup_nfe

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> tuple[AblationODE, int, int]:
        """The state: the choice's ODE on the model's σ range, N (EDM's ``num_steps``) and the step index."""
        del x
        sde = problem.sde
        sigma_max, sigma_min = ve_sigma(sde, torch.tensor([sde.T, sde.eps], dtype=torch.float64)).tolist()
        ode = AblationODE(self.sigma_schedule, self.scaling, sigma_min, sigma_max, self.epsilon_s)
        return ode, walk.steps.n_steps, 0

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        ode, n, i = state
        D = Denoiser(problem)
        tau, tau_next = ode.sigma_inv(D.sigma(t)), ode.sigma_inv(D.sigma(t_next))  # the choice's times
        x_a = x * expand_like(ode.s(tau) / D.scale(t), x)
        x_a = self._step(D, ode, n, x_a, tau, tau_next, t, t_next, noise, self.ode_solver == "heun")
        if self.to_zero and i == n - 2:  # EDM's last step, to t = 0 (σ = 0, s = 1): churn, then Euler
            x_out = self._step(D, ode, n, x_a, tau_next, torch.zeros_like(tau), t_next, None, noise, heun=False)
        else:
            x_out = x_a * expand_like(D.scale(t_next) / ode.s(tau_next), x_a)
        return Step(x_out, x_out, (ode, n, i + 1))

    def _step(self, D: Denoiser, ode: AblationODE, n: int, x: Tensor, tau: Tensor, tau_next: Tensor, t: Tensor,
              t_next: Tensor | None, noise, heun: bool) -> Tensor:
        """ablation_sampler's step from τ to τ_next in the choice's variables (x = s x̃); ``t``, ``t_next``: the
        model's times of τ and τ_next (None: τ_next = 0)."""
        sigma = ode.sigma(tau)
        tau_hat, t_hat = tau, t
        if self.S_churn > 0:
            # Churn: raise the noise level to (1 + γ) σ by adding fresh noise.
            in_range = (sigma >= self.S_tmin) & (sigma <= self.S_tmax)
            gamma = torch.where(in_range, torch.full_like(sigma, min(self.S_churn / n, math.sqrt(2) - 1)), 0.0)
            tau_hat = ode.sigma_inv(sigma * (1 + gamma))
            z = noise.increment(t, torch.zeros_like(t) if t_next is None else t_next, x.shape, dtype=x.dtype,
                                device=x.device)
            spread = (ode.sigma(tau_hat) ** 2 - sigma**2).clamp(min=0).sqrt() * ode.s(tau_hat) * self.S_noise
            x = expand_like(ode.s(tau_hat) / ode.s(tau), x) * x + expand_like(spread, x) * z
            t_hat = torch.where(gamma > 0, D.time(ode.sigma(tau_hat)), t)
        # Euler step.
        h = expand_like(tau_next - tau_hat, x)
        d = ode.slope(x, tau_hat, D(x / expand_like(ode.s(tau_hat), x), ode.sigma(tau_hat), t_hat))
        if not heun:
            return x + h * d
        # Heun's correction at the step's end (EDM's α = 1).
        x_prime = x + h * d
        d_prime = ode.slope(x_prime, tau_next, D(x_prime / expand_like(ode.s(tau_next), x), ode.sigma(tau_next),
                                                 t_next))
        return x + h * (0.5 * d + 0.5 * d_prime)
