"""Forward SDEs of Song et al. 2021 (VE, VP, sub-VP) with the exact conventions of score_sde, and the
registry of every noise path.

VE, VP and sub-VP are Gaussian paths (:class:`models.paths.GaussianPath`: λ, t(λ), f, g², transition and
prior from α_t, σ_t and their derivatives) that keep their own closed forms and score_sde's discrete
tables. ``SDES`` also holds the cosine, flow-matching and tabulated paths of :mod:`models.paths`.

Pure math: no nn.Module, no global step count. Every method takes a time vector ``t`` of shape [B]
(float64 by convention) and broadcasts over a state of any shape [B, ...] via :func:`expand_like`.

Conventions (shared/REFERENCE.md §1.1, §4):
  * VE std is ``σ(t) = σ_min (σ_max/σ_min)^t`` (σ_min included, so std(0) = σ_min), as score_sde.
  * sub-VP std is ``1 − e^{2·lmc(t)}`` (no square root; this *is* the std of sub-VP).
  * The discrete tables used by the discrete samplers (reverse diffusion, ancestral sampling, the
    Langevin α) are score_sde's ``linspace(β_min/N, β_max/N, N)`` and
    ``exp(linspace(ln σ_min, ln σ_max, N))``, indexed by ``i = floor(t (N−1) / T)``. For T < 1 the
    tables are the same functions of t (β(iT/(N−1))·T/N and σ(iT/(N−1))), which equal score_sde's
    tables at T = 1.
  * ``T`` is the terminal time (the diffusion may be truncated, T < 1) and ``eps`` the time the
    samplers stop at (score_sde: 1e-3 for VP/sub-VP, 1e-5 for VE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from models.paths import CosinePath, FlowPath, GaussianPath, TabulatedPath, expand_like

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "SDES", "make_sde", "expand_like", "sde_to_dict"]


@runtime_checkable
class SDE(Protocol):
    """What samplers read from a path (every :class:`models.paths.GaussianPath` has it)."""

    T: float
    eps: float
    kind: str

    def drift(self, x: Tensor, t: Tensor) -> Tensor: ...
    def diffusion(self, t: Tensor) -> Tensor: ...
    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]: ...
    def prior_std(self) -> float: ...


class _Base(GaussianPath):
    """The three SDEs of score_sde: the generic path formulas of :class:`models.paths.GaussianPath`
    (unbounded time domain) plus the index into score_sde's discrete tables."""

    T: float
    eps: float

    def index(self, t: Tensor, N: int) -> Tensor:
        """Discrete index i = floor(t (N−1) / T) of score_sde's tables, [B] long."""
        return (t * (N - 1) / self.T).long().clamp(0, N - 1)


