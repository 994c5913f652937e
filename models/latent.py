"""Decoding a latent model's samples into images: the model's VAE decoder, run in chunks.

A latent diffusion model (Stable Diffusion, DiT, PixArt, SD3, FLUX, EDM2's ``img512`` models) samples
latents z; the images it stands for are ``vae.decode(to_vae(z))`` of its VAE (diffusers
``AutoencoderKL``). The conversion ``to_vae`` is the model's own:

==================  ==========================================  ===============================
model               VAE input                                   reference
==================  ==========================================  ===============================
SD 1.x/2.x, DiT,    z / scaling_factor                          diffusers' pipelines
PixArt, SDXL
SD3, FLUX           z / scaling_factor + shift_factor           ``StableDiffusion3Pipeline``,
                                                                ``FluxPipeline``
EDM2 (latent)       (z − bias) / scale per channel              EDM2 ``StabilityVAEEncoder``
                                                                (:meth:`models.edm2.encoders.SampleSpace.latent_to_vae`)
==================  ==========================================  ===============================

The decoder's output is an image in [-1, 1] (the pipelines map it by x/2 + ½ to [0, 1]). Decoding is
not a denoiser evaluation: every chunk is one call of the ``vae_decoder`` network in the run's
:class:`~models.tally.Tally` (calls and rows), never an NFE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from models.tally import CountedNetwork, Tally

__all__ = ["VAEDecoder", "scaled_latents", "vae_scale_factor", "load_vae"]


def scaled_latents(scaling_factor: float, shift_factor: float | None = None) -> Callable[[Tensor], Tensor]:
    """z ↦ z / scaling_factor (+ shift_factor): diffusers' pipelines' VAE input."""
    shift = float(shift_factor or 0.0)

    def to_vae(z: Tensor) -> Tensor:
        return z / scaling_factor + shift if shift else z / scaling_factor

    return to_vae


def vae_scale_factor(vae_config: dict) -> int:
    """How many pixels one latent cell spans per side: 2^(number of VAE blocks − 1), as the pipelines compute it."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


class _Decode(nn.Module):
    """``vae.decode(z).sample``: the VAE decoder as one module, so that :class:`CountedNetwork` counts it."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: Tensor) -> Tensor:
        return self.vae.decode(z).sample


class VAEDecoder:
    """Latents → images in [-1, 1]: ``vae.decode(to_vae(z))`` in chunks of ``chunk`` rows (halved on a
    CUDA out-of-memory error, down to one row), each chunk one counted call of ``vae_decoder``.

    Args:
        vae: a diffusers ``AutoencoderKL`` (eval mode; its dtype and device are used).
        to_vae: the model's latent → VAE-input conversion (module docstring).
        tally: the run's per-network counter.
        chunk: rows decoded per call.
    """

    def __init__(self, vae: nn.Module, to_vae: Callable[[Tensor], Tensor], tally: Tally, chunk: int = 8) -> None:
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"VAEDecoder: chunk must be a positive integer, got {chunk!r}")
        self.vae = vae.eval()
        self.net = CountedNetwork(_Decode(self.vae), tally, "vae_decoder")
        self.to_vae, self.chunk = to_vae, chunk
        self.scale_factor = vae_scale_factor(dict(vae.config))
        self.channels = int(vae.config.out_channels)

    def image_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        """One decoded image's shape (C, H, W) for latents of ``latent_shape`` (C_z, h, w)."""
        return (self.channels, *(int(s) * self.scale_factor for s in latent_shape[1:]))

    @torch.no_grad()
    def __call__(self, z: Tensor) -> Tensor:
        """Images [B, C, H, W] in the VAE's dtype (float32 where the VAE is float32) from latents z [B, ...]."""
        param = next(self.vae.parameters())
        out, lo = [], 0
        while lo < z.shape[0]:
            part = z[lo:lo + self.chunk].to(device=param.device)
            try:
                out.append(self.net(self.to_vae(part.float()).to(param.dtype)))
            except torch.cuda.OutOfMemoryError:
                if self.chunk == 1:
                    raise
                self.chunk = max(1, self.chunk // 2)
                torch.cuda.empty_cache()
                continue
            lo += part.shape[0]
        return torch.cat(out)


def load_vae(folder, device: str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """A saved diffusers ``AutoencoderKL`` folder (``config.json`` + weights, or a pipeline's ``vae/``), offline."""
    from pathlib import Path

    from diffusers import AutoencoderKL

    folder = Path(folder)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no AutoencoderKL folder (expected {folder / 'config.json'}); save one with "
                                f"internet: AutoencoderKL.from_pretrained('stabilityai/sd-vae-ft-mse')"
                                f".save_pretrained('{folder}')")
    return AutoencoderKL.from_pretrained(folder, local_files_only=True, torch_dtype=dtype).to(device).eval()
