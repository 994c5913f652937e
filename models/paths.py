"""Gaussian noise paths x_t = α_t x₀ + σ_t ε: one description, the formulas every sampler needs.

A path is a frozen dataclass giving the marginal coefficients (α_t, σ_t) and their time derivatives
(α̇_t, σ̇_t) at float64 times t [B]. Everything else is derived here once, generically:

* half log-SNR λ_t = log(α_t/σ_t) and its inverse t(λ) (a closed form where the class has one, else
  bisection in float64 on the path's time domain);
* the drift and diffusion of the forward SDE dx = f(t) x dt + g(t) dW with the same marginals
  (Kingma et al. 2021, App. A; Lu et al. 2022, Eq. 2.2):

      f(t) = α̇_t / α_t,     g²(t) = dσ_t²/dt − 2 f(t) σ_t² = 2 σ_t σ̇_t − 2 f(t) σ_t²;

* the exact forward transition between two times, and the Gaussian prior at T, N(0, σ_T² I).

VE, VP and sub-VP (:mod:`models.sde`) are instances that keep their closed forms (bit for bit those of
score_sde). This module adds the cosine schedule, flow matching (with SD3/FLUX's time shift) and a
tabulated ᾱ; docs/paths.md has their formulas, references and which samplers run on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor

__all__ = ["GaussianPath", "CosinePath", "FlowPath", "TabulatedPath", "expand_like", "cosine_alphas_cumprod"]

_BISECTION_STEPS = 56  # halves [t_lo, t_hi] to below float64 resolution (2^-56)


def expand_like(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample vector [B] to broadcast against x [B, ...], in x's dtype."""
    return v.to(dtype=x.dtype).reshape(v.shape + (1,) * (x.dim() - v.dim()))


