"""``kind: edm`` — an EDM network pickle (:func:`models.edm.load_edm`, read without executing it):
``path`` (``network-snapshot-*.pkl`` or a released ``edm-*.pkl``; relative paths are also looked up
under ``$SCOREBENCH_CKPT_DIR``), ``key`` (default 'ema'), ``label`` (class-conditional networks:
:func:`bench.kinds.base.check_label`), ``sigma_min``/``sigma_max`` (the σ range sampled; default
generate.py's 0.002–80, clamped to the network's)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bench.kinds.base import CKPT_ENV, ModelKind, check_label, resolve_path, where_env

KEYS = ("path", "key", "label", "sigma_min", "sigma_max")
PRETRAINED_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"

_LABEL_DIMS: dict[tuple, int] = {}


def _label_dim(path: Path, key: str) -> int:
    """label_dim of the snapshot's network (records only, cached per file version)."""
    from models.edm.loader import network_label_dim

    st = path.stat()
    cache_key = (str(path.resolve()), st.st_size, st.st_mtime_ns, key)
    if cache_key not in _LABEL_DIMS:
        _LABEL_DIMS[cache_key] = network_label_dim(path, key)
    return _LABEL_DIMS[cache_key]


def check_fields(section: dict, what: str = "EDM") -> None:
    """The section's ``path``, ``key``, ``label`` and σ range, without reading files (kinds edm, edm2)."""
    path = section.get("path")
    if not isinstance(path, str):
        raise ValueError(f"field 'path' (the {what} .pkl file) must be a string, got {path!r}")
    key = section.get("key", "ema")
    if not isinstance(key, str):
        raise ValueError(f"field 'key' must be a snapshot entry name such as 'ema', got {key!r}")
    check_label(section)
    for k in ("sigma_min", "sigma_max"):
        v = section.get(k)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v < math.inf):
            raise ValueError(f"field {k!r} must be a positive finite number, got {v!r}")
    lo, hi = section.get("sigma_min"), section.get("sigma_max")
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"need sigma_min < sigma_max, got {lo} >= {hi}")


def check(section: dict, files: bool = True) -> None:
    check_fields(section)
    path, key = section["path"], section.get("key", "ema")
    if files:
        found = resolve_path(path, CKPT_ENV)
        if found is None:
            raise FileNotFoundError(f"EDM snapshot {path!r} not found{where_env()}; download it from "
                                    f"{PRETRAINED_URL}{Path(path).name} (or a network-snapshot-*.pkl of your "
                                    f"own EDM training run)")
        check_label(section, _label_dim(found, key), f"the network in {path!r} entry {key!r}")


def load(section: dict, device: str, dtype: torch.dtype):
    """The section's network, label-free (the harness conditions it per batch: bench.models.batch_labels)."""
    from models.edm import load_edm

    return load_edm(resolve_path(section["path"], CKPT_ENV), key=section.get("key", "ema"),
                    sigma_min=section.get("sigma_min"), sigma_max=section.get("sigma_max"), device=device,
                    dtype=dtype)


def model_files(section: dict) -> dict[str, Path]:
    path = resolve_path(section["path"], CKPT_ENV) if isinstance(section.get("path"), str) else None
    return {"checkpoint": path} if path is not None else {}


KIND = ModelKind(KEYS, check, load, files=model_files)
