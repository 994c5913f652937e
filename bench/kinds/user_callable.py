"""``kind: callable`` — ``target: 'package.module:function'`` called with ``options``; it returns any
score model (an extension point for user models, and how the tests inject failing models). ``label``:
the model's classes are known once it is loaded (checked per batch by :func:`bench.models.batch_labels`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from bench.kinds.base import ModelKind, check_label

KEYS = ("target", "options", "label")


def import_target(target: str) -> Callable:
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(f"field 'target' must be 'package.module:function', got {target!r}")
    module, _, name = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import model target {target!r}: {e}") from e
    return fn


def load(section: dict, device: str, dtype: torch.dtype):
    return import_target(section["target"])(**section.get("options", {}))


def check(section: dict, files: bool = True) -> None:
    del files
    import_target(section.get("target"))
    check_label(section)


KIND = ModelKind(KEYS, check, load)