def _f64(t) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class GaussianPath:
    """Generic formulas of a Gaussian path; a subclass gives ``marginal`` and ``marginal_derivative``.

    Class attributes: ``kind`` (registry name), ``t_min``/``t_max`` (the time domain the formulas
    hold on; ``t_max`` None: unbounded, as VE/VP/sub-VP whose formulas extend beyond T).
    Instance fields every path has: ``T`` (where sampling starts) and ``eps`` (where it stops).
    """

    T: float
    eps: float
    kind: ClassVar[str] = "path"
    t_min: ClassVar[float] = 0.0
    t_max: ClassVar[float | None] = None

    # ---- validation --------------------------------------------------------------------------
    def _check(self) -> None:
        """T in (eps, t_max] and eps in (t_min, T): ValueError naming the field and its range."""
        name = type(self).__name__
        hi = self._t_hi()
        if not (isinstance(self.T, int | float) and math.isfinite(self.T) and 0 < self.T <= hi):
            rng = f"(0, {hi:g}]" if math.isfinite(hi) else "(0, inf)"
            raise ValueError(f"{name}: T must be in {rng}, got {self.T}")
        if not (isinstance(self.eps, int | float) and self.t_min <= self.eps < self.T and self.eps > 0):
            raise ValueError(f"{name}: eps must be in ({self.t_min:g}, T={self.T}), got {self.eps}")

    def _t_hi(self) -> float:
        return math.inf if self.t_max is None else float(self.t_max)

    # ---- what a subclass gives ---------------------------------------------------------------
    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t), both [B]."""
        raise NotImplementedError

    def marginal_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α̇_t, σ̇_t) = d/dt (α_t, σ_t), both [B]."""
        raise NotImplementedError

    # ---- derived -----------------------------------------------------------------------------
    @cached_property
    def alpha_zero_at_T(self) -> bool:
        """Whether α_T = 0 (λ_T = −inf, f(T) = −inf: flow matching at T = 1), computed once."""
        return bool(self.marginal(torch.tensor([float(self.T)], dtype=torch.float64))[0][0] == 0)

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """score_sde's alias: (mean α_t·x0 [B, ...], std σ_t [B])."""
        alpha, sigma = self.marginal(t)
        return expand_like(alpha, x0) * x0, sigma

    def log_snr(self, t: Tensor) -> Tensor:
        """Half log-SNR λ_t = log(α_t/σ_t) = −log(σ_t/α_t), [B] float64 (−inf where α_t = 0)."""
        alpha, sigma = self.marginal(_f64(t))
        return -torch.log(sigma / alpha)

    def time_of_log_snr(self, lam: Tensor) -> Tensor:
        """t with λ_t = ``lam`` [B] (inverse of :meth:`log_snr`), float64."""
        return self.inverse_ve_sigma(torch.exp(-_f64(lam)))

    def inverse_ve_sigma(self, sigma_ve: Tensor) -> Tensor:
        """t with σ_t/α_t = ``sigma_ve`` [B], by bisection in float64 on the path's domain (values below
        σ_ve(t_min) give t_min; above σ_ve(t_max) give t_max; unbounded paths grow the bracket beyond T)."""
        return self._bisect_ve_sigma(_f64(sigma_ve))

    def _bisect_ve_sigma(self, sigma: Tensor) -> Tensor:
        def ve(t):
            alpha, s = self.marginal(t)
            return s / alpha

        hi_cap = self._t_hi()
        lo = torch.full_like(sigma, float(self.t_min))
        hi = torch.full_like(sigma, float(self.T))
        for _ in range(60):  # grow the bracket (t ↦ σ_ve(t) is increasing) up to t_max
            short = (ve(hi) < sigma) & (hi < hi_cap)
            if not bool(short.any()):
                break
            hi = torch.where(short, (2 * hi).clamp(max=hi_cap), hi)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            below = ve(mid) < sigma
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(α_t, σ_t, α̇_t, σ̇_t), [B] each (one evaluation of the path where a subclass can share it)."""
        return (*self.marginal(t), *self.marginal_derivative(t))

    def drift_coef(self, t: Tensor) -> Tensor:
        """f(t) = α̇_t/α_t, [B] (−inf where α_t = 0 and α̇_t < 0)."""
        alpha, _, dalpha, _ = self.coefficients(t)
        return dalpha / alpha

    def diffusion_squared(self, t: Tensor) -> Tensor:
        """g²(t) = 2 σ_t σ̇_t − 2 f(t) σ_t², [B]."""
        alpha, sigma, dalpha, dsigma = self.coefficients(t)
        return 2 * sigma * dsigma - 2 * (dalpha / alpha) * sigma**2

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t) [B]."""
        return self.diffusion_squared(t).sqrt()

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f(x, t) = f(t)·x, [B, ...]."""
        return expand_like(self.drift_coef(t), x) * x

    def transition(self, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        """Exact forward transition t_next → t (t_next < t): x_t = a·x_{t_next} + √v·z. Returns (a, v), [B]."""
        alpha_t, sigma_t = self.marginal(t)
        alpha_s, sigma_s = self.marginal(t_next)
        a = alpha_t / alpha_s
        return a, sigma_t**2 - a**2 * sigma_s**2

    def prior_std(self) -> float:
        """Std of the Gaussian prior N(0, σ_T² I) at T."""
        return float(self.marginal(torch.tensor([float(self.T)], dtype=torch.float64))[1])

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std² I) summed over all but the batch dimension, [B] (score_sde's prior_logp)."""
        s = self.prior_std()
        d = z[0].numel()
        return -0.5 * d * math.log(2 * math.pi * s * s) - z.flatten(1).pow(2).sum(1) / (2 * s * s)


# ---- cosine ------------------------------------------------------------------------------------
def _cosine_t_max(s: float, beta_max: float = 999.0) -> float:
    """The t where the cosine schedule's β(t) = dlog(1/ᾱ)/dt reaches ``beta_max`` (DPM-Solver's
    ``cosine_t_max``): β(t) = π tan(θ)/(1 + s), θ = (t + s)/(1 + s)·π/2."""
    return math.atan(beta_max * (1 + s) / math.pi) * 2 * (1 + s) / math.pi - s


