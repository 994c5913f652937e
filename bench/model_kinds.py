"""The ``edm`` and ``diffusers`` model kinds of a grid's model section (registered in
:data:`bench.models.MODEL_KINDS`): their checks (names and files, before anything runs; nothing heavy
is loaded) and loaders.

* ``edm`` — an EDM network pickle (:func:`models.edm.load_edm`, read without executing it): ``path``
  (``network-snapshot-*.pkl`` or a released ``edm-*.pkl``; relative paths are also looked up under
  ``$SCOREBENCH_CKPT_DIR``), ``key`` (default 'ema'), ``label`` (class-conditional networks, below),
  ``sigma_min``/``sigma_max`` (the σ range sampled; default generate.py's 0.002–80, clamped to the
  network's).
* ``diffusers`` — a saved diffusers pipeline folder (``unet/`` + ``scheduler/``) or ``UNet2DModel``
  folder (:func:`models.diffusers_adapter.load_diffusers`, offline): ``path``, ``scheduler`` (entries
  overriding the saved scheduler config, e.g. ``prediction_type``; a model folder's whole schedule),
  ``label`` (a UNet with ``num_class_embeds``).

``label`` (:func:`check_label`): a class index k (every sample asks for class k) or ``'random'`` (one
class per seed, uniform, from a stream of its own: :func:`solvers.noise.seed_labels`). It is required
for a class-conditional network and refused for an unconditional one — both checked when the grid
loads, from the stored constructor arguments / config (nothing heavy is loaded). The harness applies
it per batch (:func:`bench.models.batch_labels`), never at load: the cached network is label-free.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = ["EDM_KEYS", "DIFFUSERS_KEYS", "EDM_PRETRAINED_URL", "RANDOM_LABEL", "check_label", "check_edm",
           "load_edm_section", "check_diffusers", "load_diffusers_section"]

EDM_KEYS = ("path", "key", "label", "sigma_min", "sigma_max")
DIFFUSERS_KEYS = ("path", "scheduler", "label")
RANDOM_LABEL = "random"  # label: random — one class per seed (solvers.noise.seed_labels)
EDM_PRETRAINED_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"


def _where_env() -> str:
    from bench.models import CKPT_ENV

    if os.environ.get(CKPT_ENV):
        return f" (nor under ${CKPT_ENV}={os.environ[CKPT_ENV]})"
    return f" (set ${CKPT_ENV} to the folder holding it)"


# --- class labels (edm, diffusers, callable) ----------------------------------------------------
def check_label(section: dict, label_dim: int | None = None, network: str = "the network") -> None:
    """The section's ``label`` against the model's number of classes (None: not known yet, the value's
    form only). ValueError naming the field and its valid choices."""
    label = section.get("label")
    is_index = isinstance(label, int) and not isinstance(label, bool) and label >= 0
    if label is not None and label != RANDOM_LABEL and not is_index:
        raise ValueError(f"field 'label' must be a class index >= 0 or {RANDOM_LABEL!r} (one class per seed), "
                         f"got {label!r}")
    if label_dim is None:
        return
    choices = f"a class index in 0..{label_dim - 1} or {RANDOM_LABEL!r} (one class per seed)"
    if label_dim == 0 and label is not None:
        raise ValueError(f"field 'label' ({label!r}) given, but {network} is unconditional (label_dim 0); "
                         f"remove 'label'")
    if label_dim > 0 and label is None:
        raise ValueError(f"{network} is class-conditional ({label_dim} classes): field 'label' is required; "
                         f"expected {choices}")
    if is_index and label >= label_dim:
        raise ValueError(f"field 'label' must be {choices}, got {label!r}")


_LABEL_DIMS: dict[tuple, int] = {}


def _edm_label_dim(path: Path, key: str) -> int:
    """label_dim of the snapshot's network (records only, cached per file version)."""
    from models.edm.loader import network_label_dim

    st = path.stat()
    cache_key = (str(path.resolve()), st.st_size, st.st_mtime_ns, key)
    if cache_key not in _LABEL_DIMS:
        _LABEL_DIMS[cache_key] = network_label_dim(path, key)
    return _LABEL_DIMS[cache_key]


# --- edm ------------------------------------------------------------------------------------
def check_edm(section: dict, files: bool = True) -> None:
    from bench.models import CKPT_ENV, resolve_path

    path = section.get("path")
    if not isinstance(path, str):
        raise ValueError(f"field 'path' (the EDM .pkl file) must be a string, got {path!r}")
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
    if files:
        found = resolve_path(path, CKPT_ENV)
        if found is None:
            raise FileNotFoundError(f"EDM snapshot {path!r} not found{_where_env()}; download it from "
                                    f"{EDM_PRETRAINED_URL}{Path(path).name} (or a network-snapshot-*.pkl of your "
                                    f"own EDM training run)")
        check_label(section, _edm_label_dim(found, key), f"the network in {path!r} entry {key!r}")


def load_edm_section(section: dict, device: str, dtype: torch.dtype):
    """The section's network, label-free (the harness conditions it per batch: bench.models.batch_labels)."""
    from bench.models import CKPT_ENV, resolve_path
    from models.edm import load_edm

    return load_edm(resolve_path(section["path"], CKPT_ENV), key=section.get("key", "ema"),
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
    from models.diffusers_adapter import (
        check_scheduler_config,
        class_label_dim,
        read_scheduler_config,
        unet_config,
        unet_folder,
    )

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
    check_label(section)
    saved = {}
    if folder is not None and (folder / "scheduler").is_dir():
        saved = read_scheduler_config(folder / "scheduler")
    check_scheduler_config({**saved, **overrides}, where=f"diffusers folder {path!r}")
    if folder is not None:
        where = f"the UNet in diffusers folder {path!r}"
        check_label(section, class_label_dim(unet_config(unet_folder(folder)), where), where)


def load_diffusers_section(section: dict, device: str, dtype: torch.dtype):
    from models.diffusers_adapter import load_diffusers

    model = load_diffusers(_folder(section["path"]), scheduler=section.get("scheduler"))
    model.net.to(device=device, dtype=dtype)
    return model