@dataclass(frozen=True)
class VPSDE(_Base):
    """Variance preserving: dx = −½ β(t) x dt + √β(t) dW, β(t) = β_min + t (β_max − β_min).

    Marginal: α_t = e^{lmc(t)}, σ_t = √(1 − e^{2 lmc(t)}), lmc(t) = −¼ t² (β_max − β_min) − ½ t β_min.
    Prior N(0, I) as score_sde (also the paper's naive prior for T < 1).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    eps: float = 1e-3
    kind = "vp"

    def __post_init__(self) -> None:
        self._check()
        if not 0 <= self.beta_min < self.beta_max:
            raise ValueError(f"VPSDE: need 0 <= beta_min < beta_max, got {self.beta_min}, {self.beta_max}")

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t) [B]."""
        return self.beta(t).sqrt()

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t), both [B]."""
        lmc = self.log_mean_coeff(t)
        return lmc.exp(), (-torch.expm1(2 * lmc)).sqrt()

    def marginal_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α̇_t, σ̇_t): α̇ = −½ β(t) α, σ̇ = −α α̇ / σ."""
        alpha, sigma = self.marginal(t)
        dalpha = -0.5 * self.beta(t) * alpha
        return dalpha, -alpha * dalpha / sigma

    def inverse_sigma(self, sigma: Tensor) -> Tensor:
        """t such that σ_t = sigma (solves the quadratic in t)."""
        target = -0.5 * torch.log1p(-sigma**2)  # = −lmc(t)
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return (-b + (b * b + 4 * a * target).sqrt()) / (2 * a)

    def _time_of_lmc(self, neg_lmc: Tensor) -> Tensor:
        """t ≥ 0 with −lmc(t) = neg_lmc: the root of a t² + b t = neg_lmc, in the form without cancellation."""
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return 2 * neg_lmc / (b + (b * b + 4 * a * neg_lmc).sqrt())

    def inverse_ve_sigma(self, sigma_ve: Tensor) -> Tensor:
        """t such that σ_t / α_t = sigma_ve (any sigma_ve ≥ 0, beyond T too): −lmc = ½ log(1 + σ_ve²)."""
        return self._time_of_lmc(0.5 * torch.log1p(sigma_ve**2))

    def prior_std(self) -> float:
        return 1.0

    def discrete_beta(self, t: Tensor, N: int) -> Tensor:
        """score_sde's DDPM table β_i = linspace(β_min/N, β_max/N, N)[i], i = floor(t (N−1)/T), [B]."""
        i = self.index(t, N).to(t.dtype)
        return self.beta(i * self.T / (N - 1)) * self.T / N

    def discretize(self, t: Tensor, N: int) -> tuple[Tensor, Tensor]:
        """Forward step x_{i+1} = x_i + f_i + G_i z with f_i = c·x: returns (c, G) = (√(1−β_i) − 1, √β_i)."""
        beta = self.discrete_beta(t, N)
        return (1 - beta).sqrt() - 1, beta.sqrt()

    def ancestral(self, t: Tensor, N: int) -> tuple[Tensor, Tensor, Tensor]:
        """DDPM ancestral step x_mean = (x + β_i s)/√(1−β_i), x = x_mean + √β_i z: (x coef, s coef, noise std)."""
        beta = self.discrete_beta(t, N)
        r = (1 - beta).rsqrt()
        return r, beta * r, beta.sqrt()

    def langevin_alpha(self, t: Tensor, N: int) -> Tensor:
        """α_i = 1 − β_i (the single-step α, not ᾱ, as score_sde's Langevin corrector)."""
        return 1 - self.discrete_beta(t, N)


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP: dx = −½ β(t) x dt + √(β(t)(1 − e^{−2 β_min t − (β_max − β_min) t²})) dW.

    Marginal: α_t = e^{lmc(t)} and σ_t = 1 − e^{2 lmc(t)} (no square root: this is the std).
    score_sde has no discrete table for sub-VP: its reverse diffusion is Euler–Maruyama with dt = T/N,
    it refuses ancestral sampling, and its Langevin corrector crashes (issue #8). scorebench uses the
    VP table's α_i = 1 − β_i in the Langevin corrector, and refuses ancestral sampling (no
    ``ancestral``).
    """

    kind = "subvp"

    def diffusion(self, t: Tensor) -> Tensor:
        discount = -torch.expm1(-2 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
        return (self.beta(t) * discount).sqrt()

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        lmc = self.log_mean_coeff(t)
        return lmc.exp(), -torch.expm1(2 * lmc)

    def marginal_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α̇_t, σ̇_t): α̇ = −½ β(t) α, σ̇ = −2 α α̇ (σ = 1 − α²)."""
        alpha = self.marginal(t)[0]
        dalpha = -0.5 * self.beta(t) * alpha
        return dalpha, -2 * alpha * dalpha

    def inverse_sigma(self, sigma: Tensor) -> Tensor:
        target = -0.5 * torch.log1p(-sigma)
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return (-b + (b * b + 4 * a * target).sqrt()) / (2 * a)

    def inverse_ve_sigma(self, sigma_ve: Tensor) -> Tensor:
        """t such that σ_t / α_t = 1/α − α = sigma_ve: −lmc = asinh(σ_ve / 2)."""
        return self._time_of_lmc(torch.asinh(0.5 * sigma_ve))

    def discretize(self, t: Tensor, N: int) -> tuple[Tensor, Tensor]:
        """Euler–Maruyama with dt = T/N (score_sde's base ``discretize``)."""
        dt = self.T / N
        return self.drift_coef(t) * dt, self.diffusion(t) * math.sqrt(dt)

    ancestral = None  # type: ignore[assignment]  # refused: score_sde defines no sub-VP ancestral step


