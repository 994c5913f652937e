"""What an EDM2 network's samples are, from the snapshot's ``encoder`` entry (NVlabs/edm2
``training/encoders.py``; read as data, never run):

* ``StandardRGBEncoder`` — pixels in [-1, 1]; EDM2 decodes them to uint8 as
  (x·127.5 + 128).clip(0, 255) truncated (:meth:`SampleSpace.to_uint8`).
* ``StabilityVAEEncoder`` — latents of the Stable Diffusion VAE (``vae_name``, e.g.
  ``stabilityai/sd-vae-ft-mse``), normalised per channel as x·scale + bias with the stored float32
  ``scale``/``bias`` (scale = final_std/raw_std, bias = final_mean − raw_mean·scale). The VAE's input is
  (x − bias)/scale (:meth:`SampleSpace.latent_to_vae`); running the VAE decoder is not done here.

A snapshot without an ``encoder`` entry is a pixel model (as ``generate_images.py`` assumes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.edm.unpickle import NDArray, Persistent, plain

__all__ = ["SampleSpace", "ENCODERS", "sample_space_from_record"]

ENCODERS = ("StandardRGBEncoder", "StabilityVAEEncoder")


@dataclass(frozen=True)
class SampleSpace:
    """The encoder of an EDM2 snapshot: its class name and, for latents, the VAE and the per-channel
    float32 ``scale`` and ``bias`` [C] (numpy, as stored)."""

    encoder: str
    vae_name: str | None = None
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None

    @property
    def latent(self) -> bool:
        return self.encoder == "StabilityVAEEncoder"

    def latent_to_vae(self, x: Tensor) -> Tensor:
        """The VAE decoder's input (x − bias)/scale per channel of latents x [B, C, H, W], in float32
        (EDM2's ``StabilityVAEEncoder.decode`` before the VAE)."""
        if not self.latent:
            raise ValueError(f"EDM2 model: the snapshot's encoder is {self.encoder}; its samples are pixels, not "
                             f"VAE latents")
        if x.dim() != 4 or x.shape[1] != len(self.scale):
            raise ValueError(f"EDM2 latent_to_vae: expected latents [B, {len(self.scale)}, H, W], got {list(x.shape)}")
        x = x.to(torch.float32)
        bias = torch.as_tensor(self.bias, device=x.device).reshape(1, -1, 1, 1)
        scale = torch.as_tensor(self.scale, device=x.device).reshape(1, -1, 1, 1)
        return (x - bias) / scale

    def to_uint8(self, x: Tensor) -> Tensor:
        """Pixel samples [B, C, H, W] in [-1, 1] → uint8 [B, C, H, W] as ``StandardRGBEncoder.decode``:
        float32 x·127.5 + 128, clipped to [0, 255], truncated."""
        if self.latent:
            raise ValueError("EDM2 model: latent samples decode through the VAE (latent_to_vae, then the VAE "
                             "decoder), not to_uint8")
        return (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)


def _float32_vector(value, name: str, source: str) -> np.ndarray:
    if not isinstance(value, NDArray) or value.array is None or value.array.ndim != 1:
        raise ValueError(f"{source}: StabilityVAEEncoder.{name} must be a float32 numpy vector, got "
                         f"{type(value).__name__}")
    return value.array


def sample_space_from_record(record, source: str) -> SampleSpace:
    """The :class:`SampleSpace` of a snapshot's ``encoder`` record (None: pixels). ValueError for any
    other class or malformed state, naming the choices."""
    if record is None:
        return SampleSpace("StandardRGBEncoder")
    if not isinstance(record, Persistent) or record.class_name not in ENCODERS:
        name = record.class_name if isinstance(record, Persistent) else type(record).__name__
        raise ValueError(f"{source}: encoder {name!r} is not one the loader knows; expected one of: "
                         f"{', '.join(ENCODERS)}")
    if record.class_name == "StandardRGBEncoder":
        return SampleSpace("StandardRGBEncoder")
    state = record.state
    scale = _float32_vector(state.get("scale"), "scale", source)
    bias = _float32_vector(state.get("bias"), "bias", source)
    vae_name = plain(state.get("vae_name"))
    if not isinstance(vae_name, str) or scale.shape != bias.shape or not bool((scale > 0).all()):
        raise ValueError(f"{source}: StabilityVAEEncoder needs a vae_name string and positive scale / bias vectors "
                         f"of one length; got vae_name={vae_name!r}, scale {scale.shape}, bias {bias.shape}")
    return SampleSpace("StabilityVAEEncoder", vae_name, scale, bias)
