"""``kind: checkpoint`` — the project's own checkpoint (:func:`models.checkpoint_io.load_model`):
``path`` (relative paths are also looked up under ``$SCOREBENCH_CKPT_DIR`` and in the checkout),
``weights`` ('ema' or 'raw'). :func:`peek` also reads official score_sde files for ``kind: official``."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.kinds.base import CKPT_ENV, ModelFacts, ModelKind, resolve_path
from models.sde import make_sde

KEYS = ("path", "weights")


def load(section: dict, device: str, dtype: torch.dtype):
    from models.checkpoint_io import load_model

    path = resolve_path(section["path"], CKPT_ENV)
    return load_model(path, weights=section.get("weights", "ema"), dtype=dtype, device=device)


def check(section: dict, files: bool = True) -> None:
    if not isinstance(section.get("path"), str):
        raise ValueError(f"field 'path' (the checkpoint file) must be a string, got {section.get('path')!r}")
    if section.get("weights", "ema") not in ("ema", "raw"):
        raise ValueError(f"field 'weights' must be one of: ema, raw; got {section['weights']!r}")
    path = resolve_path(section["path"], CKPT_ENV)
    if files and path is None:
        data = (section.get("data") or {}).get("dataset", "<dataset>")
        raise FileNotFoundError(
            f"checkpoint {section['path']!r} not found (nor under ${CKPT_ENV}); train one with "
            f"`python -m models.train --data {data} --sde vp --out {section['path']}` or fix the path")
    if files:
        try:
            peek(path, "checkpoint")
        except ValueError as e:
            raise ValueError(f"field 'path': {e}") from e


def describe(section: dict, files: bool = True) -> ModelFacts | None:
    path = resolve_path(section["path"], CKPT_ENV)
    if not files or path is None:
        return None
    spec = peek(path, "checkpoint")["spec"]
    return ModelFacts(tuple(spec["shape"]), make_sde(**spec["sde"]))


def model_files(section: dict) -> dict[str, Path]:
    path = resolve_path(section["path"], CKPT_ENV) if isinstance(section.get("path"), str) else None
    return {"checkpoint": path} if path is not None else {}


_PEEKED: dict[tuple, dict] = {}


def peek(path: Path, kind: str) -> dict:
    """``{'spec': ...}`` of the checkpoint at ``path``, checked before anything runs to be of ``kind``
    ('checkpoint': the project's format, 'official': score_sde's): an empty, garbage or other-kind file
    is a ValueError naming the right kind. Read with ``weights_only=True``, tensors memory-mapped
    where the file allows, so a large official checkpoint costs little; only the spec is kept."""
    from models.checkpoint_io import FORMAT, CheckpointError, load_weights_only, read_checkpoint

    key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns, kind)
    if key in _PEEKED:
        return _PEEKED[key]
    if kind == "checkpoint":
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as e:
            raise ValueError(f"{e}{'; use kind: official' if 'official score_sde' in str(e) else ''}") from e
    else:
        ckpt = load_weights_only(path)
        if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
            raise ValueError(f"{path} is a scorebench checkpoint, not an official score_sde one; use kind: checkpoint "
                             f"with path: {path}")
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
            got = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise ValueError(f"{path} is not an official score_sde checkpoint: expected a dict with 'model' "
                             f"(and 'ema'), got {got}")
    _PEEKED[key] = {"spec": ckpt.get("spec")}  # what the load-time checks read; the weights are let go
    return _PEEKED[key]


KIND = ModelKind(KEYS, check, load, describe, model_files, null_condition=False)