@dataclass(frozen=True)
class CosinePath(GaussianPath):
    """The cosine schedule of improved DDPM (Nichol & Dhariwal 2021, Eq. 17), in continuous time:

        ᾱ(t) = cos²(θ_t)/cos²(θ_0),  θ_t = (t + s)/(1 + s)·π/2,  α_t = √ᾱ(t), σ_t = √(1 − ᾱ(t)).

    Clipping near t = 1 (where α → 0 and λ → −∞): the time domain ends at DPM-Solver's
    ``cosine_t_max`` (β(t) ≤ 999, the continuous counterpart of Nichol & Dhariwal's β_t ≤ 0.999;
    t_max ≈ 0.99800, λ(t_max) ≈ −5.77), and T defaults to DPM-Solver's 0.9946 (Lu et al. 2022, code
    ``NoiseScheduleVP('cosine')``: λ(T) ≈ −4.78). t(λ) is closed-form (θ = arccos(α cos θ_0)).
    """

    s: float = 0.008
    T: float = 0.9946
    eps: float = 1e-3
    kind = "cosine"
    t_max = _cosine_t_max(0.008)

    def __post_init__(self) -> None:
        if not (isinstance(self.s, int | float) and 0 < self.s < 1):
            raise ValueError(f"CosinePath: s must be in (0, 1), got {self.s!r}")
        self._check()

    def _t_hi(self) -> float:
        return _cosine_t_max(self.s)

    def _theta(self, t: Tensor) -> Tensor:
        return (_f64(t) + self.s) / (1 + self.s) * (math.pi / 2)

    @property
    def _cos_theta0(self) -> float:
        return math.cos(self.s / (1 + self.s) * math.pi / 2)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha = torch.cos(self._theta(t)) / self._cos_theta0
        return alpha, (1 - alpha**2).sqrt()

    def marginal_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = self.marginal(t)
        dalpha = -torch.sin(self._theta(t)) * (math.pi / 2 / (1 + self.s)) / self._cos_theta0
        return dalpha, -alpha * dalpha / sigma

    def inverse_ve_sigma(self, sigma_ve: Tensor) -> Tensor:
        """t with σ_t/α_t = sigma_ve: α = 1/√(1 + σ_ve²), θ = arccos(α cos θ_0), clamped to [0, t_max]."""
        alpha = torch.rsqrt(1 + _f64(sigma_ve) ** 2)
        theta = torch.arccos(alpha * self._cos_theta0)
        return (theta * 2 * (1 + self.s) / math.pi - self.s).clamp(0.0, self._t_hi())


