"""Inception features exactly as clean-fid takes them, from clean-fid's TorchScript file.

Both modes use NVIDIA's TorchScript port of the TF Inception graph, ``inception-2015-12-05.pt``
(see :mod:`bench.metrics.assets`). It takes images in [0, 255] and returns 2048 pool_3 features.

* ``legacy_tensorflow`` (default; the mode of published diffusion FIDs): the image goes into the
  network at its own resolution and the network resizes it to 299×299 inside (the TF-style
  bilinear resize and ``(x − 128) / 128`` of the original graph), i.e. clean-fid's
  ``build_resizer('legacy_tensorflow')`` is the identity and ``InceptionV3W(resize_inside=True)``
  calls ``base(x, return_features=True)``.
* ``clean``: each channel is resized on the CPU with PIL bicubic in float mode ('F') to 299×299 and
  clipped to [0, 255] (clean-fid's ``make_resizer('PIL', False, 'bicubic', (299, 299))``), then
  normalised as ``(x − 128) / 128`` and passed through the network's ``layers`` submodule.

Samples are first quantised to uint8 as an image file would hold them (:func:`quantize_uint8`).
Grayscale images are repeated to three channels, as PIL's ``convert('RGB')`` does when clean-fid
reads a grayscale file.

Backends: where clean-fid imports (``pip install scorebench[fid]`` with a CUDA build of torch and
torchvision), its ``InceptionV3W`` and ``build_resizer`` do the work (``backend='cleanfid'``);
otherwise (a CPU-only torch, where PyPI's torchvision cannot import and so neither can clean-fid)
the project makes the same calls on the same TorchScript file (``backend='scorebench'``).
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bench.metrics.assets import INCEPTION_FILE, MODES, find_inception

__all__ = ["BACKENDS", "InceptionFeatures", "cleanfid_available", "file_sha256", "quantize_uint8", "resize_clean"]

BACKENDS = ("auto", "cleanfid", "scorebench")
ROUNDINGS = ("round", "truncate")
CLEAN_SIZE = (299, 299)


def quantize_uint8(x: Tensor, data_range: tuple[float, float] = (0.0, 1.0), rounding: str = "round") -> Tensor:
    """Samples [B, C, H, W] in ``data_range`` → uint8 [B, C, H, W] as stored in an image file.

    Args:
        x: float samples.
        data_range: the (low, high) that map to 0 and 255.
        rounding: ``'round'`` (default): ⌊255·x + ½⌋ clipped to [0, 255], what saving a PNG with
            ``torchvision.utils.save_image`` writes and what StyleGAN's
            ``(img·127.5 + 128).clamp(0, 255).to(uint8)`` gives the generators clean-fid evaluates.
            ``'truncate'``: score_sde's ``np.clip(x·255, 0, 255).astype(uint8)``, for reproducing
            its numbers (biases every pixel down by half a level on average).

    Raises:
        ValueError: on an unknown rounding or non-finite samples.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of: {', '.join(ROUNDINGS)}")
    if x.dtype == torch.uint8:
        return x
    lo, hi = data_range
    x01 = (x.detach().to(torch.float64) - lo) / (hi - lo)
    if not torch.isfinite(x01).all():
        raise ValueError("samples contain non-finite values")
    scaled = x01 * 255.0 + (0.5 if rounding == "round" else 0.0)
    return scaled.clamp(0.0, 255.0).floor().to(torch.uint8)


