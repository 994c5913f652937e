"""``kind: official`` — an official score_sde checkpoint (:func:`models.checkpoints.load_official`):
``checkpoint`` (a path; relative paths are also looked up under ``$SCOREBENCH_CKPT_DIR``), ``config``
(e.g. 'vp/cifar10_ddpmpp_continuous'), ``ema``, ``overrides`` (network arguments)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.kinds.base import CKPT_ENV, ModelFacts, ModelKind, resolve_path, where_env
from bench.kinds.checkpoint import peek
from models.sde import make_sde

KEYS = ("checkpoint", "config", "ema", "overrides")


def load(section: dict, device: str, dtype: torch.dtype):
    from models.checkpoints import load_official

    path = resolve_path(section["checkpoint"], CKPT_ENV)
    model = load_official(path, section["config"], ema=section.get("ema", True), device=device,
                          **section.get("overrides", {}))
    model.net.to(dtype=dtype)
    return model


def check(section: dict, files: bool = True) -> None:
    from models.checkpoints import OFFICIAL_CHECKPOINTS_URL
    from models.configs import get_config

    if not isinstance(section.get("config"), str):
        raise ValueError("field 'config' (the score_sde config name, e.g. 'vp/cifar10_ddpmpp_continuous') is required")
    get_config(section["config"])
    ckpt = section.get("checkpoint")
    if not isinstance(ckpt, str):
        raise ValueError(f"field 'checkpoint' (path of the official .pth file) must be a string, got {ckpt!r}")
    if files and resolve_path(ckpt, CKPT_ENV) is None:
        raise FileNotFoundError(
            f"official checkpoint {ckpt!r} not found{where_env()}; download {section['config']}/checkpoint_<n>.pth "
            f"from the score_sde_pytorch Google Drive folder ({OFFICIAL_CHECKPOINTS_URL})")
    if files:
        try:
            peek(resolve_path(ckpt, CKPT_ENV), "official")
        except ValueError as e:
            raise ValueError(f"field 'checkpoint': {e}") from e


def describe(section: dict, files: bool = True) -> ModelFacts:
    del files
    from models.configs import get_config

    config = get_config(section["config"])
    return ModelFacts(tuple(config.shape), make_sde(**config.sde))


def model_files(section: dict) -> dict[str, Path]:
    path = resolve_path(section["checkpoint"], CKPT_ENV) if isinstance(section.get("checkpoint"), str) else None
    return {"checkpoint": path} if path is not None else {}


KIND = ModelKind(KEYS, check, load, describe, model_files, null_condition=False)
