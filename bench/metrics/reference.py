"""Reference statistics: a mean, a covariance, how many samples made them and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.metrics.edm_reference import EDM2_PROTOCOL, check_protocol, is_edm_pickle
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
    def load(cls, path: str | Path, section: str = "fid", asked: dict | None = None,
             **provenance: object) -> ReferenceStats:
        """Read an npz with ``mu``/``sigma`` (clean-fid's, EDM's, or ours with ``n``), or with raw features
        under ``feats`` (clean-fid's KID files) or ``pool_3`` (score_sde's ``cifar10_stats.npz``); or the
        ``section`` of an EDM2 reference pickle (``.pkl``, read as data: :mod:`bench.metrics.edm_reference`),
        refused where the run's protocol fields ``asked`` are not those it was computed with."""
        path = Path(path)
        info = {"reference_file": path.name, "reference_path": str(path), "reference_sha256": file_sha256(path)}
        if is_edm_pickle(path):
            stats = check_protocol(path, section, **(asked or {}))
            return cls(stats["mu"], stats["sigma"], stats["num_images"],
                       {**info, "reference_format": f"EDM2 calculate_metrics.py pickle, section {section!r}",
                        **{k: str(v) for k, v in EDM2_PROTOCOL.get(section, {}).items()}, **provenance})
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
        return cls(mu, sigma, n, {**info, **stored, **provenance})
