"""Exact-score Gaussian mixtures: ground truth for every solver, likelihood and metric test.

Data p₀ = Σ_k w_k N(μ_k, diag(s_k²)) on any sample shape (2-D toys up to image shapes), with
isotropic (s_k scalar) or diagonal (s_k of the sample shape) covariances. Under any linear SDE with
marginal x_t | x_0 ~ N(α_t x_0, σ_t² I) the diffused density is again a mixture,

    p_t = Σ_k w_k N(α_t μ_k, diag(α_t² s_k² + σ_t²)),

so the score, the log-density at any t (t = 0 and the terminal T included) and exact samples are
all available in closed form. Everything is computed in float64 and returned in the input's dtype.

:class:`ClassConditionalMixture` is the class-conditional version: class k is component k, so the
score of a sample asked for class k is the exact score of N(α_t μ_k, α_t² s_k² + σ_t²); the null class K
(:meth:`ClassConditionalMixture.null_condition`) has the full mixture's score, so classifier-free guidance
on it has an exact answer: (1 − w) ∇log p_t(x) + w ∇log p_t(x | k).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from models.score import class_indices
from models.sde import SDE, expand_like

__all__ = ["GaussianMixture", "ClassConditionalMixture"]


class GaussianMixture:
    """A Gaussian mixture seen as a score model of the given SDE (exact score).

    Args:
        means: [K, *shape] component means.
        stds: [K] (isotropic) or [K, *shape] (diagonal) component standard deviations.
        weights: [K] mixture weights (normalised here); default uniform.
        sde: the forward SDE whose marginals define the score at time t.
        data_range: the range data are expected in (for metrics and plots only).
    """

    def __init__(
        self,
        means: Tensor,
        stds: Tensor | float,
        sde: SDE,
        weights: Tensor | None = None,
        data_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        K = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.dim() == 0:
            stds = stds.expand(K)
        if stds.shape not in ((K,), means.shape):
            raise ValueError(f"stds must have shape [K]={[K]} or {list(means.shape)}, got {list(stds.shape)}")
        if (stds <= 0).any():
            raise ValueError("stds must be positive")
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64
        )
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum")
        self.means = means
        self.shape = tuple(means.shape[1:])
        self.dim = means[0].numel()
        # Per-component variance of the flattened data, [K, D].
        self.var0 = (stds.reshape(K, -1) ** 2).expand(K, self.dim).contiguous()
        self.stds = stds
        self.weights = weights / weights.sum()
        self.sde = sde
        self.data_range = tuple(data_range)

    # ---- the diffused mixture -------------------------------------------------------------
    def _components(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Flattened means [B, K, D] and variances [B, K, D] of p_t, and α_t [B]."""
        alpha, sigma = self.sde.marginal(t.to(torch.float64))
        a = alpha[:, None, None]
        mu = a * self.means.reshape(1, -1, self.dim).to(t.device)
        var = a**2 * self.var0[None].to(t.device) + sigma[:, None, None] ** 2
        return mu, var, alpha

    def _log_components(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        xf = x.reshape(x.shape[0], 1, -1).to(torch.float64)
        mu, var, _ = self._components(t)
        diff = xf - mu
        logn = -0.5 * ((diff**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return logn + self.weights.log().to(x.device), diff, var

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact score ∇ log p_t(x), [B, *shape], in x's dtype."""
        logj, diff, var = self._log_components(x, t)
        post = torch.softmax(logj, dim=1)  # [B, K] posterior component weights
        score = -(post[..., None] * diff / var).sum(1)
        return score.reshape(x.shape).to(x.dtype)

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Exact log p_t(x), [B] float64 (t = 0 gives the data density)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        return torch.logsumexp(self._log_components(x, t)[0], dim=1)

    def log_prob_data(self, x: Tensor) -> Tensor:
        """Exact log p_0(x) of the undiffused data mixture (no σ_min smoothing), [B] float64."""
        xf = x.reshape(x.shape[0], 1, -1).to(torch.float64)
        diff = xf - self.means.reshape(1, -1, self.dim).to(x.device)
        var = self.var0[None].to(x.device)
        logn = -0.5 * ((diff**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return torch.logsumexp(logn + self.weights.log().to(x.device), dim=1)

    def data_and_noise(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) = (E[x₀ | x_t = x], E[ε | x_t = x]), [B, *shape] each in x's dtype, finite at α_t = 0.

        Where α_t > 0 these are Tweedie's x̂₀ = (x + σ_t² s)/α_t and ε̂ = −σ_t s, computed with the same
        operations as :func:`solvers.denoiser.denoised` on a score (so samplers give bit for bit the
        numbers they give on the score alone); where α_t = 0, p_t = N(0, σ_t² I) carries no information
        on x₀ and E[x₀ | x] is the data mean.
        """
        alpha, sigma = self.sde.marginal(t)
        s = self(x, t)
        zero = alpha == 0
        safe = torch.where(zero, torch.ones_like(alpha), alpha)
        x0 = (x + expand_like(sigma**2, x) * s) / expand_like(safe, x)
        if bool(zero.any()):
            data_mean = (self.weights[:, None] * self.means.reshape(-1, self.dim)).sum(0).reshape(self.shape)
            x0 = torch.where(expand_like(zero, x).bool(), data_mean.to(x), x0)
        return x0, -expand_like(sigma, x) * s

    def denoise_mean(self, x: Tensor, t: Tensor) -> Tensor:
        """E[x_0 | x_t = x] (Tweedie), [B, *shape]."""
        alpha, sigma = self.sde.marginal(t.to(torch.float64))
        return ((x.to(torch.float64) + expand_like(sigma**2, x).double() * self(x.double(), t)) /
                expand_like(alpha, x).double()).to(x.dtype)

    # ---- exact samples and moments --------------------------------------------------------
    def sample(self, n: int, t: float = 0.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> Tensor:
        """n exact samples of p_t (t = 0: the data), [n, *shape]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        tt = torch.full((n,), float(t), dtype=torch.float64)
        mu, var, _ = self._components(tt)
        idx = torch.arange(n)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        if t == 0.0:
            x = self.means.reshape(-1, self.dim)[k] + self.var0[k].sqrt() * z
        else:
            x = mu[idx, k] + var[idx, k].sqrt() * z
        return x.reshape(n, *self.shape).to(dtype)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample(n, 0.0, generator)

    def mean(self, t: float = 0.0) -> Tensor:
        """Mean of p_t, flattened [D]."""
        alpha = self.sde.marginal(torch.tensor([float(t)], dtype=torch.float64))[0] if t else torch.ones(1)
        return alpha.double() * (self.weights[:, None] * self.means.reshape(-1, self.dim)).sum(0)

    def covariance(self, t: float = 0.0) -> Tensor:
        """Covariance of p_t, flattened [D, D] (law of total covariance)."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        if t:
            alpha, sigma = (v.double() for v in self.sde.marginal(tt))
        else:
            alpha, sigma = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        mu = alpha * self.means.reshape(-1, self.dim)
        m = (self.weights[:, None] * mu).sum(0)
        within = (self.weights[:, None] * (alpha**2 * self.var0 + sigma**2)).sum(0)
        d = mu - m
        return torch.diag(within) + (self.weights[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)

    @classmethod
    def isotropic(cls, sde: SDE, mean: float = 0.3, std: float = 0.5, shape: tuple[int, ...] = (1, 4, 4)):
        """A single Gaussian N(mean, std² I): the linear problem whose probability-flow map is affine."""
        return cls(torch.full((1, *shape), float(mean)), torch.tensor([std]), sde)


class ClassConditionalMixture:
    """A class-conditional exact-score model: class k is component k of ``mixture``.

    Unconditioned it holds no labels and refuses to be called; :meth:`conditioned` ``(labels [B])``
    gives the model whose row i has the exact score of component ``labels[i]`` (the per-sample state
    that follows a solver's row subsets, :func:`models.score.select_rows`). Ground truth for samplers on
    class-conditional models: a sample asked for class k is a sample of component k alone.
    """

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = mixture
        self.sde, self.shape, self.data_range = mixture.sde, mixture.shape, mixture.data_range
        self.label_dim = mixture.means.shape[0]
        self.row_labels: Tensor | None = None

    # The data distribution's exact quantities are the full mixture's (what the exact metrics compare
    # samples with): the distribution of samples whose classes are drawn with the mixture's weights.
    @property
    def means(self) -> Tensor:
        return self.mixture.means

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def mean(self, t: float = 0.0) -> Tensor:
        return self.mixture.mean(t)

    def covariance(self, t: float = 0.0) -> Tensor:
        return self.mixture.covariance(t)

    def log_prob_data(self, x: Tensor) -> Tensor:
        return self.mixture.log_prob_data(x)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.mixture.sample_data(n, generator)

    def component(self, k: int) -> GaussianMixture:
        """Component k alone as a :class:`GaussianMixture` (the unconditional model of class k)."""
        m = self.mixture
        return GaussianMixture(m.means[k : k + 1], m.stds[k : k + 1], m.sde, data_range=m.data_range)

    def null_condition(self, n: int) -> Tensor:
        """n null labels [n]: the class index K (= ``label_dim``), whose score is the full mixture's (the
        unconditional model, what classifier-free guidance's unconditional branch evaluates)."""
        return torch.full((n,), self.label_dim, dtype=torch.int64)

    def conditioned(self, labels: Tensor) -> ClassConditionalMixture:
        """Row i asks for class ``labels[i]`` in 0..K − 1, or for the null class K (the full mixture)."""
        new = ClassConditionalMixture(self.mixture)
        new.row_labels = class_indices(labels, self.label_dim + 1, type(self).__name__)
        return new

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        k = self.row_labels
        if k is None or k.shape[0] != x.shape[0]:
            got = "no class labels" if k is None else f"{k.shape[0]} class labels"
            raise ValueError(f"{type(self).__name__}: {got} for a batch of {x.shape[0]} rows (condition it per "
                             f"batch; a row subset must go through models.score.select_rows)")
        m = self.mixture
        mu, var, _ = m._components(t)  # [B, K, D]
        rows = torch.arange(x.shape[0], device=x.device)
        k = k.to(x.device)
        null = k == self.label_dim
        kk = torch.where(null, torch.zeros_like(k), k)
        diff = x.reshape(x.shape[0], -1).to(torch.float64) - mu[rows, kk]
        score = (-diff / var[rows, kk]).reshape(x.shape).to(x.dtype)
        if bool(null.any()):  # null rows: the full mixture's score
            score[null] = m(x[null], t[null])
        return score
