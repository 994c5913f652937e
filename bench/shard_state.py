"""The state one shard carries, as one typed object: its statistics are added per batch, merged across
shards and summarised for the run's record here, and nowhere else.

A worker fills a :class:`ShardState` while it samples (:meth:`ShardState.add_batch`; the metric
accumulators' ``state()`` go into :attr:`ShardState.metrics`); it travels between processes and lives
in a shard file as the plain dict of :meth:`ShardState.to_dict` (``torch.load(weights_only=True)``
reads it back; :meth:`ShardState.from_dict` ignores keys it does not know). The record of a run
starts from :meth:`ShardState.empty_record` and takes the fold of its shards' states
(:meth:`ShardState.merge`, in shard order) through :meth:`ShardState.summary`. A new statistic is
one field here, its line in :meth:`add_batch` or where it is measured, and its line in
:meth:`merge` and :meth:`summary`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

__all__ = ["ShardState"]

_COUNTERS = ("nfe", "n_steps", "n_accepted", "n_rejected")


@dataclass
class ShardState:
    """What one shard computed (or, after :meth:`merge`, several).

    Attributes:
        status, message: ``running``, ``ok`` or the failure (``error``, ``oom``, ``timeout``, a solver
            status) and its reason.
        created, finished, worker: when and where.
        info: the run's descriptive fields (SDE, sampler, device, data range, shape, ...).
        nfe_per_batch, batch_sizes, steps_per_batch: one entry per batch.
        n_accepted, n_rejected: adaptive steps, summed.
        nfe_rows, nfe_per_sample_min, nfe_per_sample_max: per-sample NFE (samplers with per-sample step
            sizes): sum and extremes.
        stats_extra: other per-batch statistics a sampler reports.
        prior_network_calls: network passes of a fitted prior (not NFE).
        networks: ``name -> {"calls", "rows"}`` summed over batches, per network of the run
            (:data:`models.tally.NETWORKS`: the denoiser, a guide, a classifier forward and backward, ...);
            NFE stays the guided denoiser evaluations the solver's counter sees.
        sampling_time_s, metric_time_s, wall_time_s: seconds, summed.
        text_encode_time_s, decode_time_s: seconds encoding the prompts and decoding latents with the VAE
            (latent models), summed, apart from sampling; decode_peak_memory_mb: the decode's CUDA peak.
        peak_memory_mb, peak_memory_kind: the largest peak, and what was measured.
        oom_splits: the most batch splits out of memory forced.
        metrics: ``name -> accumulator state()`` of the sample metrics.
        samples, sample_labels: the kept samples (positions < ``save_samples``) and their classes.
        bpd_value, bpd_protocol: the ``bpd`` shard's result.
        index: the shard's index (set for a failing shard).
    """

    status: str = "running"
    message: str = ""
    created: str | None = None
    finished: str | None = None
    worker: str = ""
    info: dict = field(default_factory=dict)
    nfe_per_batch: list = field(default_factory=list)
    batch_sizes: list = field(default_factory=list)
    steps_per_batch: list = field(default_factory=list)
    n_accepted: int = 0
    n_rejected: int = 0
    nfe_rows: float = 0.0
    nfe_per_sample_min: float | None = None
    nfe_per_sample_max: float | None = None
    stats_extra: list = field(default_factory=list)
    prior_network_calls: int = 0
    networks: dict = field(default_factory=dict)
    sampling_time_s: float = 0.0
    metric_time_s: float = 0.0
    wall_time_s: float = 0.0
    text_encode_time_s: float = 0.0
    decode_time_s: float = 0.0
    decode_peak_memory_mb: float | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    oom_splits: int = 0
    metrics: dict = field(default_factory=dict)
    samples: object = None
    sample_labels: list | None = None
    bpd_value: float | None = None
    bpd_protocol: dict | None = None
    index: int | str | None = None

    # --- adding ------------------------------------------------------------------------------------
    def add_batch(self, stats, batch_size: int) -> None:
        """Add one batch's solver statistics (:class:`solvers.SolveStats`: ``nfe``, ``n_steps``,
        ``n_accepted``, ``n_rejected``, ``nfe_per_sample`` and any other fields of ``as_dict()``)."""
        self.nfe_per_batch.append(int(stats.nfe))
        self.batch_sizes.append(int(batch_size))
        self.steps_per_batch.append(int(stats.n_steps))
        self.n_accepted += int(stats.n_accepted)
        self.n_rejected += int(stats.n_rejected)
        if stats.nfe_per_sample is not None:
            per = stats.nfe_per_sample.double().cpu()
            self.nfe_rows += float(per.sum())
            self.nfe_per_sample_min = min(self.nfe_per_sample_min or math.inf, float(per.min()))
            self.nfe_per_sample_max = max(self.nfe_per_sample_max or -math.inf, float(per.max()))
        extra = {k: v for k, v in stats.as_dict().items() if k not in _COUNTERS and not k.startswith("nfe_per_sample")}
        if extra:
            self.stats_extra.append(extra)

    def add_networks(self, counts: dict) -> None:
        """Add one batch's per-network ``{name: {"calls", "rows"}}`` (:meth:`models.tally.Tally.since`)."""
        self._sum_networks(counts)

    def _sum_networks(self, counts: dict) -> None:
        for name, entry in counts.items():
            mine = self.networks.setdefault(name, {"calls": 0, "rows": 0})
            mine["calls"] += int(entry["calls"])
            mine["rows"] += int(entry["rows"])

    # --- merging -----------------------------------------------------------------------------------
    def merge(self, other: ShardState) -> ShardState:
        """Fold ``other``'s statistics into this one (lists concatenated: merge shards in index order)."""
        self.nfe_per_batch += list(other.nfe_per_batch)
        self.batch_sizes += list(other.batch_sizes)
        self.steps_per_batch += list(other.steps_per_batch)
        self.stats_extra += list(other.stats_extra)
        self.n_accepted += int(other.n_accepted)
        self.n_rejected += int(other.n_rejected)
        self.nfe_rows += float(other.nfe_rows)
        if other.nfe_per_sample_min is not None:
            self.nfe_per_sample_min = min(self.nfe_per_sample_min or math.inf, other.nfe_per_sample_min)
            self.nfe_per_sample_max = max(self.nfe_per_sample_max or -math.inf, other.nfe_per_sample_max)
        self.prior_network_calls += int(other.prior_network_calls)
        self._sum_networks(other.networks or {})
        self.sampling_time_s += float(other.sampling_time_s)
        self.metric_time_s += float(other.metric_time_s)
        self.wall_time_s += float(other.wall_time_s)
        self.text_encode_time_s += float(other.text_encode_time_s)
        self.decode_time_s += float(other.decode_time_s)
        if other.decode_peak_memory_mb is not None:
            self.decode_peak_memory_mb = max(self.decode_peak_memory_mb or 0.0, other.decode_peak_memory_mb)
        if other.peak_memory_mb is not None and other.peak_memory_mb >= (self.peak_memory_mb or -1.0):
            self.peak_memory_mb, self.peak_memory_kind = other.peak_memory_mb, other.peak_memory_kind
        self.oom_splits = max(self.oom_splits, int(other.oom_splits))
        return self

    # --- the record --------------------------------------------------------------------------------
    @staticmethod
    def empty_record() -> dict:
        """The count fields of a record before any batch (a failed run's record keeps these)."""
        return {"nfe": None, "nfe_total": None, "nfe_per_batch": [], "batch_sizes": [], "steps_per_batch": [],
                "n_accepted": 0, "n_rejected": 0, "stats_extra": [], "networks": {}, "forwards_per_sample": None}

    def summary(self) -> dict:
        """The record's statistics: the per-batch lists, and the run-level NFE and step summaries."""
        nfe, steps = self.nfe_per_batch, self.steps_per_batch
        done = sum(self.batch_sizes)
        per_sample = self.nfe_per_sample_min is not None
        return {"nfe_per_batch": list(nfe), "batch_sizes": list(self.batch_sizes), "steps_per_batch": list(steps),
                "stats_extra": list(self.stats_extra), "n_accepted": self.n_accepted, "n_rejected": self.n_rejected,
                "nfe_total": sum(nfe), "nfe": (sum(nfe) / len(nfe) if len(set(nfe)) > 1 else nfe[0]) if nfe else None,
                "n_steps": (sum(steps) / len(steps) if len(set(steps)) > 1 else steps[0]) if steps else None,
                "nfe_per_sample_mean": self.nfe_rows / done if done and per_sample else None,
                "nfe_per_sample_min": self.nfe_per_sample_min, "nfe_per_sample_max": self.nfe_per_sample_max,
                "prior_network_calls": self.prior_network_calls, **self.network_summary(done),
                "sampling_time_s": self.sampling_time_s,
                "metric_time_s": self.metric_time_s, "wall_time_s": self.wall_time_s,
                "text_encode_time_s": self.text_encode_time_s, "decode_time_s": self.decode_time_s,
                "decode_peak_memory_mb": self.decode_peak_memory_mb,
                "peak_memory_mb": self.peak_memory_mb, "peak_memory_kind": self.peak_memory_kind,
                "oom_splits": self.oom_splits}

    def network_summary(self, done: int) -> dict:
        """``networks``: per network its calls and rows summed over the batches, calls per batch (mean)
        and forwards per sample (rows / samples: the diff-sampler convention, a CFG step = 2); and
        ``forwards_per_sample``: the denoiser's and the guide's together (the report's second NFE axis;
        a classifier, text encoder and VAE decoder are listed apart, never added to it)."""
        from models.tally import NETWORKS

        batches = len(self.batch_sizes)
        order = sorted(self.networks, key=lambda n: NETWORKS.index(n) if n in NETWORKS else len(NETWORKS))
        out = {name: {"calls": e["calls"], "rows": e["rows"],
                      "calls_per_batch": e["calls"] / batches if batches else None,
                      "forwards_per_sample": e["rows"] / done if done else None}
               for name, e in ((n, self.networks[n]) for n in order)}
        main = [out[n]["forwards_per_sample"] for n in ("denoiser", "guide") if n in out]
        return {"networks": out, "forwards_per_sample": sum(main) if main and done else None}

    # --- the stored form ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The plain dict a shard file and the executors carry (fields by name)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> ShardState:
        """The state of a :meth:`to_dict` dict (keys it does not know, such as the shard's identity, ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
