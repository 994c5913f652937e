"""``kind: diffusers`` — a saved diffusers pipeline folder (``unet/`` + ``scheduler/``) or
``UNet2DModel`` folder (:func:`models.diffusers_adapter.load_diffusers`, offline): ``path``,
``scheduler`` (entries overriding the saved scheduler config, e.g. ``prediction_type``; a model
folder's whole schedule), ``label`` (a UNet with ``num_class_embeds``), ``time_mapping`` (how the
network gets its timestep: a key of :data:`models.discrete.TIME_MAPPINGS`; default 'log_sigma', for
flow-matching models 'flow'; written into the section, so every record states it)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.kinds.base import ModelFacts, ModelKind, check_label, resolve_folder, where_env

KEYS = ("path", "scheduler", "label", "time_mapping")


def check(section: dict, files: bool = True) -> None:
    from models.diffusers_adapter import class_label_dim, model_spec, unet_config, unet_folder

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
    model_spec(_config(folder, overrides), section.get("time_mapping"), where=f"diffusers folder {path!r}")
    if folder is not None:
        where = f"the UNet in diffusers folder {path!r}"
        check_label(section, class_label_dim(unet_config(unet_folder(folder)), where), where)


def _config(folder: Path | None, overrides: dict) -> dict:
    """The saved scheduler config (where the folder has one) with the section's overrides."""
    from models.diffusers_adapter import read_scheduler_config

    saved = {}
    if folder is not None and (folder / "scheduler").is_dir():
        saved = read_scheduler_config(folder / "scheduler")
    return {**saved, **overrides}


def resolve(section: dict, files: bool = True) -> dict:
    """The section with its time mapping written in (the model's default where not given)."""
    from models.diffusers_adapter import model_spec

    if "time_mapping" in section or not files:
        return section
    folder = resolve_folder(section["path"])
    spec = model_spec(_config(folder, section.get("scheduler", {})), None)
    return {**section, "time_mapping": spec["mapping"]}


def describe(section: dict, files: bool = True) -> ModelFacts | None:
    """Sample shape (the UNet's config) and path (its scheduler config) without loading the weights."""
    from models.diffusers_adapter import model_spec, sample_shape, unet_config, unet_folder

    folder = resolve_folder(section["path"]) if files else None
    if folder is None:
        return None
    spec = model_spec(_config(folder, section.get("scheduler", {})), section.get("time_mapping"))
    return ModelFacts(sample_shape(unet_config(unet_folder(folder))), spec["path"])


def load(section: dict, device: str, dtype: torch.dtype):
    from models.diffusers_adapter import load_diffusers

    return load_diffusers(resolve_folder(section["path"]), scheduler=section.get("scheduler"),
                          time_mapping=section.get("time_mapping"), device=device, dtype=dtype)


def model_files(section: dict) -> dict[str, Path]:
    folder = resolve_folder(section["path"]) if isinstance(section.get("path"), str) else None
    return {"checkpoint": folder} if folder is not None else {}


KIND = ModelKind(KEYS, check, load, describe, model_files, resolve)
