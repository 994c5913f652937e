"""A mean over samples as mergeable float64 sums, with the seed-group jackknife (``loglik_exact``,
``clip_score``).

State: n, Σ v, Σ v², and per seed group (seed mod 10) the count and Σ v — or no groups once a batch
came without seeds. Sums merge exactly up to float64 rounding, in any order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bench.metrics.uncertainty import GROUPS, jackknife, leave_one_out, seed_groups, unavailable

__all__ = ["GroupedMean"]


class GroupedMean:
    """Σ v, Σ v² and per-seed-group sums of per-sample values v."""

    def __init__(self) -> None:
        self.n, self.sum, self.sq = 0, 0.0, 0.0
        self.group_n: Tensor | None = torch.zeros(GROUPS, dtype=torch.int64)
        self.group_sum: Tensor | None = torch.zeros(GROUPS, dtype=torch.float64)

    def add(self, values: Tensor, ids: Tensor | None) -> None:
        """Add float64 values [B] of samples with seeds ``ids`` [B] (None: no jackknife from now on)."""
        self.n += values.shape[0]
        self.sum += float(values.sum())
        self.sq += float((values**2).sum())
        if ids is None:
            self.group_n = self.group_sum = None
        elif self.group_n is not None:
            g = seed_groups(ids).cpu()
            self.group_n += torch.bincount(g, minlength=GROUPS)
            self.group_sum.index_add_(0, g, values)

    def state(self) -> dict:
        """``{"n", "sum", "sq", "groups": {"n", "sum"} or None}``."""
        groups = None if self.group_n is None else {"n": self.group_n.clone(), "sum": self.group_sum.clone()}
        return {"n": self.n, "sum": self.sum, "sq": self.sq, "groups": groups}

    def merge(self, state: dict) -> None:
        """Add another accumulator's sums (from :meth:`state`)."""
        self.n += int(state["n"])
        self.sum += float(state["sum"])
        self.sq += float(state.get("sq", 0.0))
        groups = state.get("groups")
        if groups is None:
            if int(state["n"]):
                self.group_n = self.group_sum = None
        elif self.group_n is not None:
            self.group_n += torch.as_tensor(groups["n"], dtype=torch.int64)
            self.group_sum += torch.as_tensor(groups["sum"], dtype=torch.float64)

    def uncertainty(self, value: float, of_mean: Callable[[float], float] = float) -> dict:
        """The jackknife entry of ``value`` = ``of_mean(mean)``: each replicate is ``of_mean`` of the mean
        without one seed group."""
        if self.group_n is None:
            return unavailable("samples came without seeds (ids)")
        n, tot = self.group_n.tolist(), self.group_sum.tolist()
        replicates, used = leave_one_out(n, lambda g: of_mean((self.sum - tot[g]) / (self.n - n[g])), min_size=1)
        return jackknife(value, replicates, used)
