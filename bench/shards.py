"""Seed shards: the unit of work of a run, their files, and the merge of their states into the record.

A run's samples are split into shards of whole batches: shard *k* holds the samples at positions
``k·S .. min((k+1)·S, N) − 1`` of the run's seed list, with ``S`` = ``eval.shard_size`` rounded up
to a multiple of the batch size (default :data:`DEFAULT_SHARD_SAMPLES`: a 50 000-sample run has 25
shards, the 200-sample quickstart runs one). Batches are the same as in one pass and noise is per
sample, so the samples do not depend on the shard size. A run with ``bpd`` has one more shard,
``bpd``, that scores the dataset split. Files (docs/harness.md has the claim protocol)::

    <out>/shards/<run_id>/<k>.pt        a finished shard: its state (torch.save, weights_only-loadable)
    <out>/shards/<run_id>/<k>.claim     a worker's claim on shard k (owner; its mtime is the heartbeat)
    <out>/shards/<run_id>/record.claim  the claim of the worker that merges the shards into the record

A shard's state is a :class:`~bench.shard_state.ShardState` (the metric accumulators' ``state()``,
NFE / steps / batch sizes of each batch, accepted and rejected steps, per-sample NFE sums and
extremes, timings, peak memory, the run's descriptive fields and the kept samples of the first
``save_samples`` positions), stored as its dict. :func:`merge_record` folds the states of shards
0, 1, ... in index order — whatever order they finished in — into the record a one-pass run writes.
Once the record is written, the shard folder is removed (a FID shard state is 32 MiB).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.records import atomic_write, metric_entry, now
from bench.shard_state import ShardState

__all__ = ["DEFAULT_SHARD_SAMPLES", "Shard", "run_shards", "shard_size", "shard_dir", "shard_path",
           "write_shard", "read_shard", "shard_state", "merge_record", "remove_shards", "finished_shards"]

DEFAULT_SHARD_SAMPLES = 2000
SHARDS_DIR = "shards"
BPD = "bpd"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of run ``run_id``: sample positions ``start .. stop-1`` (``index == 'bpd'``: the
    dataset bits/dim, no samples)."""

    run_id: str
    index: int | str
    start: int = 0
    stop: int = 0

    @property
    def name(self) -> str:
        return str(self.index)

    def __str__(self) -> str:
        if self.index == BPD:
            return f"{self.run_id}/bpd"
        return f"{self.run_id}/{self.index} (samples {self.start}-{self.stop - 1})"


def shard_size(run) -> int:
    """Samples per shard of ``run``: ``eval.shard_size`` (or the default) rounded up to whole batches."""
    want = run.shard_size or DEFAULT_SHARD_SAMPLES
    return max(1, math.ceil(want / run.batch_size)) * run.batch_size


def samples_drawn(run) -> int:
    """Samples a run draws: none for a bits/dim-only run."""
    return 0 if set(run.metrics) == {BPD} else run.num_samples


def run_shards(run) -> list[Shard]:
    """The shards of ``run``, in index order (the ``bpd`` shard last)."""
    n, size = samples_drawn(run), shard_size(run)
    shards = [Shard(run.run_id, k, lo, min(lo + size, n)) for k, lo in enumerate(range(0, n, size))]
    if BPD in run.metrics:
        shards.append(Shard(run.run_id, BPD))
    return shards


def shard_dir(out: Path, run_id: str) -> Path:
    return Path(out) / SHARDS_DIR / run_id


def shard_path(out: Path, shard: Shard) -> Path:
    return shard_dir(out, shard.run_id) / f"{shard.name}.pt"


def plain(obj):
    """``obj`` with every value a JSON type or a tensor (what ``torch.load(weights_only=True)`` reads)."""
    from bench.records import _json_default

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return json.loads(json.dumps(obj, default=_json_default))


def shard_state(shard: Shard, state: dict) -> dict:
    """A finished shard's state as it is stored: plain containers and CPU tensors, with its identity."""
    return plain({**state, "run_id": shard.run_id, "index": shard.index, "start": shard.start, "stop": shard.stop})