def resize_clean(images: Tensor) -> Tensor:
    """clean-fid's ``clean`` resize: uint8 [B, 3, H, W] → float32 [B, 3, 299, 299] (PIL bicubic, 'F')."""
    out = np.empty((images.shape[0], 3, *CLEAN_SIZE), dtype=np.float32)
    arr = images.cpu().numpy()
    for b in range(arr.shape[0]):
        for c in range(3):
            img = Image.fromarray(arr[b, c].astype(np.float32))  # mode 'F'
            out[b, c] = np.asarray(img.resize(CLEAN_SIZE, resample=Image.BICUBIC)).clip(0, 255)
    return torch.from_numpy(out)


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: float) -> str:
    del size, mtime  # cache keys only
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (cached per path, size and modification time)."""
    st = Path(path).stat()
    return _sha256(str(path), st.st_size, st.st_mtime)


def cleanfid_available() -> bool:
    """Whether clean-fid's feature code imports here (it needs a working torchvision)."""
    try:
        import cleanfid.features  # noqa: F401
        import cleanfid.inception_torchscript  # noqa: F401
        import cleanfid.resize  # noqa: F401
    except Exception:  # ImportError, or torchvision's own errors on a mismatched torch build
        return False
    return True


class InceptionFeatures:
    """2048-d pool_3 features of uint8 images, clean-fid's way.

    Args:
        mode: ``'legacy_tensorflow'`` or ``'clean'``.
        weights: the TorchScript file or its folder; default: looked up (:func:`find_inception`).
        device: where the network runs.
        backend: ``'auto'`` (clean-fid where it imports), ``'cleanfid'`` or ``'scorebench'``.
        batch_size: images per network call.

    Raises:
        MissingAssetError: where the TorchScript file is not on this machine.
        ValueError: on an unknown mode or backend, or clean-fid requested where it cannot import.
    """

    dim = 2048

    def __init__(self, mode: str = "legacy_tensorflow", weights: str | Path | None = None,
                 device: str | torch.device = "cpu", backend: str = "auto", batch_size: int = 100) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown FID mode {mode!r}; expected one of: {', '.join(MODES)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
        self.mode, self.device, self.batch_size = mode, torch.device(device), batch_size
        self.path = find_inception(weights)
        if backend == "auto":
            backend = "cleanfid" if cleanfid_available() else "scorebench"
        if backend == "cleanfid":
            if not cleanfid_available():
                raise ValueError("backend='cleanfid' but clean-fid does not import here "
                                 "(pip install scorebench[fid]; it needs a working torchvision)")
            if self.path.name != INCEPTION_FILE:
                raise ValueError(f"clean-fid loads '{INCEPTION_FILE}' from a folder; got the file {self.path}")
            from cleanfid.inception_torchscript import InceptionV3W
            from cleanfid.resize import build_resizer

            self.net = InceptionV3W(str(self.path.parent), download=False,
                                    resize_inside=mode == "legacy_tensorflow").to(self.device).eval()
            self._resizer = build_resizer(mode)
        else:
            with warnings.catch_warnings():  # the file is TorchScript: there is no other way to load it
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        self.backend = backend

    def protocol(self) -> dict:
        """The feature network's part of a metric's protocol record."""
        return {"feature_network": f"TorchScript Inception-v3 ({self.path.name}, pool_3, 2048-d)",
                "feature_network_path": str(self.path), "feature_network_sha256": file_sha256(self.path),
                "mode": self.mode, "backend": self.backend}

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """uint8 images [B, C, H, W] (C = 1 or 3) → float32 features [B, 2048] on the network's device."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images [B, 1|3, H, W], got {images.dtype} {list(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        chunks = [self._features(images[i:i + self.batch_size]) for i in range(0, images.shape[0], self.batch_size)]
        return torch.cat(chunks)

    def _features(self, x: Tensor) -> Tensor:
        bs = x.shape[0]
        if self.backend == "cleanfid":
            if self.mode != "legacy_tensorflow":
                # Per image, as clean-fid's get_model_features / CleanFID.compute_features do.
                hwc = x.cpu().numpy().transpose(0, 2, 3, 1)
                x = torch.from_numpy(np.stack([self._resizer(im).transpose(2, 0, 1) for im in hwc]))
            return self.net(x.to(self.device)).view(bs, self.dim)
        if self.mode == "legacy_tensorflow":
            return self.net(x.to(self.device, torch.float32), return_features=True).view(bs, self.dim)
        x = resize_clean(x).to(self.device)
        return self.net.layers.forward((x - 128) / 128).view(bs, self.dim)
