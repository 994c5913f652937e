"""ADM checkpoints (a bare ``state_dict``, ``torch.save(model.state_dict())``) and their flags → the
project's networks, strict on keys and shapes, read with ``weights_only=True`` (data, never code).

* :func:`read_state_dict` — the file's tensors (memory-mapped where the file allows);
* :func:`check_state_dict` — the checkpoint against the network the flags build: missing, unexpected
  and differently shaped keys are one ValueError naming the first few (the network is built on the
  ``meta`` device for this, so a grid check costs no memory);
* :func:`load_adm` — a :class:`models.adm.score.ADMScore`; :func:`load_classifier` — an
  :class:`~models.adm.unet.EncoderUNetModel`.

The number of classes comes from the checkpoint (``label_emb.weight`` [num_classes, 4·num_channels];
ADM's ``NUM_CLASSES`` is a module constant, 1000), ``class_cond`` must agree with it; a classifier's
from its output layer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from models.adm.flags import classifier_flags, classifier_kwargs, model_flags, read_flags, unet_kwargs
from models.adm.schedule import adm_path
from models.adm.score import ADMScore
from models.adm.unet import EncoderUNetModel, UNetModel
from models.checkpoint_io import load_weights_only

__all__ = ["read_state_dict", "check_state_dict", "unet_for", "classifier_for", "load_adm", "load_classifier",
           "model_num_classes", "classifier_num_classes"]

_SHOWN = 4  # keys named in a mismatch error
# The classifier head's output layer, per pool: its weight's first dimension is the number of classes.
_CLASSIFIER_OUT = {"adaptive": "out.3.weight", "attention": "out.2.c_proj.weight", "spatial": "out.2.weight",
                   "spatial_v2": "out.3.weight"}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The ``state_dict`` saved at ``path`` (``weights_only=True``; memory-mapped where possible).

    Raises:
        ValueError: not a torch file, objects outside the allowed set, or not a flat dict of tensors.
    """
    path = Path(path)
    state = load_weights_only(path, "an ADM state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        got = type(state).__name__ if not isinstance(state, dict) else "a dict holding non-tensors"
        raise ValueError(f"{path}: an ADM checkpoint is a state_dict (a flat dict of tensors), got {got}")
    return state


def model_num_classes(state: dict[str, Tensor]) -> int | None:
    """Classes of a UNetModel checkpoint (``label_emb.weight``'s rows), None when unconditional."""
    w = state.get("label_emb.weight")
    return None if w is None else int(w.shape[0])


def classifier_num_classes(state: dict[str, Tensor], pool: str) -> int:
    key = _CLASSIFIER_OUT[pool]
    if key not in state:
        raise ValueError(f"no {key!r} in the checkpoint: not an ADM classifier with pool={pool!r}")
    return int(state[key].shape[0])


def check_state_dict(net: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Keys and shapes of ``state`` equal ``net``'s; else ValueError naming the first few differences."""
    ours = net.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    shapes = [f"{k} {list(state[k].shape)} (flags give {list(ours[k].shape)})" for k in ours
              if k in state and tuple(state[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
                parts.append(f"{len(items)} {name}: {', '.join(items[:_SHOWN])}{more}")
        raise ValueError(f"{where}: the state_dict does not match the network its flags build: {'; '.join(parts)}")


def unet_for(flags: dict, state: dict[str, Tensor], where: str, device="meta") -> UNetModel:
    """The UNetModel of checked model ``flags`` with the checkpoint's number of classes, on ``device``."""
    classes = model_num_classes(state)
    if flags["class_cond"] != (classes is not None):
        have = f"has label_emb.weight ({classes} classes)" if classes is not None else "has no label_emb.weight"
        raise ValueError(f"{where}: flag class_cond is {flags['class_cond']} but the checkpoint {have}; "
                         f"expected class_cond: {str(classes is not None).lower()}")
    with torch.device(device):
        return UNetModel(**unet_kwargs(flags, classes))


def classifier_for(flags: dict, state: dict[str, Tensor], where: str, device="meta") -> EncoderUNetModel:
    """The EncoderUNetModel of checked classifier ``flags``, classes from its output layer, on ``device``."""
    try:
        classes = classifier_num_classes(state, flags["classifier_pool"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    with torch.device(device):
        return EncoderUNetModel(**classifier_kwargs(flags, classes))


def _load(net: nn.Module, state: dict, device: str, dtype: torch.dtype) -> nn.Module:
    net = net.to_empty(device="cpu")
    net.load_state_dict(state, strict=True)
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_adm(path: str | Path, flags, clip_denoised: bool = True, device: str = "cpu",
             dtype: torch.dtype = torch.float32) -> ADMScore:
    """An ADM checkpoint with its flags (a dict, or a JSON file) as a score model on ``device`` in ``dtype``.

    Raises:
        ValueError: bad flags; a checkpoint that is no state_dict or does not match them (first keys named).
    """
    where = str(path)
    flags = model_flags(read_flags(flags), f"{where}: flags")
    state = read_state_dict(path)
    net = unet_for(flags, state, where)
    check_state_dict(net, state, where)
    net = _load(net, state, device, dtype)
    return ADMScore(net, adm_path(flags["noise_schedule"], flags["diffusion_steps"]),
                    rescale_timesteps=flags["rescale_timesteps"], clip_denoised=clip_denoised)


def load_classifier(path: str | Path, flags, device: str = "cpu", dtype: torch.dtype = torch.float32
                    ) -> tuple[EncoderUNetModel, dict]:
    """ADM's noisy classifier and its checked flags (``classifier_defaults()`` keys plus the diffusion's)."""
    where = str(path)
    flags = classifier_flags(read_flags(flags), f"{where}: classifier flags")
    state = read_state_dict(path)
    net = classifier_for(flags, state, where)
    check_state_dict(net, state, where)
    return _load(net, state, device, dtype), flags
