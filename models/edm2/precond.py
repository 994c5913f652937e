"""EDM2's preconditioning (Karras et al. 2024; EDM's Eq. 7 with σ_data = 0.5) around its U-Net:
D(x; σ) = c_skip x + c_out F(c_in x; ¼ log σ, labels), with c_skip = σ_d²/(σ² + σ_d²),
c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²). Written for this project (NVlabs/edm2
``training/networks_edm2.py`` is the reference).

Called ``D(x [B, C, H, W], sigma [B] or [], class_labels [1 or B, label_dim] or None)``, in the
parameters' dtype. Labels as EDM2: ignored by an unconditional network; zeros [1, label_dim] when a
conditional one is called without (not the same as an unconditional network). ``use_fp16`` is
stored but not honoured (EDM2 uses it on CUDA only; the harness' ``eval.accel.autocast`` is the
reduced-precision path).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.edm2.layers import MPConv, MPFourier
from models.edm2.unet import UNet

__all__ = ["Precond", "PRECONDS"]


class Precond(nn.Module):
    """EDM2's ``Precond``: the denoiser D(x; σ) of a :class:`~models.edm2.unet.UNet`, plus the learned
    uncertainty log u(σ) (``logvar``; training only, never used by a sampler)."""

    kind = "edm"  # EDM's formulation: the VE SDE in σ (models.edm.loader.sde_for)
    sigma_min = 0.0  # no σ range of its own: generate_images.py samples σ ∈ [0.002, 80]
    sigma_max = math.inf

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool = True,
                 sigma_data: float = 0.5, logvar_channels: int = 128, **unet_kwargs) -> None:
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise) at σ [B, 1, 1, 1]; c_noise flattened to [B]."""
        sd = self.sigma_data
        return (sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt(), 1 / (sd**2 + sigma**2).sqrt(),
                sigma.flatten().log() / 4)

    def labels(self, class_labels: Tensor | None, device) -> Tensor | None:
        """The labels the U-Net is fed (EDM2's rule; module docstring)."""
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros(1, self.label_dim, dtype=self.dtype, device=device)
        return class_labels.to(self.dtype).reshape(-1, self.label_dim)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        dtype = self.dtype
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, device=x.device).to(dtype).reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.unet(c_in * x, c_noise, self.labels(class_labels, x.device))
        return c_skip * x + c_out * F_x

    def logvar(self, sigma: Tensor) -> Tensor:
        """log u(σ) [B, 1, 1, 1] (EDM2's ``return_logvar``, Eq. 21 of the paper)."""
        sigma = torch.as_tensor(sigma).to(self.dtype).reshape(-1, 1, 1, 1)
        return self.logvar_linear(self.logvar_fourier(sigma.flatten().log() / 4)).reshape(-1, 1, 1, 1)


PRECONDS: dict[str, type] = {"Precond": Precond}