# ---- flow matching / rectified flow ------------------------------------------------------------
@dataclass(frozen=True)
class FlowPath(GaussianPath):
    """Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): α_t = 1 − τ, σ_t = τ with
    τ = shift·t / (1 + (shift − 1) t), the time shift of SD3 (Esser et al. 2024, Eq. 23) and FLUX
    (``shift`` = 1: none). At t = 1, α = 0: λ = −inf, f = −inf and g² = inf, so only samplers that
    can start from pure noise run at T = 1 (docs/paths.md).
    """

    shift: float = 1.0
    T: float = 1.0
    eps: float = 1e-3
    kind = "flow"
    t_max = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.shift, int | float) and not isinstance(self.shift, bool)
                and math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"FlowPath: shift must be a number > 0, got {self.shift!r}")
        self._check()

    def _tau(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(τ, dτ/dt)."""
        t = _f64(t)
        den = 1 + (self.shift - 1) * t
        return self.shift * t / den, self.shift / den**2

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        tau, _ = self._tau(t)
        return 1 - tau, tau

    def marginal_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        _, dtau = self._tau(t)
        return -dtau, dtau

    def inverse_ve_sigma(self, sigma_ve: Tensor) -> Tensor:
        """τ = σ_ve/(1 + σ_ve) (1 at σ_ve = inf), then t = τ/(shift − (shift − 1) τ)."""
        s = _f64(sigma_ve)
        tau = torch.where(torch.isinf(s), torch.ones_like(s), s / (1 + s))
        return tau / (self.shift - (self.shift - 1) * tau)


# ---- tabulated ᾱ -------------------------------------------------------------------------------
def cosine_alphas_cumprod(n: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> tuple[float, ...]:
    """The discrete cosine table of Nichol & Dhariwal 2021 (Eq. 17 with β_t clipped at 0.999, as their
    code and diffusers' ``betas_for_alpha_bar``): ᾱ_i = Π_{j≤i} (1 − β_j), β_j = min(1 − ᾱ(j+1)/ᾱ(j), max_beta)
    with ᾱ(·) at j/n."""
    f = [math.cos((i / n + s) / (1 + s) * math.pi / 2) ** 2 for i in range(n + 1)]
    out, acc = [], 1.0
    for i in range(n):
        acc *= 1 - min(1 - f[i + 1] / f[i], max_beta)
        out.append(acc)
    return tuple(out)


@dataclass(frozen=True)
class TabulatedPath(GaussianPath):
    """A path given by a table ᾱ_0 > … > ᾱ_{N−1} in (0, 1] (what discrete-time DDPM models are trained
    on), at the times t_i = (i + 1)/N (DPM-Solver's discrete-time convention, Lu et al. 2022, App.:
    ``t_array = linspace(0, 1, N + 1)[1:]``; the time domain is [1/N, 1]).

    Interpolation (declared): log ᾱ(t) is the monotone piecewise-cubic Hermite interpolant (PCHIP,
    Fritsch & Carlson 1980; the knot slopes of SciPy's ``PchipInterpolator``) through (t_i, log ᾱ_i):
    continuous first derivative, monotone (so λ is strictly decreasing), exact on the table. α_t =
    exp(½ log ᾱ), σ_t = √(1 − ᾱ); outside [t_0, t_{N−1}] the ends are held. t(λ) by Newton's method
    inside the knot interval holding λ.
    """

    alphas_cumprod: tuple = ()
    T: float = 1.0
    eps: float | None = None  # default: t_0 = 1/N (the table's first time)
    kind = "tabulated"
    t_max = 1.0

    def __post_init__(self) -> None:
        table = self.alphas_cumprod
        if isinstance(table, Tensor):
            table = table.tolist()
        try:
            table = tuple(float(a) for a in table)
        except (TypeError, ValueError):
            raise ValueError(f"TabulatedPath: alphas_cumprod must be a list of numbers, got {self.alphas_cumprod!r}"
                             ) from None
        object.__setattr__(self, "alphas_cumprod", table)
        n = len(table)
        if n < 2:
            raise ValueError(f"TabulatedPath: alphas_cumprod needs at least 2 entries, got {n}")
        bad = [i for i, a in enumerate(table) if not (math.isfinite(a) and 0 < a <= 1)]
        if bad:
            raise ValueError(f"TabulatedPath: alphas_cumprod[{bad[0]}]={table[bad[0]]!r} is outside (0, 1]")
        up = [i for i in range(1, n) if not table[i] < table[i - 1]]
        if up:
            raise ValueError(f"TabulatedPath: alphas_cumprod must decrease strictly (λ monotone); entry {up[0]} "
                             f"({table[up[0]]!r}) is not below entry {up[0] - 1} ({table[up[0] - 1]!r})")
        if self.eps is None:
            object.__setattr__(self, "eps", self.t_min_of_table)
        t0 = self.t_min_of_table
        if isinstance(self.eps, int | float) and self.eps < t0 * (1 - 1e-12):
            raise ValueError(f"TabulatedPath: eps must be in [t_0={t0:g}, T) (the table's first time is 1/N), "
                             f"got {self.eps}")
        if table[0] == 1.0 and isinstance(self.eps, int | float) and self.eps <= t0:
            raise ValueError(f"TabulatedPath: eps must be above t_0={t0:g} where ᾱ_0 = 1 (σ = 0), got {self.eps}")
        self._check()

    @property
    def t_min_of_table(self) -> float:
        return 1.0 / len(self.alphas_cumprod)

    @cached_property
    def _knots(self) -> tuple[Tensor, Tensor]:
        """(t_i [N], polynomial coefficients [N − 1, 4]): on [t_k, t_{k+1}], with w = t − t_k,
        log ᾱ(t) = c0 + c1 w + c2 w² + c3 w³, the Hermite cubic through (t_k, y_k, d_k), (t_{k+1}, y_{k+1},
        d_{k+1}) with the PCHIP slopes d (SciPy's ``PchipInterpolator``), float64."""
        from scipy.interpolate import PchipInterpolator

        n = len(self.alphas_cumprod)
        t = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)[1:]
        y = torch.log(torch.tensor(self.alphas_cumprod, dtype=torch.float64))
        d = torch.from_numpy(PchipInterpolator(t.numpy(), y.numpy()).derivative()(t.numpy())).to(torch.float64)
        h = t[1:] - t[:-1]
        slope = (y[1:] - y[:-1]) / h
        c2 = (3 * slope - 2 * d[:-1] - d[1:]) / h
        c3 = (d[:-1] + d[1:] - 2 * slope) / h**2
        return t, torch.stack([y[:-1], d[:-1], c2, c3], dim=1)

    def log_alphas_cumprod(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(log ᾱ(t), d log ᾱ/dt), [B] float64 (the Hermite cubic on t's interval; ends held)."""
        t = _f64(t)
        knots_t, coef = (v.to(device=t.device) for v in self._knots)
        t = t.clamp(1.0 / len(self.alphas_cumprod), 1.0)
        k = (torch.searchsorted(knots_t, t, right=True) - 1).clamp(0, len(knots_t) - 2)
        c = coef[k]  # [..., 4]
        w = t - knots_t[k]
        c0, c1, c2, c3 = c.unbind(-1)
        return ((c3 * w + c2) * w + c1) * w + c0, (3 * c3 * w + 2 * c2) * w + c1

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        la, _ = self.log_alphas_cumprod(t)
        return torch.exp(0.5 * la), (-torch.expm1(la)).sqrt()

    def marginal_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.coefficients(t)[2:]

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        la, dla = self.log_alphas_cumprod(t)
        alpha, sigma = torch.exp(0.5 * la), (-torch.expm1(la)).sqrt()
        dalpha = 0.5 * alpha * dla
        return alpha, sigma, dalpha, -alpha * dalpha / sigma

    @cached_property
    def _knot_log_snr(self) -> Tensor:
        """λ at the table's times (decreasing), float64 [N]."""
        a = torch.tensor(self.alphas_cumprod, dtype=torch.float64)
        return 0.5 * (torch.log(a) - torch.log1p(-a))

    def time_of_log_snr(self, lam: Tensor) -> Tensor:
        """t with λ_t = ``lam`` [B]: the knot interval holding it, then Newton's method on the cubic
        (from the linear interpolation in λ, kept inside the interval; 8 iterations reach float64
        round-off). Outside [λ_{N−1}, λ_0] the end times."""
        lam = _f64(lam)
        knots_t, knots_lam = self._knots[0].to(lam.device), self._knot_log_snr.to(lam.device)
        n = len(knots_t)
        lam_c = lam.clamp(float(knots_lam[-1]), float(knots_lam[0]))
        # knots_lam decreases: k with λ_k ≥ λ > λ_{k+1}
        k = (n - 1 - torch.searchsorted(knots_lam.flip(0), lam_c, right=False)).clamp(0, n - 2)
        lo, hi = knots_t[k], knots_t[k + 1]
        u = (knots_lam[k] - lam_c) / (knots_lam[k] - knots_lam[k + 1])
        t = lo + u * (hi - lo)
        for _ in range(8):
            alpha, sigma, dalpha, dsigma = self.coefficients(t)
            dlam = dalpha / alpha - dsigma / sigma
            t = (t - (self.log_snr(t) - lam_c) / dlam).clamp(lo, hi)
        return t

    def inverse_ve_sigma(self, sigma_ve: Tensor) -> Tensor:
        return self.time_of_log_snr(-torch.log(_f64(sigma_ve)))
