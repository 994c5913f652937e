"""EDM's preconditionings (Karras et al. 2022, Table 1): the denoiser
D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ)) around a U-Net F, for networks trained
in the VP, VE and EDM formulations. Written for this project (NVlabs/edm ``training/networks.py``
is the reference); the coefficients are evaluated in the network's dtype as EDM evaluates them in
float32 (VP's c_noise is float32-sensitive at small σ, so the same expression is kept, without
``log1p``).

Called ``D(x [B, C, H, W], sigma [B] or [], class_labels [B, label_dim] or None,
augment_labels=None)``; x and σ are cast to the network's dtype and D is returned in it.
``use_fp16`` is stored but not honoured: the network runs in its parameters' dtype (the harness'
``eval.accel.autocast`` is the reduced-precision path).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.edm.networks import UNETS

__all__ = ["VPPrecond", "VEPrecond", "EDMPrecond", "PRECONDS"]


class _Precond(nn.Module):
    """What the three preconditionings share: the inner U-Net and the denoiser formula."""

    kind = ""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 model_type: str = "SongUNet", out_channels: int | None = None, **model_kwargs) -> None:
        super().__init__()
        if model_type not in UNETS:
            raise ValueError(f"{type(self).__name__}: unknown model_type {model_type!r}; expected one of: "
                             f"{', '.join(UNETS)}")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16
        self.model = UNETS[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                       out_channels=out_channels or img_channels, label_dim=label_dim, **model_kwargs)

    def coefficients(self, sigma: Tensor) -> tuple:
        """(c_skip, c_out, c_in, c_noise) at σ [B, 1, 1, 1] (c_noise before flattening)."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        dtype = self.dtype
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, device=x.device).to(dtype).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros(1, self.label_dim, dtype=dtype, device=x.device)
        else:
            class_labels = class_labels.to(dtype).reshape(-1, self.label_dim)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.model(c_in * x, c_noise.flatten(), class_labels, augment_labels=augment_labels)
        return c_skip * x + c_out * F_x[:, :self.img_channels]


class VPPrecond(_Precond):
    """VP (Song et al. 2021): σ(t) = √(exp(½ β_d t² + β_min t) − 1), c_skip = 1, c_out = −σ,
    c_in = 1/√(σ² + 1), c_noise = (M − 1) σ⁻¹(σ): the network is score_sde's ε-predictor at label 999 t."""

    kind = "vp"

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))  # in float32, as EDM (2^-10 for the defaults)
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t) -> Tensor:
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma) -> Tensor:
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: Tensor) -> tuple:
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Precond):
    """VE (Song et al. 2021): σ(t) = √t, c_skip = 1, c_out = σ, c_in = 1, c_noise = log(σ/2)."""

    kind = "ve"

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = "SongUNet",
                 **model_kwargs) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma: Tensor) -> tuple:
        return 1, sigma, 1, (0.5 * sigma).log()


class EDMPrecond(_Precond):
    """EDM (Karras et al. 2022, Eq. 7): c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²),
    c_in = 1/√(σ² + σ_d²), c_noise = ¼ log σ."""

    kind = "edm"

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = math.inf, sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma: Tensor) -> tuple:
        sd = self.sigma_data
        return (sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt(), 1 / (sd**2 + sigma**2).sqrt(),
                sigma.log() / 4)


PRECONDS: dict[str, type] = {"VPPrecond": VPPrecond, "VEPrecond": VEPrecond, "EDMPrecond": EDMPrecond}
