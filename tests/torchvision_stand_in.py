"""TEST-ONLY stand-in for the torchvision names clean-fid 0.1.35 touches, so that its own code runs here.

Not torchvision. PyPI's torchvision wheels are CUDA builds that do not load on the CPU torch this
project pins, and clean-fid imports torchvision in two modules:

* ``cleanfid/utils.py``: ``torchvision.transforms.ToTensor()`` in its folder dataset
  (``ResizeDataset``). The stand-in's :class:`ToTensor` does what torchvision's does to the NumPy
  arrays clean-fid passes (``functional.to_tensor``): HWC → CHW, and uint8 → float32 divided by 255;
  any other dtype is returned as it is. (clean-fid multiplies uint8 images back by 255, exact in
  float32 for every k in 0..255.)
* ``cleanfid/inception_pytorch.py``: torchvision's Inception blocks as base classes, for the
  ``legacy_pytorch`` mode only (pytorch-fid's network). The stand-in's classes exist so the module
  imports; constructing one raises, since that mode is not used here.

:func:`torchvision_stand_in` puts these modules into ``sys.modules`` for the duration of a ``with``
block and removes them (and every ``cleanfid`` module imported inside) afterwards, so no other test
sees clean-fid or a torchvision. The installed ``torchvision`` distribution beside the project
(tests/stand_ins/torchvision) is name-only: it installs no module.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

__version__ = "0+scorebench.test.stand.in"


class ToTensor:
    """torchvision.transforms.ToTensor for NumPy arrays: [H, W, C] (or [H, W]) → [C, H, W] tensor;
    uint8 is converted to the default float dtype and divided by 255."""

    def __call__(self, pic: np.ndarray) -> torch.Tensor:
        if not isinstance(pic, np.ndarray):
            raise TypeError(f"the test-only ToTensor takes NumPy arrays, got {type(pic).__name__}")
        if pic.ndim == 2:
            pic = pic[:, :, None]
        img = torch.from_numpy(pic.transpose((2, 0, 1))).contiguous()
        if img.dtype == torch.uint8:
            return img.to(dtype=torch.get_default_dtype()).div(255)
        return img


class _NotAvailable(nn.Module):
    def __init__(self, *args, **kwargs) -> None:
        raise RuntimeError("test-only torchvision stand-in: torchvision's Inception (clean-fid's legacy_pytorch "
                           "mode) is not available here")


def _not_available(*args, **kwargs):
    _NotAvailable()


def _modules() -> dict[str, types.ModuleType]:
    root = types.ModuleType("torchvision", "TEST-ONLY torchvision stand-in (tests/torchvision_stand_in.py)")
    transforms = types.ModuleType("torchvision.transforms")
    models = types.ModuleType("torchvision.models")
    inception = types.ModuleType("torchvision.models.inception")
    transforms.ToTensor = ToTensor
    for name in ("InceptionA", "InceptionC", "InceptionE"):
        setattr(inception, name, type(name, (_NotAvailable,), {}))
    models.inception = inception
    models.inception_v3 = _not_available
    root.__version__, root.transforms, root.models = __version__, transforms, models
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.models": models,
            "torchvision.models.inception": inception}


@contextmanager
def torchvision_stand_in() -> Iterator[None]:
    """Inside the block, ``import torchvision`` (and so ``import cleanfid...``) gets the stand-in."""
    stand_in = _modules()
    clashes = [name for name in stand_in if name in sys.modules]
    if clashes:
        raise RuntimeError(f"a torchvision is already imported ({', '.join(clashes)}); the stand-in would hide it")
    sys.modules.update(stand_in)
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n in stand_in or n == "cleanfid" or n.startswith("cleanfid.")]:
            del sys.modules[name]
