"""Bounds: what the machine cannot hold is refused at validation, with the estimate, before anything runs.

Checked per run, in well under a second, without loading a model (:func:`check_bounds`):

* **Steps**: ``n_steps`` (times ``steps_per_level``) above :data:`MAX_STEPS` and adaptive
  ``max_steps`` above :data:`MAX_ADAPTIVE_STEPS` are refused (score_sde's largest grid is 2000).
* **Samples**: seeds are ranges (:mod:`bench.seeds`), so ``num_samples`` costs nothing to state; a
  run may have at most :data:`MAX_SHARDS` shards, and metrics that keep per-sample data (``kid``:
  8 KiB a sample, ``sw2_exact``: 2 KiB) at most their ``max_generated``.
* **Batch memory**: one batch needs at least ``batch_size ×`` (one CPU ``torch.Generator`` per
  sample, :data:`GENERATOR_BYTES`, measured; the noise chunk buffer; :data:`WORKING_COPIES` copies
  of a sample in the run's dtype, and :data:`NETWORK_COPIES` more for a network's activations);
  a batch whose estimate exceeds the memory available now (``MemAvailable`` of /proc/meminfo, or
  the free memory of the GPU) is refused. The estimate is a floor, not a promise: a batch that
  passes can still run out of memory (then its run fails with status ``oom``).
"""

from __future__ import annotations

import math
import os

from bench.grid import GridError, GridSpec, RunSpec
from bench.metrics import METRICS
from bench.shards import BPD, shard_size

__all__ = ["check_bounds", "batch_bytes", "available_bytes", "sample_shape", "MAX_STEPS", "MAX_SHARDS"]

MAX_STEPS = 100_000
MAX_ADAPTIVE_STEPS = 10_000_000
MAX_SHARDS = 100_000
GENERATOR_BYTES = 2700  # one CPU torch.Generator (mt19937 state): 2680 B measured over 10^5 of them
WORKING_COPIES = 8  # x, x_mean, score, drift, noise draw, solver temporaries
NETWORK_COPIES = 64  # activations of a U-Net per input element (a floor; NCSN++ keeps far more)
DATASET_SHAPES = {"cifar10": (3, 32, 32), "celeba": (3, 64, 64), "digits": (1, 8, 8), "fashion": (1, 28, 28),
                  "mnist": (1, 28, 28), "ffhq": (3, 256, 256), "church": (3, 256, 256), "bedroom": (3, 256, 256)}
DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


def sample_shape(run: RunSpec) -> tuple[int, ...] | None:
    """A sample's shape read from the model section (no loading), or None where it cannot be told."""
    m = run.model
    if m["kind"] == "mixture":
        if "means" in m:
            means = m["means"]
            shape = []
            while isinstance(means, list) and means:
                shape.append(len(means))
                means = means[0]
            return tuple(shape[1:])
        return tuple(m.get("shape", (2,)))
    for key in (str(m.get("config", "")), str(run.data.get("dataset", "")), str(m.get("path", ""))):
        for name, shape in DATASET_SHAPES.items():
            if name in key.lower():
                return shape
    return None


def batch_bytes(run: RunSpec, batch: int | None = None) -> int:
    """A floor on the memory one batch of ``run`` needs (bytes)."""
    b = run.batch_size if batch is None else batch
    shape = sample_shape(run) or ()
    numel = math.prod(shape) if shape else 0
    chunk = max(1, min(16, 65536 // max(numel, 1)))
    elem = DTYPE_BYTES.get(run.dtype, 4)
    copies = WORKING_COPIES + (NETWORK_COPIES if run.model["kind"] != "mixture" else 0)
    return b * (GENERATOR_BYTES + chunk * numel * elem + copies * numel * elem)


def available_bytes(device: str) -> tuple[int, str]:
    """Memory available for a batch now: (bytes, where)."""
    if device.startswith("cuda") or device == "auto":
        try:
            import torch

            if torch.cuda.is_available():
                free, _ = torch.cuda.mem_get_info(torch.device(device if device != "auto" else "cuda"))
                return int(free), "free GPU memory"
        except Exception:  # noqa: BLE001
            pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable"
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_bounds(grid: GridSpec) -> None:
    """Raise :class:`GridError` (file, entry, field, estimate) for a run the machine cannot hold."""
    avail: dict[str, tuple[int, str]] = {}
    for run in grid.runs:
        where = f"{grid.path} sweeps[{run.entry}] (model {run.model_name!r}, solver {run.solver!r})"
        steps = run.options.get("n_steps")
        if isinstance(steps, int):
            total = steps * int(run.options.get("steps_per_level", 1) or 1)
            if total > MAX_STEPS:
                raise GridError(f"{where}: field 'n_steps' {steps} means {total} steps per sample, more than "
                                f"{MAX_STEPS} (score_sde's largest grid is 2000)")
        max_steps = run.options.get("max_steps")
        if isinstance(max_steps, int) and max_steps > MAX_ADAPTIVE_STEPS:
            raise GridError(f"{where}: field 'max_steps' {max_steps} is more than {MAX_ADAPTIVE_STEPS}")
        if set(run.metrics) == {BPD}:
            continue
        n_shards = math.ceil(run.num_samples / shard_size(run))
        if n_shards > MAX_SHARDS:
            raise GridError(f"{grid.path} eval: field 'num_samples' {run.num_samples} makes {n_shards} shards of "
                            f"{shard_size(run)} samples (at most {MAX_SHARDS}; raise eval.shard_size), "
                            f"≈ {run.num_samples * max(steps or 1, 1):.3g} network evaluations for this run")
        for name in run.metrics:  # metrics whose state keeps per-sample data (registry: state_bytes)
            per, limit = METRICS[name].state_bytes, METRICS[name].max_generated
            if limit is not None and run.num_samples > limit:
                raise GridError(f"{where}: metric {name!r} keeps {per} bytes per sample: num_samples "
                                f"{run.num_samples} needs {_gb(per * run.num_samples)} "
                                f"(at most {limit} samples)")
        need = batch_bytes(run)
        if run.device not in avail:
            avail[run.device] = available_bytes(run.device)
        have, kind = avail[run.device]
        if need > have:
            shape = sample_shape(run)
            raise GridError(f"{grid.path} eval: field 'batch_size' {run.batch_size}: one batch needs at least "
                            f"{_gb(need)} ({run.batch_size} generators × {GENERATOR_BYTES} B + samples of shape "
                            f"{list(shape) if shape else '?'} in {run.dtype}), {_gb(have)} available ({kind}); "
                            f"lower eval.batch_size")
