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

from bench.kinds.base import CKPT_ENV, ModelFacts, ModelKind, resolve_path
from bench.kinds.edm import KEYS, check_snapshot, load_snapshot, model_files

POSTHOC_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/"


def check(section: dict, files: bool = True) -> None:
    from models.edm2.loader import edm2_label_dim

    name = Path(str(section.get("path"))).name
    check_snapshot(section, files, "EDM2", f"download it from {POSTHOC_URL}{name} (or a network-snapshot-*.pkl "
                   f"of your own EDM2 training run)", edm2_label_dim)


def load(section: dict, device: str, dtype: torch.dtype):
    from models.edm2 import load_edm2

    return load_snapshot(section, device, dtype, load_edm2)


def describe(section: dict, files: bool = True) -> ModelFacts | None:
    """Sample shape and path from the snapshot's stored constructor arguments (tensors unread; None
    without ``files``): what a guide model is checked against at grid load."""
    import math
    from types import SimpleNamespace

    from models.edm.loader import sde_for
    from models.edm.unpickle import plain, read_snapshot

    found = resolve_path(section["path"], CKPT_ENV) if files else None
    if found is None:
        return None
    record = read_snapshot(found, tensors=False)[section.get("key", "ema")]
    kwargs = plain(record.init_kwargs)
    res, channels = int(kwargs["img_resolution"]), int(kwargs["img_channels"])
    net = SimpleNamespace(kind="edm", sigma_min=0.0, sigma_max=math.inf)  # EDM2's Precond: no σ range of its own
    return ModelFacts((channels, res, res), sde_for(net, section.get("sigma_min"), section.get("sigma_max")))


KIND = ModelKind(KEYS, check, load, describe, model_files, null_condition=False)
