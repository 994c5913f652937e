"""Loading official score_sde_pytorch checkpoints into the project's networks.

An official checkpoint is ``torch.save({'model', 'ema', 'optimizer', 'step'})`` of a model wrapped
in ``DataParallel`` (shared/REFERENCE.md §1.8):

* ``model``: the state dict, every key prefixed with ``module.``;
* ``ema``: ``{'decay', 'num_updates', 'shadow_params'}``, where ``shadow_params[i]`` belongs to the
  i-th parameter of ``[p for p in model.parameters() if p.requires_grad]``. The fixed Fourier
  ``W`` and the ``sigmas`` buffer are not in that list; they come from ``model`` only.

The loader strips the prefix, checks the keys, shapes and the EMA list strictly, and raises a
ValueError naming the first mismatches instead of loading part of a checkpoint (the official
``strict=False`` load into an unwrapped model silently loads nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.configs import get_config
from models.score import NetworkScore

__all__ = ["load_official", "apply_official_state", "OFFICIAL_CHECKPOINTS_URL"]

OFFICIAL_CHECKPOINTS_URL = "https://drive.google.com/drive/folders/1tFmF_uh57O6lx9ggtZT_5LdonVK2cV-e"
_PREFIX = "module."
_SHOW = 5  # mismatching keys listed in an error


def _first(items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def _strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len(_PREFIX) :] if k.startswith(_PREFIX) else k: v for k, v in state.items()}


def _check_state(net: nn.Module, state: Mapping[str, Any], where: str) -> None:
    """Raise ValueError unless ``state`` has exactly the keys, shapes and value types of ``net``."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    not_tensor = [k for k in state if k in expected and not isinstance(state[k], Tensor)]
    wrong_shape = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(expected[k].shape)})"
        for k in expected
        if k in state and k not in not_tensor and state[k].shape != expected[k].shape
    ]
    problems = [
        f"{len(missing)} missing key(s): {_first(missing)}" if missing else "",
        f"{len(unexpected)} unexpected key(s): {_first(unexpected)}" if unexpected else "",
        f"{len(not_tensor)} non-tensor value(s): {_first(not_tensor)}" if not_tensor else "",
        f"{len(wrong_shape)} shape mismatch(es): {_first(wrong_shape)}" if wrong_shape else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"{where} does not match the network: " + "; ".join(problems))


def _check_ema(trainable: list[nn.Parameter], ema: Any, where: str) -> list[Tensor]:
    """The EMA shadow list, after checking its length and shapes against the trainable parameters."""
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, list | tuple):
        raise ValueError(f"{where}: 'ema' has no 'shadow_params' list (got {type(ema).__name__}); pass ema=False "
                         "to use the raw weights")  # fmt: skip
    if len(shadow) != len(trainable):
        raise ValueError(
            f"{where}: EMA list has {len(shadow)} tensors but the network has {len(trainable)} trainable "
            "parameters (shadow_params follow [p for p in model.parameters() if p.requires_grad])"
        )
    wrong = [
        f"#{i} (checkpoint {list(s.shape) if isinstance(s, Tensor) else type(s).__name__}, model {list(p.shape)})"
        for i, (s, p) in enumerate(zip(shadow, trainable))
        if not isinstance(s, Tensor) or s.shape != p.shape
    ]
    if wrong:
        raise ValueError(f"{where}: {len(wrong)} EMA shadow tensor(s) do not match the parameters: {_first(wrong)}")
    return list(shadow)


def apply_official_state(net: nn.Module, ckpt: Any, *, ema: bool = True, where: str = "checkpoint") -> nn.Module:
    """Load an official checkpoint dict into ``net`` (in place) after strict checks.

    Args:
        net: a freshly built network of the checkpoint's architecture.
        ckpt: the loaded checkpoint, ``{'model': state dict with 'module.' keys, 'ema': {...}, ...}``.
        ema: copy the EMA shadow parameters onto the trainable parameters (what sampling uses).
        where: a name for error messages (e.g. the path).

    Returns:
        ``net`` in eval mode.

    Raises:
        ValueError: the checkpoint is not a dict with 'model' (and 'ema'), or its keys, shapes or EMA
            list do not match ``net``; nothing is loaded then.
    """
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        got = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(f"{where} is not an official score_sde checkpoint: expected a dict with 'model' "
                         f"(and 'ema'), got {got}")  # fmt: skip
    state = _strip_prefix(ckpt["model"])
    _check_state(net, state, where)
    trainable = [p for p in net.parameters() if p.requires_grad]
    shadow = _check_ema(trainable, ckpt.get("ema"), where) if ema else None
    net.load_state_dict(state, strict=True)
    if shadow is not None:
        with torch.no_grad():
            for p, s in zip(trainable, shadow):
                p.copy_(s)
    return net.eval()


def load_official(
    path: str | Path, config_name: str, *, ema: bool = True, device: str | torch.device = "cpu", **overrides: Any
) -> NetworkScore:
    """Load an official score_sde_pytorch checkpoint as a score model.

    Args:
        path: local path of the ``checkpoint_<n>.pth`` file.
        config_name: the config it was trained with, e.g. 've/cifar10_ncsnpp_continuous'.
        ema: use the EMA weights (as the official evaluation does); False uses ``ckpt['model']``.
        device: where to put the network.
        **overrides: network constructor overrides for non-default widths (e.g. ``nf=16``).

    Returns:
        A :class:`NetworkScore` with the config's SDE, time-label convention, data range and shape.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says where checkpoints come from).
        ValueError: unknown config, unreadable file, or a checkpoint that does not match the network.
    """
    config = get_config(config_name)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"official checkpoint {str(path)!r} not found. Official score_sde checkpoints are in the "
            f"score_sde_pytorch Google Drive folder listed in its README ({OFFICIAL_CHECKPOINTS_URL}), "
            f"e.g. {config.name}/checkpoint_<n>.pth; download it and pass its local path."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupted or non-torch files
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    net = config.build(**overrides)
    settings = ", ".join([repr(config.name), *(f"{k}={v}" for k, v in overrides.items())])
    where = f"checkpoint {path} (config {settings})"
    apply_official_state(net, ckpt, ema=ema, where=where)
    net.to(device)
    return NetworkScore(
        net,
        config.make_sde(),
        shape=config.shape,
        data_range=config.data_range,
        time_label=config.time_label,
        num_scales=config.num_scales,
    )
