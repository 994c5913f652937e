"""The ``bpd`` accumulator: bits per dimension of dataset images, as mergeable float64 sums.

``bpd`` is not a sample metric: the run's model scores a dataset split with the probability-flow
likelihood (``dataset_bpd`` in :mod:`bench`). What is accumulated here is the per-image
values: their count, their sum and their sum of squares about a fixed shift (the first value), so
that a split of the images into shards merges to the same mean and standard error, plus the NFE of
every likelihood solve, keyed by the id of its first image so the merged list is in image order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bench.metrics.feature_fd import check_state
from bench.metrics.registry import MetricEntry, RunFacts
from bench.metrics.uncertainty import normal_interval

__all__ = ["ENTRY", "BitsPerDim"]


class BitsPerDim:
    """Mean bits/dim over images: ``update(values, ids, nfe=...)``, ``state()``, ``merge()``, ``compute()``.

    Args:
        protocol: fixed protocol fields (dataset, likelihood options, ...), merged into the record.
    """

    name = "bpd"

    def __init__(self, protocol: dict | None = None) -> None:
        self._protocol = dict(protocol or {})
        self.n, self.shift, self._sum, self._sq = 0, None, 0.0, 0.0
        self._nfe: list[tuple[int, int]] = []  # (id of the batch's first image, NFE of its solve)

    def update(self, samples: Tensor, ids: Tensor | None = None, nfe: int | None = None) -> None:
        """Add per-image bits/dim ``samples`` [B] (ids: the images' global ids [B]; nfe: of their solve)."""
        v = torch.as_tensor(samples).detach().to("cpu", torch.float64).reshape(-1)
        if v.numel() == 0:
            return
        if self.shift is None:
            self.shift = float(v[0])
        d = v - self.shift
        self.n += v.numel()
        self._sum += float(d.sum())
        self._sq += float((d * d).sum())
        if nfe is not None:
            first = int(ids[0]) if ids is not None else len(self._nfe)
            self._nfe.append((first, int(nfe)))

    def state(self) -> dict:
        """n, the shift, Σ (v − shift), Σ (v − shift)², and the (first id, NFE) pairs of the solves."""
        return {"metric": self.name, "n": self.n, "shift": self.shift, "sum": self._sum, "sq": self._sq,
                "nfe": torch.tensor(self._nfe, dtype=torch.int64).reshape(-1, 2)}

    def merge(self, state: dict) -> None:
        """Add another accumulator's sums (from :meth:`state`)."""
        check_state(self.name, state)
        n = int(state["n"])
        if n:
            s, q = float(state["sum"]), float(state["sq"])
            if self.shift is None:
                self.shift = float(state["shift"])
            delta = float(state["shift"]) - self.shift  # re-centre: v − a = (v − b) + (b − a)
            self._sum += s + n * delta
            self._sq += q + 2 * delta * s + n * delta * delta
            self.n += n
        self._nfe.extend((int(a), int(b)) for a, b in torch.as_tensor(state["nfe"]).reshape(-1, 2).tolist())

    def compute(self) -> tuple[float, dict]:
        """``(mean bits/dim, protocol)``; the protocol has the standard error and NFE per solve."""
        if self.n == 0:
            raise ValueError("no bits/dim values added")
        m = self._sum / self.n
        var = (self._sq - self.n * m * m) / (self.n - 1) if self.n > 1 else None
        stderr = math.sqrt(max(var, 0.0) / self.n) if var is not None else None
        unc = normal_interval(self.shift + m, stderr, "standard error of the mean over images x passes; "
                                                      "normal interval")
        return self.shift + m, {"metric": self.name, **self._protocol, "stderr": stderr,
                                "nfe_per_batch": [nfe for _, nfe in sorted(self._nfe)], "uncertainty": unc}


def _applies(kind: str, shape: tuple[int, ...] | None, conditional: bool) -> str | None:
    if conditional:
        return ("the model is class-conditional ('label'): bits/dim of a dataset needs each image's own class, "
                "which the harness does not feed; drop 'bpd' from its metrics")
    return None


def _datasets(data: dict) -> list[tuple[str, str]]:
    if not data.get("dataset"):
        raise ValueError("metric 'bpd' needs a dataset: add data: {dataset: ...}")
    return [(data["dataset"], data.get("split", "test"))]


def _options(facts: RunFacts) -> dict:
    return {}


ENTRY = MetricEntry(
    name="bpd", summary="bits/dim of a dataset split under the probability-flow likelihood (its own shard)",
    build=BitsPerDim, options=_options, applies=_applies, datasets=_datasets, reads_data=True, per_sample=False,
    uncertainty="standard error of the mean over images x passes; normal interval")
