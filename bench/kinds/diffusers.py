"""``kind: diffusers`` — a saved diffusers pipeline folder (``unet/`` + ``scheduler/``) or
``UNet2DModel`` folder (:func:`models.diffusers_adapter.load_diffusers`, offline): ``path``,
``scheduler`` (entries overriding the saved scheduler config, e.g. ``prediction_type``; a model
folder's whole schedule), ``label`` (a UNet with ``num_class_embeds``)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.kinds.base import ModelKind, check_label, resolve_folder, where_env

KEYS = ("path", "scheduler", "label")


def check(section: dict, files: bool = True) -> None:
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
    folder = resolve_folder(path) if files else None
    if files and folder is None:
        raise FileNotFoundError(f"diffusers folder {path!r} not found{where_env()}; save one with internet: "
                                f"DDPMPipeline.from_pretrained('google/ddpm-cifar10-32').save_pretrained({path!r})")
    check_label(section)
    saved = {}
    if folder is not None and (folder / "scheduler").is_dir():
        saved = read_scheduler_config(folder / "scheduler")
    check_scheduler_config({**saved, **overrides}, where=f"diffusers folder {path!r}")
    if folder is not None:
        where = f"the UNet in diffusers folder {path!r}"
        check_label(section, class_label_dim(unet_config(unet_folder(folder)), where), where)


def load(section: dict, device: str, dtype: torch.dtype):
    from models.diffusers_adapter import load_diffusers

    model = load_diffusers(resolve_folder(section["path"]), scheduler=section.get("scheduler"))
    model.net.to(device=device, dtype=dtype)
    return model


def model_files(section: dict) -> dict[str, Path]:
    folder = resolve_folder(section["path"]) if isinstance(section.get("path"), str) else None
    return {"checkpoint": folder} if folder is not None else {}


KIND = ModelKind(KEYS, check, load, files=model_files)
