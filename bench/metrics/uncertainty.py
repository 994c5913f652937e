"""Uncertainty of sample-based metrics: a delete-one-group jackknife over seed groups.

Every sample carries its seed (the run loop passes the seeds as ``ids``). Sample i belongs to
group ``seed mod K`` (K = :data:`GROUPS` = 10); each metric keeps its sufficient statistics per
group inside its mergeable state, beside the whole-set ones. The metric's value θ is computed on
all N samples as always; the K leave-one-group-out values θ₍g₎ (each on ≈ (K − 1)/K · N samples)
give the jackknife standard error

    SE² = (K − 1)/K · Σ_g (θ₍g₎ − θ̄₍·₎)²,

and the interval θ ± t_{K−1, 0.975} · SE (Student t with K − 1 degrees of freedom); for a metric that
cannot be negative (a distance: FID, ``fd_*``, ``sw2_exact``; ``positive=True``) the same jackknife on
log θ, interval θ · exp(± t_{K−1, 0.975} · SE_log), which stays above 0 (issue 28). Groups are
defined by seeds alone, so the uncertainty does not depend on the batch size, on how runs are
split into shards, or on the order shards are merged in (up to float64 rounding).

Why a jackknife and not the spread of K disjoint subsets: FID-type distances are biased upward by
≈ Tr(Σ)/N-type terms, so a metric on N/K samples is not the metric on N. Each jackknife replicate
uses (K − 1)/K of the samples and the variance formula is scaled back to N (Efron & Stein); the
N-dependence of the *value* (its bias) is not removed — the interval says what another seed set of
the same size N would give, not the N → ∞ limit. ``jackknife_bias`` = (K − 1)(θ̄₍·₎ − θ) is
recorded beside it as an estimate of that O(1/N) bias. ``docs/metrics.md`` reports the measured
coverage on an exact mixture.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["GROUPS", "LEVEL", "METHOD", "METHOD_LOG", "seed_groups", "jackknife", "unavailable",
           "normal_interval", "leave_one_out"]

GROUPS = 10
LEVEL = 0.95
METHOD = f"jackknife, delete one of K={GROUPS} seed groups (group = seed mod {GROUPS}); t interval, K-1 dof"
METHOD_LOG = (f"jackknife, delete one of K={GROUPS} seed groups (group = seed mod {GROUPS}); t interval on log(value), "
              "K-1 dof")


def seed_groups(ids: Tensor, k: int = GROUPS) -> Tensor:
    """Group index ``seed mod k`` of each sample, int64 [B]."""
    return torch.as_tensor(ids, dtype=torch.int64).remainder(k)


def _t_quantile(level: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, dof))


def _jackknife_se(replicates: list[float]) -> tuple[float, float]:
    """(mean of the replicates, delete-a-group jackknife standard error)."""
    g = len(replicates)
    mean = sum(replicates) / g
    return mean, math.sqrt((g - 1) / g * sum((r - mean) ** 2 for r in replicates))


def jackknife(value: float, replicates: list[float], sizes: list[int], level: float = LEVEL,
              method: str | None = None, positive: bool = False) -> dict:
    """The uncertainty entry of a value from its leave-one-group-out replicates.

    Args:
        value: the metric on all samples.
        replicates: the metric without group g, one per non-empty group.
        sizes: the number of samples of each non-empty group (same order).
        level: the interval's coverage level.
        method: the method's description (default :data:`METHOD`, or :data:`METHOD_LOG` with ``positive``).
        positive: the metric cannot be negative (a distance): the t interval is taken on log θ, from
            the jackknife of the log replicates, θ · exp(± t · SE_log), so it cannot reach 0 or below.
            Where θ or a replicate is exactly 0 (no log), the linear interval with its lower end at 0.

    Returns:
        ``{"method", "stderr", "interval": [lo, hi], "level", "groups", "group_sizes",
        "jackknife_bias", "replicates"}`` (``positive``: and ``log_stderr``); ``stderr`` (the
        jackknife standard error of θ itself, either way) None (with ``reason``) below two groups.
    """
    method = method or (METHOD_LOG if positive else METHOD)
    g = len(replicates)
    if g < 2 or not all(math.isfinite(r) for r in replicates):
        return unavailable(f"{g} usable seed groups (need 2 or more)", method)
    mean, se = _jackknife_se(replicates)
    t = _t_quantile(level, g - 1)
    out = {"method": method, "stderr": se, "interval": [value - t * se, value + t * se], "level": level,
           "groups": g, "group_sizes": list(sizes), "jackknife_bias": (g - 1) * (mean - value),
           "replicates": list(replicates)}
    if positive and value > 0 and all(r > 0 for r in replicates):
        _, se_log = _jackknife_se([math.log(r) for r in replicates])
        out.update(interval=[value * math.exp(-t * se_log), value * math.exp(t * se_log)], log_stderr=se_log)
    elif positive:
        out.update(interval=[max(out["interval"][0], 0.0), out["interval"][1]],
                   method=method + " (a zero value or replicate: linear interval cut at 0)")
    return out


def leave_one_out(sizes: list[int], fn: Callable[[int], float], min_size: int = 2) -> tuple[list[float], list[int]]:
    """``fn(g)`` for every non-empty group g whose complement has ≥ ``min_size`` samples; (values, sizes)."""
    total = sum(sizes)
    groups = [g for g, n in enumerate(sizes) if n > 0 and total - n >= min_size]
    return [float(fn(g)) for g in groups], [sizes[g] for g in groups]


def unavailable(reason: str, method: str = METHOD) -> dict:
    """An uncertainty entry that says why there is none."""
    return {"method": method, "stderr": None, "interval": None, "level": LEVEL, "reason": reason}


def normal_interval(value: float, stderr: float | None, method: str, level: float = LEVEL) -> dict:
    """value ± z · stderr (for means of many independent terms, e.g. bits/dim over images)."""
    if stderr is None or not math.isfinite(stderr):
        return unavailable("no standard error", method)
    from scipy.stats import norm

    half = float(norm.ppf(0.5 + level / 2)) * stderr
    return {"method": method, "stderr": stderr, "interval": [value - half, value + half], "level": level}
