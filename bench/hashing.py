"""Content hashes of the files that determine a run's result, for its identity and its record.

A run's ``run_id`` hashes its canonical spec; a path in that spec says where a file was, not what it
held. :func:`run_inputs` lists every file a run reads — the checkpoint, a prior file, the FID/KID
reference statistics and Inception network, a classifier metric's weights and statistics, and the
dataset split a metric or a fitted prior reads — with the SHA-256 of its content, so replacing
``ck.pt`` by another model gives another run. Each file is hashed once per invocation
(:data:`_DIGESTS`, keyed by the resolved path, size and modification time); a dataset by the
SHA-256 of the array its loader returns. Files that do not exist are left out: the grid's
pre-flight check refuses them before anything runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha256", "dataset_sha256", "run_inputs"]

_DIGESTS: dict[tuple, str] = {}
_CHUNK = 1 << 22


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's content, computed once per file per process."""
    p = Path(path).resolve()
    st = p.stat()
    key = ("file", str(p), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def dataset_sha256(name: str, split: str, root: str | None = None) -> str | None:
    """SHA-256 of one split's data as loaded (values, shape, levels, labels); None if it is missing."""
    key = ("dataset", name, split, root)
    if key not in _DIGESTS:
        from models.datasets import load_dataset

        try:
            ds = load_dataset(name, split, root=root)
        except (FileNotFoundError, ValueError, OSError):
            return None
        h = hashlib.sha256(f"{name}/{split} {tuple(ds.data.shape)} {ds.data.dtype} levels={ds.levels}".encode())
        h.update(ds.data.contiguous().cpu().numpy().tobytes())
        if ds.labels is not None:
            h.update(ds.labels.contiguous().cpu().numpy().tobytes())
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def folder_sha256(path: str | Path) -> str | None:
    """SHA-256 over a folder's files (relative names and contents, sorted), e.g. a diffusers model folder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root).as_posix()}\0{file_sha256(f)}\0".encode())
    return h.hexdigest()


def _maybe(path) -> str | None:
    return file_sha256(path) if path is not None and Path(path).is_file() else None


def run_inputs(model: dict, data: dict, prior: dict, metrics: tuple[str, ...],
               shape: tuple[int, ...] | None = None) -> dict[str, str]:
    """``{role: sha256}`` of every existing file the run reads (see the module docstring); ``shape``: the
    model's sample shape where known before loading (a metric's ``res`` defaults to its size)."""
    from bench.kinds import model_files
    from bench.kinds.base import resolve_path

    found: dict[str, str | None] = {}
    kind = model.get("kind")
    for role, path in model_files(model).items():
        found[role] = folder_sha256(path) if path.is_dir() else _maybe(path)
    if prior.get("kind") == "file" and isinstance(prior.get("path"), str):
        found["prior_file"] = _maybe(resolve_path(prior["path"]))
    reads_data = kind != "mixture"  # fitted priors of a mixture draw exact samples instead
    if reads_data and prior.get("kind") in ("moment", "flow", "oracle") and data.get("dataset"):
        split = "test" if prior["kind"] == "oracle" else "train"
        found[f"dataset:{data['dataset']}/{split}"] = dataset_sha256(data["dataset"], split, data.get("root"))
    from bench.metrics import METRICS
    from bench.metrics.registry import with_res

    data = with_res(data, shape)  # what the metrics read: res = the samples' size unless given
    for name in metrics:  # what each metric's registry entry says it reads
        entry = METRICS[name]
        try:
            for dataset, split in entry.datasets(data):
                found[f"dataset:{dataset}/{split}"] = dataset_sha256(dataset, split, data.get("root"))
            found.update({f"{name}:{role}": _maybe(path) for role, path in entry.files(data).items()})
        except (FileNotFoundError, ValueError):
            pass  # missing: the pre-flight check names it
    return {k: v for k, v in sorted(found.items()) if v is not None}
