"""Sample-quality metrics, each returning its value and a protocol dict for the run record.

Every metric is one :class:`~bench.metrics.registry.MetricEntry` of :data:`METRICS` (a plain dict),
declared in the metric's own module: its options, where it applies, the files it reads, its
direction and its mergeable state (:mod:`bench.metrics.registry` says what the harness reads from
it). Its accumulator is built by name::

    metric = make_metric("fid", dataset="cifar10", res=32, split="train", data_range=(-1, 1))
    for batch in batches:          # [B, C, H, W] samples, any number of batches
        metric.update(batch)
    value, protocol = metric.compute()

or in one call, ``compute_metric(name, samples, **options)`` with an iterable of batches (or one
tensor). Building a metric looks up every file it needs, so a missing Inception file or reference
statistics fail at once, before any sampling. ``docs/metrics.md`` says what each one computes.

Mergeable state (the protocol shards rely on). Every entry's accumulator (``bpd``'s
:class:`~bench.metrics.bpd.BitsPerDim` included) has:

* ``update(samples, ids=None)``: ``ids`` is a LongTensor [B] of the samples' global ids (the run
  loop passes their seeds; ``bpd``: image ids, plus ``nfe=`` of the solve);
* ``state() -> dict``: plain CPU tensors, Python numbers, strings, ``None`` (it round-trips
  through ``torch.save`` / ``torch.load(weights_only=True)``), with ``"metric": name``;
* ``merge(state) -> None``: adds another accumulator's samples (built with the same options);
  merging in any order and then ``compute()`` gives the value of one accumulator that saw all
  samples, to float64 rounding (tested ≤ 1e-9 relative for every metric);
* ``compute() -> (value, protocol)``.

What the state holds:

======================================  ===============================================  ===================
metric                                  state                                            size
======================================  ===============================================  ===================
fid, fd_digits, fd_fashion, fd_exact    n and float64 Σ(x − s), Σ(x − s)(x − s)ᵀ about   D + D² doubles
                                        a shift s (re-centred on merge)                  (FID: 32 MiB), any N
loglik_exact                            n, Σ log p, Σ (log p)²                           3 numbers
bpd                                     n, Σ(v − s), Σ(v − s)², (first id, NFE) pairs    4 numbers + 2/solve
kid                                     the features, float32 [N, 2048], and ids [N]:    8 KiB a sample,
                                        its subset estimator needs the features; the     ≤ ``max_generated``
                                        subsets are drawn in id order                    (10⁵ by default)
sw2_exact                               the projections, float64 [N, P] (W₂ sorts them)  8·P bytes a sample,
                                                                                         ≤ ``max_generated``
======================================  ===============================================  ===================

Sums merge exactly up to float64 rounding; KID and sliced W₂ keep per-sample data, so their state
grows with N and is bounded by ``max_generated`` (a clear error beyond it).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from bench.metrics import bpd, classifier_fd, clip_score, dinov2, exact, fid, inception_score, kid, prdc
from bench.metrics.assets import MissingAssetError
from bench.metrics.registry import Metric, MetricEntry, RunFacts

__all__ = ["METRICS", "SAMPLE_METRICS", "Metric", "MetricEntry", "MissingAssetError", "RunFacts", "compute_metric",
           "make_metric"]

# name → entry (bench.metrics.registry.MetricEntry): a metric is declared in its own module, listed here.
METRICS: dict[str, MetricEntry] = {e.name: e for e in (
    fid.ENTRY,
    kid.ENTRY,
    dinov2.ENTRY,
    inception_score.ENTRY,
    clip_score.ENTRY,
    classifier_fd.DIGITS,
    classifier_fd.FASHION,
    exact.FD_EXACT,
    exact.SW2_EXACT,
    exact.LOGLIK_EXACT,
    prdc.ENTRY,
    prdc.ENTRY_DINOV2,
    bpd.ENTRY,
)}
# The metrics computed from a run's samples (every one but those scored in a shard of their own).
SAMPLE_METRICS: tuple[str, ...] = tuple(name for name, e in METRICS.items() if e.per_sample)


def make_metric(name: str, **options: object) -> Metric:
    """Build the accumulator of metric ``name`` (a key of :data:`METRICS`) from its options.

    Raises:
        ValueError: unknown name.
        MissingAssetError: a file the metric needs is not on this machine.
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of: {', '.join(METRICS)}")
    return METRICS[name].build(**options)


def compute_metric(name: str, samples: Iterable[Tensor] | Tensor, **options: object) -> tuple[float, dict]:
    """Value and protocol of metric ``name`` over ``samples`` (a tensor or an iterable of batches); a metric
    with several values gives ``{column: (value, protocol)}``."""
    metric = make_metric(name, **options)
    for batch in [samples] if isinstance(samples, Tensor) else samples:
        metric.update(batch)
    return metric.compute()