@dataclass(frozen=True)
class VESDE(_Base):
    """Variance exploding: dx = σ(t) √(2 ln(σ_max/σ_min)) dW, σ(t) = σ_min (σ_max/σ_min)^t.

    Marginal: α_t = 1, σ_t = σ(t) — score_sde's convention, which keeps σ_min at t = 0 (the paper's
    kernel variance is σ(t)² − σ(0)²); training, sampling and the exact scores here all use it.
    Prior N(0, σ(T)² I) (σ_max at T = 1, as score_sde).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    eps: float = 1e-5
    kind = "ve"

    def __post_init__(self) -> None:
        self._check()
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"VESDE: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self.sigma(t)

    def marginal_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α̇_t, σ̇_t) = (0, σ(t) ln(σ_max/σ_min))."""
        return torch.zeros_like(t), self.sigma(t) * math.log(self.sigma_max / self.sigma_min)

    def inverse_sigma(self, sigma: Tensor) -> Tensor:
        return torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def inverse_ve_sigma(self, sigma_ve: Tensor) -> Tensor:
        """t such that σ_t = sigma_ve (α_t = 1); 0 below σ_min = σ(0)."""
        return self.inverse_sigma(sigma_ve).clamp(min=0.0)

    def prior_std(self) -> float:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** self.T

    def discrete_sigmas(self, t: Tensor, N: int) -> tuple[Tensor, Tensor]:
        """(σ_i, σ_{i−1}) of score_sde's SMLD table, σ_{−1} := 0, [B] each."""
        i = self.index(t, N)
        sigma_i = self.sigma(i.to(t.dtype) * self.T / (N - 1))
        prev = self.sigma((i - 1).clamp(min=0).to(t.dtype) * self.T / (N - 1))
        return sigma_i, torch.where(i > 0, prev, torch.zeros_like(prev))

    def discretize(self, t: Tensor, N: int) -> tuple[Tensor, Tensor]:
        """SMLD step: (0, √(σ_i² − σ_{i−1}²))."""
        sigma_i, sigma_prev = self.discrete_sigmas(t, N)
        return torch.zeros_like(t), (sigma_i**2 - sigma_prev**2).sqrt()

    def ancestral(self, t: Tensor, N: int) -> tuple[Tensor, Tensor, Tensor]:
        """SMLD ancestral step: x_mean = x + (σ_i² − σ_{i−1}²) s, noise std √(σ_{i−1}²(σ_i² − σ_{i−1}²)/σ_i²)."""
        sigma_i, sigma_prev = self.discrete_sigmas(t, N)
        v = sigma_i**2 - sigma_prev**2
        return torch.ones_like(t), v, (sigma_prev**2 * v / sigma_i**2).sqrt()

    def langevin_alpha(self, t: Tensor, N: int) -> Tensor:
        return torch.ones_like(t)


SDES: dict[str, type] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine": CosinePath, "flow": FlowPath,
                         "tabulated": TabulatedPath}


def make_sde(kind: str, **params) -> SDE:
    """Build a path by name (a key of ``SDES``: 'vp', 'subvp', 've', 'cosine', 'flow', 'tabulated');
    unknown names or parameters, or parameters outside their range, raise ValueError."""
    if kind not in SDES:
        raise ValueError(f"unknown sde kind {kind!r}; expected one of: {', '.join(SDES)}")
    cls = SDES[kind]
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for sde {kind!r}; expected: {', '.join(sorted(fields))}")
    return cls(**params)


def sde_to_dict(sde: SDE) -> dict:
    """Plain-dict form {'kind': ..., **params} (inverse of make_sde)."""
    return {"kind": sde.kind, **{k: getattr(sde, k) for k in sde.__dataclass_fields__}}
