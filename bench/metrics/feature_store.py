"""Generated features kept as they are, for the metrics whose estimators need every feature vector
(KID's subsets, the k-NN balls of precision/recall/density/coverage), as mergeable state.

The state is the features (float32 [N, D], 4·D bytes a sample) and their sample ids (int64 [N],
the run's seeds), so it grows with N and is bounded by ``max_generated``. With ids, :meth:`ordered`
returns the features sorted by id, so merged shards give one order whatever the sharding and the
merge order; without ids, the order they were added in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bench.metrics.uncertainty import GROUPS, jackknife, leave_one_out, seed_groups, unavailable

__all__ = ["FeatureStore", "KeepsFeatures"]


class FeatureStore:
    """Features [N, D] and their ids, added batch by batch or merged from another store's :meth:`state`.

    Args:
        name: the metric's name (in error messages).
        max_generated: the most features accepted.
    """

    def __init__(self, name: str, max_generated: int) -> None:
        self.name, self.max_generated = name, max_generated
        self._feats: list[Tensor] = []  # float32 [B, D] on the CPU
        self._ids: list[Tensor] | None = []  # int64 [B] per batch; None once a batch came without ids
        self.n = 0

    def add(self, feats: Tensor, ids: Tensor | None) -> None:
        """Add features [B, D] (kept as float32 on the CPU) with their ids [B] (or None)."""
        feats = torch.as_tensor(feats).detach().to("cpu", torch.float32)
        ids = None if ids is None else torch.as_tensor(ids, dtype=torch.int64).cpu()
        if self.n + feats.shape[0] > self.max_generated:
            raise ValueError(f"{self.name} keeps every generated feature ({4 * feats.shape[1]} bytes each): "
                             f"{self.n + feats.shape[0]} samples exceed max_generated={self.max_generated}")
        if ids is not None and ids.shape != (feats.shape[0],):
            raise ValueError(f"ids must have shape [{feats.shape[0]}], got {list(ids.shape)}")
        if self.n and (ids is None) != (self._ids is None):
            raise ValueError(f"{self.name} cannot mix batches with and without sample ids")
        self._feats.append(feats)
        if ids is None:
            self._ids = None
        else:
            self._ids.append(ids)
        self.n += feats.shape[0]

    def state(self) -> dict:
        """``{"feats": float32 [N, D], "ids": int64 [N] or None}``."""
        dim = self._feats[0].shape[1] if self._feats else 0
        return {"feats": torch.cat(self._feats) if self._feats else torch.zeros(0, dim),
                "ids": None if self._ids is None else torch.cat(self._ids) if self._ids else
                torch.zeros(0, dtype=torch.int64)}

    def merge(self, state: dict) -> None:
        """Add another store's features (from :meth:`state`); an empty one adds nothing."""
        feats = torch.as_tensor(state["feats"], dtype=torch.float32)
        if feats.shape[0]:
            self.add(feats, None if state["ids"] is None else torch.as_tensor(state["ids"], dtype=torch.int64))

    def ordered(self) -> tuple[Tensor, Tensor | None]:
        """All features, sorted by id where ids are known, and the sorted ids (or None)."""
        if not self._feats:
            raise ValueError(f"{self.name}: no samples added")
        feats = torch.cat(self._feats)
        if self._ids is None:
            return feats, None
        ids = torch.cat(self._ids)
        order = ids.argsort(stable=True)
        return feats[order], ids[order]


class KeepsFeatures:
    """The mergeable-state half of a metric whose state is a :class:`FeatureStore` (``self.store``): its
    ``state()``, ``merge()`` and the jackknife over seed groups of an estimator on the stored rows."""

    name: str
    store: FeatureStore

    def state(self) -> dict:
        """The stored rows (float32 [N, D]) and their ids (int64 [N], or None)."""
        return {"metric": self.name, **self.store.state()}

    def merge(self, state: dict) -> None:
        """Add another accumulator's rows (from :meth:`state`)."""
        if not isinstance(state, dict) or state.get("metric") != self.name:
            got = state.get("metric") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"cannot merge a state of metric {got!r} into {self.name!r}")
        self.store.merge(state)

    @staticmethod
    def group_jackknife(value: float, ids: Tensor | None, without: Callable[[Tensor], float],
                        min_size: int = 2) -> dict:
        """The jackknife entry of ``value``: ``without(keep)`` is the estimator on the rows where the bool
        mask ``keep`` [N] (rows in :meth:`FeatureStore.ordered` order) leaves out one seed group."""
        if ids is None:
            return unavailable("samples came without seeds (ids)")
        groups = seed_groups(ids)
        return KeepsFeatures.jackknife_by_group(value, ids, lambda g: without(groups != g), min_size)

    @staticmethod
    def jackknife_by_group(value: float, ids: Tensor | None, replicate: Callable[[int], float],
                           min_size: int = 2) -> dict:
        """The jackknife entry of ``value`` from ``replicate(g)``: the estimator without seed group ``g``."""
        if ids is None:
            return unavailable("samples came without seeds (ids)")
        sizes = torch.bincount(seed_groups(ids), minlength=GROUPS).tolist()
        replicates, used = leave_one_out(sizes, replicate, min_size=min_size)
        return jackknife(value, replicates, used)