def write_shard(out: Path, shard: Shard, state: dict) -> Path:
    """Atomically write a finished shard's state (:func:`shard_state`; unique temp name, fsync, rename)."""
    state = shard_state(shard, state)
    return atomic_write(shard_path(out, shard), lambda f: torch.save(state, f))


def read_shard(out: Path, shard: Shard) -> dict | None:
    """A finished shard's state, or None where absent or unreadable (never unpickles objects)."""
    path = shard_path(out, shard)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001  (a file not written by write_shard: treated as not done)
        return None
    ok = isinstance(state, dict) and state.get("run_id") == shard.run_id and state.get("index") == shard.index
    return state if ok and state.get("status") == "ok" else None


def finished_shards(out: Path, run) -> set[str]:
    """Names of the run's shards that have a state file."""
    folder = shard_dir(out, run.run_id)
    return {p.stem for p in folder.glob("*.pt") if not p.name.startswith(".")} if folder.is_dir() else set()


def remove_shards(out: Path, run_id: str) -> None:
    shutil.rmtree(shard_dir(out, run_id), ignore_errors=True)


# --- merge ---------------------------------------------------------------------------------------
def merge_record(run, states: list[dict], metrics: dict,
                 failure: dict | None = None) -> tuple[dict, torch.Tensor | None]:
    """The run's record and kept samples from its shard states (any order; folded in index order).

    Args:
        run: the :class:`~bench.grid.RunSpec`.
        states: finished shard states (for a failed run: those before the failing one).
        metrics: ``name -> accumulator`` built for the run (fresh); the shards' metric states are merged
            into them and computed here unless the run failed.
        failure: the failing shard's state (status, message and the counts of its batches), if any.
    """
    from bench.records import run_skeleton

    order = sorted(states, key=lambda s: (s["index"] == BPD, s["index"] if s["index"] != BPD else 0))
    if failure is not None:
        order.append(failure)
    first = next((s for s in order if s.get("info")), {})
    info = first.get("info", {})
    record = run_skeleton(run, info.get("device", run.device))
    record.update({k: v for k, v in info.items() if k != "device"})
    record["accel"] = dict(run.accel)
    if order and order[0].get("created"):
        record["created"] = min(s["created"] for s in order if s.get("created"))
    total, kept, kept_labels = ShardState(), [], []
    for s in order:
        total.merge(ShardState.from_dict(s))
        if failure is None:
            for name, st in s.get("metrics", {}).items():
                metrics[name].merge(st)
        if s.get("samples") is not None:
            kept.append(s["samples"])
            kept_labels += s.get("sample_labels") or []
    if kept_labels:  # the class each kept sample (runs/<run_id>.samples.pt, same order) was asked for
        record["sample_labels"] = kept_labels[: run.save_samples]
    record["shards"] = {"count": len(run_shards(run)), "samples_per_shard": shard_size(run),
                        "merged": [s["index"] for s in order],
                        "workers": sorted({s.get("worker", "") for s in order} - {""}),
                        "spans": [[s["index"], s.get("created"), s.get("finished"), s.get("worker")] for s in order]}
    if failure is not None:
        record["status"], record["message"] = failure["status"], failure["message"]
    else:
        import time

        t0 = time.perf_counter()
        from bench.metrics import METRICS

        for name, metric in metrics.items():
            for column, (value, protocol) in METRICS[name].results(metric).items():
                record["metrics"][column] = metric_entry(value, protocol)
        bpd = next((s for s in order if s["index"] == BPD), None)
        if bpd is not None:
            record["metrics"][BPD] = metric_entry(bpd["bpd_value"], bpd["bpd_protocol"])
            nfe = bpd["bpd_protocol"]["nfe_per_batch"]
            record["bpd_nfe"] = sum(nfe) / len(nfe)
        total.metric_time_s += time.perf_counter() - t0
        record["status"] = "ok"
    record.update(total.summary())
    for name, m in record["metrics"].items():
        record[name] = m["value"]
    record["finished"] = now()
    samples = torch.cat(kept)[: run.save_samples] if kept else None
    return record, samples
