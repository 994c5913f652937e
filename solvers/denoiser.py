"""The denoiser view of every score model, and the time changes that samplers in σ or λ space need.

Any SDE with marginal x_t | x_0 ~ N(α_t x_0, σ_t² I) is, after the change of variables
x_ve = x / α_t, a variance-exploding diffusion with noise level σ_ve = σ_t / α_t (Karras et al. 2022,
Eq. 4 with s(t) = α_t). Its ideal denoiser (Karras et al. 2022, Eq. 3) is

    D(x_ve; σ_ve) = x_ve + σ_ve² ∇_{x_ve} log p(x_ve; σ_ve) = (x + σ_t² s(x, t)) / α_t,   x = α_t x_ve,

so one call of D is one counted score call. The same quantity, seen in the original coordinates, is
the *data prediction* x̂₀(x, t) of DPM-Solver++ and UniPC; the *noise prediction* of DDIM and
DPM-Solver is ε̂(x, t) = −σ_t s(x, t). The half log-SNR is λ_t = log(α_t / σ_t) = −log σ_ve.

Going back from σ_ve (or λ) to t needs the inverse of t ↦ σ_t / α_t, which is increasing on every
Gaussian path (:mod:`models.paths`). :func:`time_of_sigma` uses the path's ``inverse_ve_sigma`` (a
closed form for VP: −lmc = ½ log(1 + σ_ve²); sub-VP: −lmc = asinh(σ_ve / 2); VE: ``inverse_sigma``;
cosine and flow; bisection for a tabulated ᾱ) and falls back on bisection in float64 for any other
SDE with ``marginal``.

Models that predict the data or the noise directly may also give ``data_and_noise(x, t) -> (x̂₀, ε̂)`` (one
network call, counted by :class:`models.score.CountingScore`): :func:`denoised` then takes both from
it, which stays finite where α_t = 0 (flow matching at t = 1), where x̂₀ = (x + σ² s)/α is 0/0.
Models without it (every score network) get exactly the formulas above.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem

__all__ = ["ve_sigma", "time_of_sigma", "time_of_sigma_bisection", "log_snr", "time_of_log_snr", "denoised",
           "data_prediction", "noise_prediction", "alpha_vanishes_at_T", "Denoiser", "phi"]

_BISECTION_STEPS = 56  # halves [0, t_hi] to below float64 resolution (2^-56 T)


def ve_sigma(sde, t: Tensor) -> Tensor:
    """σ_ve(t) = σ_t / α_t, [B] float64."""
    alpha, sigma = sde.marginal(t.to(torch.float64))
    return sigma / alpha


def log_snr(sde, t: Tensor) -> Tensor:
    """Half log-SNR λ_t = log(α_t / σ_t) = −log σ_ve(t), [B] float64 (the path's ``log_snr``)."""
    own = getattr(sde, "log_snr", None)
    return own(t) if own is not None else -torch.log(ve_sigma(sde, t))


def alpha_vanishes_at_T(sde) -> bool:
    """Whether α_T = 0 (λ_T = −inf: flow matching at T = 1); a host-side check on the path alone."""
    known = getattr(sde, "alpha_zero_at_T", None)
    if known is not None:
        return known
    return bool(sde.marginal(torch.tensor([float(sde.T)], dtype=torch.float64))[0][0] == 0)


def time_of_sigma(sde, sigma: Tensor) -> Tensor:
    """t such that σ_t / α_t = ``sigma`` [B], float64: the SDE's ``inverse_ve_sigma`` where it has
    one, else bisection (:func:`time_of_sigma_bisection`).

    Values below σ_ve(0) give t = 0. Values above σ_ve(T) give t > T (as EDM's churn can ask for
    σ̂ > σ_max); the score is then evaluated beyond T.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    inverse = getattr(sde, "inverse_ve_sigma", None)
    return inverse(sigma) if inverse is not None else time_of_sigma_bisection(sde, sigma)


def time_of_sigma_bisection(sde, sigma: Tensor) -> Tensor:
    """:func:`time_of_sigma` by bisection in float64 (any SDE with ``marginal``; the bracket grows
    beyond T until it holds ``sigma``)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    lo = torch.zeros_like(sigma)
    hi = torch.full_like(sigma, float(sde.T))
    for _ in range(60):  # grow the bracket (t ↦ σ_ve(t) is increasing and unbounded)
        short = ve_sigma(sde, hi) < sigma
        if not bool(short.any()):
            break
        hi = torch.where(short, 2 * hi, hi)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        below = ve_sigma(sde, mid) < sigma
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def time_of_log_snr(sde, lam: Tensor) -> Tensor:
    """t such that λ_t = ``lam`` [B] (inverse of :func:`log_snr`; the path's ``time_of_log_snr``)."""
    own = getattr(sde, "time_of_log_snr", None)
    if own is not None:
        return own(lam)
    return time_of_sigma(sde, torch.exp(-torch.as_tensor(lam, dtype=torch.float64)))


def denoised(problem: Problem, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(x̂₀, ε̂) at (x, t), [B, ...] each, from ONE counted model call: the model's ``data_and_noise`` where it
    has one, else from the score: x̂₀ = (x + σ_t² s)/α_t, ε̂ = −σ_t s."""
    score = problem.score
    if score.has_data_and_noise:
        return score.data_and_noise(x, t)
    alpha, sigma = problem.marginal(t)
    s = score(x, t)
    return (x + expand_like(sigma**2, x) * s) / expand_like(alpha, x), -expand_like(sigma, x) * s


def data_prediction(problem: Problem, x: Tensor, t: Tensor) -> Tensor:
    """x̂₀(x, t) = (x + σ_t² s(x, t)) / α_t, [B, ...] in x's dtype (one call; as :func:`denoised`)."""
    score = problem.score
    if score.has_data_and_noise:
        return score.data_and_noise(x, t)[0]
    alpha, sigma = problem.marginal(t)
    return (x + expand_like(sigma**2, x) * score(x, t)) / expand_like(alpha, x)


def noise_prediction(problem: Problem, x: Tensor, t: Tensor) -> Tensor:
    """ε̂(x, t) = −σ_t s(x, t), [B, ...] (one call; as :func:`denoised`)."""
    score = problem.score
    if score.has_data_and_noise:
        return score.data_and_noise(x, t)[1]
    sigma = problem.marginal(t)[1]
    return -expand_like(sigma, x) * score(x, t)


class Denoiser:
    """D(x_ve; σ) of any score model, in the variance-exploding parameterisation of Karras et al. 2022.

    Args:
        problem: the problem whose (counted) score is wrapped; one call of D is one score call.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.sde = problem.sde

    def sigma(self, t: Tensor) -> Tensor:
        """σ_ve(t), [B] float64 (as :func:`ve_sigma`)."""
        alpha, sigma = self.problem.marginal(t.to(torch.float64))
        return sigma / alpha

    def time(self, sigma: Tensor) -> Tensor:
        """t(σ_ve), [B]."""
        return time_of_sigma(self.sde, sigma)

    def scale(self, t: Tensor) -> Tensor:
        """α_t [B]: x = α_t x_ve."""
        return self.problem.marginal(t.to(torch.float64))[0]

    def to_ve(self, x: Tensor, t: Tensor) -> Tensor:
        """x_ve = x / α_t."""
        return x / expand_like(self.scale(t), x)

    def from_ve(self, x_ve: Tensor, t: Tensor) -> Tensor:
        """x = α_t x_ve."""
        return x_ve * expand_like(self.scale(t), x_ve)

    def __call__(self, x_ve: Tensor, sigma: Tensor, t: Tensor | None = None) -> Tensor:
        """D(x_ve; σ) [B, ...]. Pass ``t`` (= t(σ)) when it is known, to skip the inversion."""
        t = self.time(sigma) if t is None else t
        return data_prediction(self.problem, self.from_ve(x_ve, t), t)


def phi(k: int, z: Tensor) -> Tensor:
    """φ_k(z) = ∫₀¹ e^{(1−θ) z} θ^{k−1} / (k−1)! dθ, for k ≥ 1 (float64; series near z = 0).

    φ₁(z) = (e^z − 1)/z and φ_{k+1}(z) = (φ_k(z) − 1/k!)/z: the weights of the exponential integrators
    (DPM-Solver, DPM-Solver++, UniPC): ∫₀^h e^{(h−u)·c} u^k/k! du = h^{k+1} φ_{k+1}(c h).
    """
    z = z.to(torch.float64)
    small = z.abs() < 1e-2
    zs = torch.where(small, torch.ones_like(z), z)  # avoid 0/0 on the branch that is not used
    out = torch.expm1(zs) / zs
    for j in range(1, k):
        out = (out - 1.0 / math.factorial(j)) / zs
    # Taylor series φ_k(z) = Σ_n z^n / (n + k)! for |z| < 1e-2 (6 terms, Horner: relative error < 1e-15).
    series = torch.full_like(z, 1.0 / math.factorial(5 + k))
    for n in range(4, -1, -1):
        series = series * z + 1.0 / math.factorial(n + k)
    return torch.where(small, series, out)
