"""Per-run records: one JSON file per run, written atomically, and the readers that resume from them.

Layout of a results folder::

    results/<grid>/runs/<run_id>.json         the record (status, NFE, metrics with protocols, ...)
    results/<grid>/runs/<run_id>.samples.pt   a few samples (float32, CPU) for the sample-grid PNG

Writes go to a hidden temp file in the same folder, are fsync'ed and then ``os.replace``d over
the final name (and the folder is fsync'ed), so a process killed at any moment leaves either the
old file, the new file, or a stray temp file — never a truncated record. Readers ignore temp files
and :func:`clean_temp` removes them.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from bench.shard_state import ShardState

__all__ = ["RUNS_DIR", "OK", "canonical", "metric_entry", "run_skeleton", "failed_record", "write_record",
           "write_samples", "read_record", "read_records", "clean_temp", "atomic_write",
           "environment", "git_revision", "now", "record_path", "samples_path"]

RUNS_DIR = "runs"
OK = "ok"
_TMP_PREFIX = ".tmp-"
_HOST = platform.node().replace("~", "-")
PACKAGES = ("scorebench", "torch", "numpy", "scipy", "torchsde", "torchdiffeq", "pandas", "ray", "clean-fid")


def canonical(obj) -> str:
    """Canonical JSON: sorted keys, no spaces, floats as repr (the basis of ``run_id``)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_skeleton(run, device: str, status: str = "running", message: str = "") -> dict:
    """The fields every record of ``run`` (a :class:`~bench.grid.RunSpec`) has, before any result:
    what ran (spec, model, solver, options, seeds, ...), status, empty per-batch counts, environment."""
    return {"run_id": run.run_id, "grid": run.grid, "entry": run.entry, "model": run.model_name,
            "model_section": run.model, "data": run.data, "solver": run.solver, "options": run.options,
            "T": run.T, "eps": run.eps, "prior": run.prior, "num_samples": run.num_samples,
            "batch_size": run.batch_size, "seeds": run.seeds, "dtype": run.dtype, "device": device,
            "metrics_requested": list(run.metrics), "spec": run.to_dict(), "created": now(),
            "guidance": {k: v for k, v in (run.guidance or {}).items() if k != "guide_model"},
            "status": status, "message": message, **ShardState.empty_record(), "metrics": {}, **environment()}


def failed_record(run, status: str, message: str) -> dict:
    """The record of a run that failed before any shard could report (e.g. its worker died)."""
    return {**run_skeleton(run, run.device, status, message), "finished": now()}


def record_path(out: Path, run_id: str) -> Path:
    return Path(out) / RUNS_DIR / f"{run_id}.json"


def samples_path(out: Path, run_id: str) -> Path:
    return Path(out) / RUNS_DIR / f"{run_id}.samples.pt"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported (e.g. some network file systems)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> Path:
    """Write via ``write(fileobj)`` (binary) into a temp file beside ``path`` with a name unique to this
    call (``mkstemp``: concurrent writers never share one), fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}~{_HOST}~{os.getpid()}~", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_record(out: Path, record: dict) -> Path:
    """Atomically write ``record`` to ``out/runs/<run_id>.json``."""
    data = json.dumps(record, indent=1, sort_keys=True, default=_json_default, allow_nan=True).encode()
    return atomic_write(record_path(out, record["run_id"]), lambda f: f.write(data))


def write_samples(out: Path, run_id: str, samples: torch.Tensor) -> Path:
    """Atomically save a few samples beside the record."""
    return atomic_write(samples_path(out, run_id), lambda f: torch.save(samples.detach().float().cpu(), f))


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, tuple | set):
        return list(o)
    return str(o)


def read_record(path: Path) -> dict | None:
    """A record, or None if the file is missing or not a complete record."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "run_id" in record and "status" in record else None


def read_records(out: Path) -> dict[str, dict]:
    """Every readable record under ``out/runs``, by run_id (temp and unreadable files ignored)."""
    folder = Path(out) / RUNS_DIR
    records = {}
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            if p.name.startswith("."):
                continue
            r = read_record(p)
            if r is not None and p.stem == r["run_id"]:
                records[r["run_id"]] = r
    return records


def _writer_gone(name: str) -> bool:
    """Whether the writer of temp file ``name`` is gone: a dead process on this host, a temp file of
    another host untouched for a day, or one without a writer in its name."""
    parts = name.split("~")
    if len(parts) < 4 or not parts[2].isdigit():
        return True
    if parts[1] != _HOST:
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def clean_temp(out: Path) -> int:
    """Remove temp files left by killed writers (never a live writer's, on any host); returns how many."""
    import time

    n = 0
    for folder in (Path(out) / RUNS_DIR, *sorted((Path(out) / "shards").glob("*"))):
        if not folder.is_dir():
            continue
        for p in folder.glob(_TMP_PREFIX + "*"):
            try:
                old = time.time() - p.stat().st_mtime > 86400
            except FileNotFoundError:
                continue
            if _writer_gone(p.name) or old:
                p.unlink(missing_ok=True)
                n += 1
    return n


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


@functools.cache
def git_revision() -> str | None:
    """``git rev-parse HEAD`` of the project checkout (with '-dirty' if it has changes), or None."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    return out


def environment() -> dict:
    """Package versions, git revision, host and platform, for every record."""
    return {"versions": _versions(), "git_revision": git_revision(), "host": platform.node(),
            "platform": sys.platform}


def metric_entry(value: float, protocol: dict) -> dict:
    """A metric's record entry: its value, its uncertainty (method named) and its protocol."""
    protocol = dict(protocol)
    return {"value": value, "uncertainty": protocol.pop("uncertainty", None), "protocol": protocol}
