"""The Fréchet distance in some feature space, accumulated batch by batch.

One class serves FID (Inception features), ``fd_digits`` / ``fd_fashion`` (classifier features)
and ``fd_exact`` (the data space itself): a feature map, reference statistics, and a
:class:`~bench.metrics.stats.StreamingStats` that sees the generated features once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from bench.metrics.frechet import frechet_distance
from bench.metrics.reference import ReferenceStats
from bench.metrics.stats import StreamingStats
from bench.metrics.uncertainty import GROUPS, jackknife, leave_one_out, seed_groups, unavailable

__all__ = ["FrechetMetric", "check_state"]

FrechetFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def check_state(name: str, state: dict) -> None:
    """Raise unless ``state`` is a :meth:`state` dict of metric ``name``."""
    if not isinstance(state, dict) or state.get("metric") != name:
        got = state.get("metric") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"cannot merge a state of metric {got!r} into {name!r}")


class _FrechetToReference:
    """d²(N(μ, Σ), reference) for the jackknife replicates (μ, Σ) of one sample set, cheaply.

    Same formula as :func:`~bench.metrics.frechet.frechet_distance` (Tr (Σ Σ_r)^½ from a symmetric
    eigenproblem), organised for many Σ against one reference:

    * fewer samples than half the dimension (``span`` given: the covariance of all samples, rank ≤ N − 1):
      every replicate's centred samples lie in the range Q of that covariance, so Σ = Q A Qᵀ with
      A = QᵀΣQ (r × r) and Tr (Σ Σ_r)^½ = Σ √λ(A^½ (QᵀΣ_rQ) A^½) — r × r problems instead of D × D;
    * otherwise Σ_r^½ once, then one ``eigvalsh`` of Σ_r^½ Σ Σ_r^½ per replicate.
    """

    def __init__(self, mu: np.ndarray, sigma: np.ndarray, span: np.ndarray | None = None) -> None:
        from bench.metrics.frechet import _clip_roundoff, _psd_sqrt

        self.mu, self.clip, self.sqrt = np.asarray(mu, np.float64), _clip_roundoff, _psd_sqrt
        sigma = 0.5 * (np.asarray(sigma, np.float64) + np.asarray(sigma, np.float64).T)
        self.trace, self.q = float(np.trace(sigma)), None
        if span is not None:
            w, v = np.linalg.eigh(0.5 * (span + span.T))
            self.q = v[:, self.clip(w) > 0]  # [D, r]
            self.ref_q = self.q.T @ sigma @ self.q  # [r, r]
        else:
            self.root = _psd_sqrt(sigma)

    def __call__(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        sigma = 0.5 * (sigma + sigma.T)
        if self.q is not None:
            root = self.sqrt(self.q.T @ sigma @ self.q)
            m = root @ self.ref_q @ root
        else:
            m = self.root @ sigma @ self.root
        tr_sqrt = float(np.sqrt(self.clip(np.linalg.eigvalsh(0.5 * (m + m.T)))).sum())
        diff = mu - self.mu
        return float(diff @ diff + np.trace(sigma) + self.trace - 2.0 * tr_sqrt)


def _group_sums(groups: list[StreamingStats]):
    """Every group's Σ(x − s) and Σ(x − s)(x − s)ᵀ about one common shift s (that of the first non-empty
    group) and their totals: ``(n, Σ sums, Σ outers, s, [(sum, outer) per group])``."""
    ref = next(g for g in groups if g.n)
    s = ref._shift
    pairs = []
    for g in groups:
        if g.n == 0:
            pairs.append((torch.zeros_like(ref._sum), torch.zeros_like(ref._outer)))
            continue
        d = g._shift.to(s.device) - s  # re-centre: x − s = (x − s_g) + d
        gs, go = g._sum.to(s.device), g._outer.to(s.device)
        pairs.append((gs + g.n * d, go + torch.outer(gs, d) + torch.outer(d, gs) + g.n * torch.outer(d, d)))
    return sum(g.n for g in groups), sum(p[0] for p in pairs), sum(p[1] for p in pairs), s, pairs


class FrechetMetric:
    """Fréchet distance between generated features and reference statistics.

    Args:
        name: the metric's name in records (``'fid'``, ``'fd_digits'``, ...).
        features: maps a prepared batch to features [B, D].
        reference: the reference statistics.
        protocol: fixed protocol fields (feature network, mode, ...), merged into the record.
        prepare: maps a raw batch of samples to the feature map's input (quantisation, range).
        frechet: the distance formula (default: :func:`~bench.metrics.frechet.frechet_distance`).
    """

    def __init__(self, name: str, features: Callable[[Tensor], Tensor], reference: ReferenceStats, protocol: dict,
                 prepare: Callable[[Tensor], Tensor] | None = None, frechet: FrechetFn | None = None) -> None:
        self.name = name
        self.features, self.prepare = features, prepare
        self.reference, self._protocol = reference, dict(protocol)
        self.frechet = frechet or frechet_distance
        self.stats = StreamingStats(dim=reference.mu.shape[0])
        # Per seed group (seed mod GROUPS) statistics for the jackknife; None once a batch had no ids.
        self.groups: list[StreamingStats] | None = [StreamingStats(dim=reference.mu.shape[0]) for _ in range(GROUPS)]

    def update(self, samples: Tensor, ids: Tensor | None = None) -> None:
        """Add a batch of generated samples [B, ...] with their seeds ``ids`` [B] (for the uncertainty)."""
        x = self.prepare(samples) if self.prepare is not None else samples
        with torch.no_grad():
            feats = self.features(x)
        self.stats.update(feats)
        if ids is None:
            self.groups = None
        elif self.groups is not None:
            group = seed_groups(ids).to(torch.as_tensor(feats).device)
            for g, acc in enumerate(self.groups):
                acc.update(feats[group == g])

    def state(self) -> dict:
        """Sufficient statistics: n and the float64 sums about a shift (D + D² numbers, any N), and the
        same per seed group (``groups``: GROUPS such dicts, or None without seeds)."""
        groups = None if self.groups is None else [g.state() for g in self.groups]
        return {"metric": self.name, **self.stats.state(), "groups": groups}

    def merge(self, state: dict) -> None:
        """Add the samples of another accumulator's :meth:`state` (the same metric and reference)."""
        check_state(self.name, state)
        self.stats.merge(StreamingStats.from_state(state))
        other = state.get("groups")
        if other is None or len(other) != GROUPS:  # samples without seed groups: no jackknife
            if int(state["n"]):
                self.groups = None
        elif self.groups is not None:
            for acc, g in zip(self.groups, other):
                acc.merge(StreamingStats.from_state(g))

    def uncertainty(self, value: float | None = None) -> dict:
        """Jackknife over the seed groups: the distance without each group in turn (:mod:`bench.metrics.uncertainty`).

        Args:
            value: the distance on all samples, if already computed.
        """
        if self.groups is None:
            return unavailable("samples came without seeds (ids)")
        sizes = [g.n for g in self.groups]
        low_rank = self.stats.n - 1 < self.stats.dim / 2
        to_reference = _FrechetToReference(self.reference.mu, self.reference.sigma,
                                           span=self.stats.covariance if low_rank else None)
        n, total, outer, shift, pairs = _group_sums(self.groups)

        def without(k: int) -> float:  # the statistics of all groups but k, by subtraction
            m = n - sizes[k]
            mean = (total - pairs[k][0]) / m
            cov = (outer - pairs[k][1] - m * torch.outer(mean, mean)) / (m - 1)
            return to_reference((shift + mean).cpu().numpy(), (0.5 * (cov + cov.T)).cpu().numpy())

        replicates, used = leave_one_out(sizes, without)
        if value is None:
            value = float(self.frechet(self.stats.mean, self.stats.covariance, self.reference.mu,
                                       self.reference.sigma))
        return jackknife(value, replicates, used, positive=True)  # a distance: its interval stays above 0

    def compute(self) -> tuple[float, dict]:
        """``(value, protocol)`` over all samples added so far."""
        value = float(self.frechet(self.stats.mean, self.stats.covariance, self.reference.mu, self.reference.sigma))
        protocol = {"metric": self.name, **self._protocol, **self.reference.provenance,
                    "num_generated": self.stats.n, "num_reference": self.reference.n,
                    "uncertainty": self.uncertainty(value)}
        return value, protocol
