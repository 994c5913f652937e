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

__all__ = ["FrechetMetric", "check_state"]

FrechetFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def check_state(name: str, state: dict) -> None:
    """Raise unless ``state`` is a :meth:`state` dict of metric ``name``."""
    if not isinstance(state, dict) or state.get("metric") != name:
        got = state.get("metric") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"cannot merge a state of metric {got!r} into {name!r}")


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

    def update(self, samples: Tensor, ids: Tensor | None = None) -> None:
        """Add a batch of generated samples [B, ...] (``ids``, their seeds, are not needed by sums)."""
        del ids
        x = self.prepare(samples) if self.prepare is not None else samples
        with torch.no_grad():
            self.stats.update(self.features(x))

    def state(self) -> dict:
        """Sufficient statistics: n and the float64 sums about a shift (D + D² numbers, any N)."""
        return {"metric": self.name, **self.stats.state()}

    def merge(self, state: dict) -> None:
        """Add the samples of another accumulator's :meth:`state` (the same metric and reference)."""
        check_state(self.name, state)
        self.stats.merge(StreamingStats.from_state(state))

    def compute(self) -> tuple[float, dict]:
        """``(value, protocol)`` over all samples added so far."""
        value = float(self.frechet(self.stats.mean, self.stats.covariance, self.reference.mu, self.reference.sigma))
        protocol = {"metric": self.name, **self._protocol, **self.reference.provenance,
                    "num_generated": self.stats.n, "num_reference": self.reference.n}
        return value, protocol
