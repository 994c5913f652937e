"""Streaming feature statistics: mean and covariance accumulated in float64, no N×D buffer.

Every Fréchet-type metric (FID, ``fd_digits``, ``fd_fashion``, ``fd_exact``) feeds its features
batch by batch into one :class:`StreamingStats` and reads the mean and the unbiased covariance
(``ddof=1``, as ``np.cov(feats, rowvar=False)`` in clean-fid) at the end.

The running sums are taken about a fixed shift (the mean of the first batch), which keeps the
one-pass covariance accurate when features have a large mean compared with their spread; the sums
are still just a running sum and a running sum of outer products.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["StreamingStats"]


class StreamingStats:
    """Running mean and covariance of D-dimensional features, in float64.

    The sums live on the device of the first batch (float64 on a GPU keeps the D×D outer products
    off the host); ``mean`` and ``covariance`` come back as NumPy arrays.

    Args:
        dim: feature dimension D; ``None`` takes it from the first batch.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.n = 0
        self._shift: Tensor | None = None  # [D]
        self._sum: Tensor | None = None  # [D]   Σ (x − shift)
        self._outer: Tensor | None = None  # [D, D] Σ (x − shift)(x − shift)ᵀ

    def update(self, feats: Tensor | np.ndarray) -> StreamingStats:
        """Add a batch of features [B, D] (any float dtype; summed in float64)."""
        x = torch.as_tensor(feats).detach()
        x = x.to(self._sum.device if self._sum is not None else x.device, torch.float64)
        if x.dim() != 2:
            raise ValueError(f"features must have shape [B, D], got {list(x.shape)}")
        if x.shape[0] == 0:
            return self
        if self._shift is None:
            if self.dim is not None and x.shape[1] != self.dim:
                raise ValueError(f"features have dimension {x.shape[1]}, expected {self.dim}")
            self.dim = x.shape[1]
            self._shift = x.mean(0)
            self._sum = torch.zeros(self.dim, dtype=torch.float64, device=x.device)
            self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=x.device)
        elif x.shape[1] != self.dim:
            raise ValueError(f"features have dimension {x.shape[1]}, expected {self.dim}")
        d = x - self._shift
        self._sum += d.sum(0)
        self._outer += d.T @ d
        self.n += x.shape[0]
        return self

    def merge(self, other: StreamingStats) -> StreamingStats:
        """Add another accumulator's samples into this one (e.g. from parallel workers)."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.dim, self.n = other.dim, other.n
            self._shift, self._sum, self._outer = (t.clone() for t in (other._shift, other._sum, other._outer))
            return self
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {other.dim} into {self.dim}")
        # Re-centre the other's sums on this shift: x − s = (x − s') + δ with δ = s' − s.
        dev = self._sum.device
        delta = other._shift.to(dev) - self._shift
        s = other._sum.to(dev)
        self._sum += s + other.n * delta
        self._outer += other._outer.to(dev) + torch.outer(s, delta) + torch.outer(delta, s) + other.n * torch.outer(
            delta, delta
        )
        self.n += other.n
        return self

    # ---- mergeable state (shards): plain tensors and numbers, torch.load(weights_only=True) ----------
    def state(self) -> dict:
        """The running sums as a dict of CPU float64 tensors and ints (``None`` tensors while empty)."""
        return {"n": int(self.n), "dim": self.dim, **{k: None if t is None else t.detach().cpu().clone() for k, t in
                                                     (("shift", self._shift), ("sum", self._sum),
                                                      ("outer", self._outer))}}

    @classmethod
    def from_state(cls, state: dict) -> StreamingStats:
        """The accumulator whose :meth:`state` is ``state``."""
        s = cls(dim=state["dim"])
        s.n = int(state["n"])
        if s.n:
            s._shift, s._sum, s._outer = (torch.as_tensor(state[k], dtype=torch.float64)
                                          for k in ("shift", "sum", "outer"))
            if s._sum.shape != (s.dim,) or s._outer.shape != (s.dim, s.dim) or s._shift.shape != (s.dim,):
                raise ValueError(f"statistics state of dimension {s.dim} has sums of shape {list(s._sum.shape)} "
                                 f"and {list(s._outer.shape)}")
        return s

    @property
    def mean(self) -> np.ndarray:
        """Mean, [D] float64."""
        self._require(1)
        return (self._shift + self._sum / self.n).cpu().numpy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance (divides by n − 1), [D, D] float64, exactly symmetric."""
        self._require(2)
        m = self._sum / self.n
        cov = (self._outer - self.n * torch.outer(m, m)) / (self.n - 1)
        return (0.5 * (cov + cov.T)).cpu().numpy()

    def _require(self, n_min: int) -> None:
        if self.n < n_min:
            raise ValueError(f"need at least {n_min} samples for these statistics, have {self.n}")

    # ---- files in clean-fid's format (mu, sigma) plus the count --------------------------------
    def save(self, path: str | Path, **extra: object) -> None:
        """Write ``mu``, ``sigma`` and ``n`` (and string ``extra`` fields) to an npz, atomically."""
        from bench.metrics.assets import atomic_write

        atomic_write(Path(path), lambda f: np.savez(f, mu=self.mean, sigma=self.covariance, n=np.int64(self.n),
                                                    **{k: np.asarray(str(v)) for k, v in extra.items()}))

    @staticmethod
    def load_moments(path: str | Path) -> tuple[np.ndarray, np.ndarray, int | None]:
        """Read ``(mu, sigma, n)`` from an npz in clean-fid's format (``n`` is None where absent)."""
        with np.load(path) as f:
            n = int(f["n"]) if "n" in f.files else None
            return f["mu"].astype(np.float64), f["sigma"].astype(np.float64), n
