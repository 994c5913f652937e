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


def _label_dim(path: Path, key: str, label_dim_of) -> int:
    """label_dim of the snapshot's network, ``label_dim_of(path, key)`` (records only), cached per file version."""
    st = path.stat()
    cache_key = (str(path.resolve()), st.st_size, st.st_mtime_ns, key, label_dim_of.__qualname__)
    if cache_key not in _LABEL_DIMS:
        _LABEL_DIMS[cache_key] = label_dim_of(path, key)
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


def check_snapshot(section: dict, files: bool, what: str, download: str, label_dim_of) -> None:
    """:func:`check_fields`, then (``files``) the pickle exists — else FileNotFoundError naming where
    to ``download`` it (a sentence ending the message) — and ``label`` fits ``label_dim_of(path, key)``."""
    check_fields(section, what)
    path, key = section["path"], section.get("key", "ema")
    if files:
        found = resolve_path(path, CKPT_ENV)
        if found is None:
            raise FileNotFoundError(f"{what} snapshot {path!r} not found{where_env()}; {download}")
        check_label(section, _label_dim(found, key, label_dim_of), f"the network in {path!r} entry {key!r}")


def check(section: dict, files: bool = True) -> None:
    from models.edm.loader import network_label_dim

    name = Path(str(section.get("path"))).name
    check_snapshot(section, files, "EDM", f"download it from {PRETRAINED_URL}{name} (or a network-snapshot-*.pkl "
                   f"of your own EDM training run)", network_label_dim)


def load_snapshot(section: dict, device: str, dtype: torch.dtype, loader):
    """``loader(path, key, sigma_min, sigma_max, device, dtype)`` of the section: its network, label-free
    (the harness conditions it per batch: bench.models.batch_labels)."""
    return loader(resolve_path(section["path"], CKPT_ENV), key=section.get("key", "ema"),
                  sigma_min=section.get("sigma_min"), sigma_max=section.get("sigma_max"), device=device, dtype=dtype)


def load(section: dict, device: str, dtype: torch.dtype):
    from models.edm import load_edm

    return load_snapshot(section, device, dtype, load_edm)


def model_files(section: dict) -> dict[str, Path]:
    path = resolve_path(section["path"], CKPT_ENV) if isinstance(section.get("path"), str) else None
    return {"checkpoint": path} if path is not None else {}


KIND = ModelKind(KEYS, check, load, files=model_files, null_condition=False)
