"""The ``edm`` and ``diffusers`` model kinds of a grid's model section (registered in
:data:`bench.models.MODEL_KINDS`): their checks (names and files, before anything runs; nothing heavy
is loaded) and loaders.

* ``edm`` — an EDM network pickle (:func:`models.edm.load_edm`, read without executing it): ``path``
  (``network-snapshot-*.pkl`` or a released ``edm-*.pkl``; relative paths are also looked up under
  ``$SCOREBENCH_CKPT_DIR``), ``key`` (default 'ema'), ``label`` (class index of a class-conditional
  network), ``sigma_min``/``sigma_max`` (the σ range sampled; default generate.py's 0.002–80, clamped
  to the network's).
* ``diffusers`` — a saved diffusers pipeline folder (``unet/`` + ``scheduler/``) or ``UNet2DModel``
  folder (:func:`models.diffusers_adapter.load_diffusers`, offline): ``path``, ``scheduler`` (entries
  overriding the saved scheduler config, e.g. ``prediction_type``; a model folder's whole schedule).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = ["EDM_KEYS", "DIFFUSERS_KEYS", "EDM_PRETRAINED_URL", "check_edm", "load_edm_section", "check_diffusers",
           "load_diffusers_section"]

EDM_KEYS = ("path", "key", "label", "sigma_min", "sigma_max")
DIFFUSERS_KEYS = ("path", "scheduler")
EDM_PRETRAINED_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"


def _where_env() -> str:
    from bench.models import CKPT_ENV

    if os.environ.get(CKPT_ENV):
        return f" (nor under ${CKPT_ENV}={os.environ[CKPT_ENV]})"
    return f" (set ${CKPT_ENV} to the folder holding it)"


# --- edm ------------------------------------------------------------------------------------
def check_edm(section: dict, files: bool = True) -> None:
    from bench.models import CKPT_ENV, resolve_path

    path = section.get("path")
    if not isinstance(path, str):
        raise ValueError(f"field 'path' (the EDM .pkl file) must be a string, got {path!r}")
    key = section.get("key", "ema")
    if not isinstance(key, str):
        raise ValueError(f"field 'key' must be a snapshot entry name such as 'ema', got {key!r}")
    label = section.get("label")
    labels = label if isinstance(label, list) else [label]
    if label is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in labels):
        raise ValueError(f"field 'label' must be a class index >= 0 (or a list of them), got {label!r}")
    for k in ("sigma_min", "sigma_max"):
        v = section.get(k)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v < math.inf):
            raise ValueError(f"field {k!r} must be a positive finite number, got {v!r}")
    lo, hi = section.get("sigma_min"), section.get("sigma_max")
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"need sigma_min < sigma_max, got {lo} >= {hi}")
    if files and resolve_path(path, CKPT_ENV) is None:
        raise FileNotFoundError(f"EDM snapshot {path!r} not found{_where_env()}; download it from "
                                f"{EDM_PRETRAINED_URL}{Path(path).name} (or a network-snapshot-*.pkl of your own "
                                f"EDM training run)")


def load_edm_section(section: dict, device: str, dtype: torch.dtype):
    from bench.models import CKPT_ENV, resolve_path
    from models.edm import load_edm

    return load_edm(resolve_path(section["path"], CKPT_ENV), key=section.get("key", "ema"), label=section.get("label"),
                    sigma_min=section.get("sigma_min"), sigma_max=section.get("sigma_max"), device=device,
                    dtype=dtype)


# --- diffusers --------------------------------------------------------------------------------
def _folder(path: str) -> Path | None:
    from bench.models import CKPT_ENV

    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if not p.is_absolute() and os.environ.get(CKPT_ENV) and (Path(os.environ[CKPT_ENV]).expanduser() / p).is_dir():
        return Path(os.environ[CKPT_ENV]).expanduser() / p
    return None


def check_diffusers(section: dict, files: bool = True) -> None:
    from models.diffusers_adapter import check_scheduler_config, read_scheduler_config

    path = section.get("path")
    if not isinstance(path, str):
        raise ValueError(f"field 'path' (a saved diffusers pipeline or model folder) must be a string, got {path!r}")
    overrides = section.get("scheduler", {})
    if not isinstance(overrides, dict):
        raise ValueError(f"field 'scheduler' must be a mapping of scheduler config entries, got {overrides!r}")
    folder = _folder(path) if files else None
    if files and folder is None:
        raise FileNotFoundError(f"diffusers folder {path!r} not found{_where_env()}; save one with internet: "
                                f"DDPMPipeline.from_pretrained('google/ddpm-cifar10-32').save_pretrained({path!r})")
    saved = {}
    if folder is not None and (folder / "scheduler").is_dir():
        saved = read_scheduler_config(folder / "scheduler")
    check_scheduler_config({**saved, **overrides}, where=f"diffusers folder {path!r}")


def load_diffusers_section(section: dict, device: str, dtype: torch.dtype):
    from models.diffusers_adapter import load_diffusers

    model = load_diffusers(_folder(section["path"]), scheduler=section.get("scheduler"))
    model.net.to(device=device, dtype=dtype)
    return model
