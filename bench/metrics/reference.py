"""Reference statistics: a mean, a covariance, how many samples made them and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.metrics.inception import file_sha256
from bench.metrics.stats import StreamingStats

__all__ = ["ReferenceStats"]


@dataclass
class ReferenceStats:
    """Gaussian statistics of reference features.

    Attributes:
        mu: [D] mean.
        sigma: [D, D] covariance.
        n: number of reference samples (None where the file does not say; clean-fid's files don't).
        provenance: where they come from, for the run record.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None
    provenance: dict = field(default_factory=dict)

    @classmethod
    def from_stats(cls, stats: StreamingStats, **provenance: object) -> ReferenceStats:
        return cls(stats.mean, stats.covariance, stats.n, dict(provenance))

    @classmethod
    def load(cls, path: str | Path, **provenance: object) -> ReferenceStats:
        """Read an npz with ``mu``/``sigma`` (clean-fid's, or ours with ``n``), or with raw features
        under ``feats`` (clean-fid's KID files) or ``pool_3`` (score_sde's ``cifar10_stats.npz``)."""
        path = Path(path)
        with np.load(path) as f:
            keys = set(f.files)
            if {"mu", "sigma"} <= keys:
                mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
                n = int(f["n"]) if "n" in keys else None
                stored = {k: str(f[k]) for k in keys - {"mu", "sigma", "n"} if f[k].ndim == 0}
            elif keys & {"feats", "pool_3"}:
                feats = f["feats" if "feats" in keys else "pool_3"]
                s = StreamingStats().update(feats)
                mu, sigma, n, stored = s.mean, s.covariance, s.n, {}
            else:
                raise ValueError(f"{path}: expected arrays mu and sigma (or feats / pool_3), found {sorted(keys)}")
        info = {"reference_file": path.name, "reference_path": str(path), "reference_sha256": file_sha256(path)}
        return cls(mu, sigma, n, {**info, **stored, **provenance})
