"""``kind: edm2`` — an EDM2 snapshot (Karras et al. 2024; :func:`models.edm2.load_edm2`, read without
executing it): ``path`` (a post-hoc EMA reconstruction ``edm2-img*-*.pkl`` or a
``network-snapshot-*.pkl``; relative paths are also looked up under ``$SCOREBENCH_CKPT_DIR``),
``key`` (default 'ema'), ``label`` (the released ImageNet models are class-conditional:
:func:`bench.kinds.base.check_label`), ``sigma_min``/``sigma_max`` (the σ range sampled; default
generate_images.py's 0.002–80). Pixel models (``edm2-img64-*``) sample images in [-1, 1]; latent
models (``edm2-img512-*``) sample Stable Diffusion VAE latents (the model's ``latent_to_vae``)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.kinds.base import CKPT_ENV, ModelKind, check_label, resolve_path, where_env
from bench.kinds.edm import KEYS, check_fields, model_files

POSTHOC_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/"

_LABEL_DIMS: dict[tuple, int] = {}


def _label_dim(path: Path, key: str) -> int:
    """label_dim of the snapshot's network (records only, cached per file version)."""
    from models.edm2.loader import edm2_label_dim

    st = path.stat()
    cache_key = (str(path.resolve()), st.st_size, st.st_mtime_ns, key)
    if cache_key not in _LABEL_DIMS:
        _LABEL_DIMS[cache_key] = edm2_label_dim(path, key)
    return _LABEL_DIMS[cache_key]


def check(section: dict, files: bool = True) -> None:
    check_fields(section, "EDM2")
    path, key = section["path"], section.get("key", "ema")
    if files:
        found = resolve_path(path, CKPT_ENV)
        if found is None:
            raise FileNotFoundError(f"EDM2 snapshot {path!r} not found{where_env()}; download it from "
                                    f"{POSTHOC_URL}{Path(path).name} (or a network-snapshot-*.pkl of your own "
                                    f"EDM2 training run)")
        check_label(section, _label_dim(found, key), f"the network in {path!r} entry {key!r}")


def load(section: dict, device: str, dtype: torch.dtype):
    """The section's network, label-free (the harness conditions it per batch: bench.models.batch_labels)."""
    from models.edm2 import load_edm2

    return load_edm2(resolve_path(section["path"], CKPT_ENV), key=section.get("key", "ema"),
                     sigma_min=section.get("sigma_min"), sigma_max=section.get("sigma_max"), device=device,
                     dtype=dtype)


KIND = ModelKind(KEYS, check, load, files=model_files)
