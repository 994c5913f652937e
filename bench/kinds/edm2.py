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

from bench.kinds.base import ModelKind
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


KIND = ModelKind(KEYS, check, load, files=model_files)
