"""Small layers shared by the score networks: initialisers, convolutions, NIN, time embeddings.

The initialiser is the "variance scaling" of DDPM (Ho et al. 2020) and NCSN++ (Song et al. 2021):
uniform with variance ``scale / fan_avg``; ``scale = 0`` means 1e-10 (layers that start as
near-zero maps, e.g. the last convolution of a residual branch).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "get_act",
    "variance_scaling",
    "default_init",
    "conv1x1",
    "conv3x3",
    "dense",
    "group_norm",
    "NIN",
    "get_timestep_embedding",
    "GaussianFourierProjection",
    "get_sigmas",
]

ACTIVATIONS = {"swish": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2)}


def get_act(name: str) -> nn.Module:
    """Activation module by its config name ('swish', 'elu', 'relu', 'lrelu')."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown nonlinearity {name!r}; expected one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def variance_scaling(scale: float, shape: tuple[int, ...], in_axis: int = 1, out_axis: int = 0) -> Tensor:
    """Uniform init with variance ``scale / ((fan_in + fan_out) / 2)`` (JAX's ``fan_avg``)."""
    receptive = math.prod(shape) / shape[in_axis] / shape[out_axis]
    fan_avg = (shape[in_axis] + shape[out_axis]) * receptive / 2
    return (torch.rand(*shape) * 2.0 - 1.0) * math.sqrt(3 * scale / fan_avg)


def default_init(scale: float = 1.0):
    """The DDPM initialiser as a function of the shape; ``scale = 0`` is taken as 1e-10."""
    scale = 1e-10 if scale == 0 else scale
    return lambda shape: variance_scaling(scale, tuple(shape))


def _init_conv(conv: nn.Conv2d | nn.Linear, init_scale: float) -> nn.Module:
    conv.weight.data = default_init(init_scale)(conv.weight.shape)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0) -> nn.Conv2d:
    """1×1 convolution with the DDPM initialiser."""
    return _init_conv(nn.Conv2d(in_ch, out_ch, 1, stride=stride, padding=0, bias=bias), init_scale)


def conv3x3(
    in_ch: int,
    out_ch: int,
    stride: int = 1,
    bias: bool = True,
    dilation: int = 1,
    init_scale: float = 1.0,
    padding: int = 1,
) -> nn.Conv2d:
    """3×3 convolution with the DDPM initialiser."""
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    return _init_conv(conv, init_scale)


def dense(in_features: int, out_features: int, init_scale: float = 1.0) -> nn.Linear:
    """Linear layer with the DDPM initialiser and zero bias."""
    return _init_conv(nn.Linear(in_features, out_features), init_scale)


def group_norm(channels: int, num_groups: int | None = None) -> nn.GroupNorm:
    """GroupNorm with eps 1e-6; ``num_groups=None`` is NCSN++'s ``min(C // 4, 32)``."""
    groups = min(channels // 4, 32) if num_groups is None else num_groups
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


class NIN(nn.Module):
    """Network-in-network: a per-pixel linear map over channels, ``W`` [in, out] and ``b`` [out]."""

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.W = nn.Parameter(default_init(init_scale)((in_dim, num_units)))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, out, H, W]
        y = torch.einsum("bhwc,cd->bhwd", x.permute(0, 2, 3, 1), self.W) + self.b
        return y.permute(0, 3, 1, 2)


def get_timestep_embedding(timesteps: Tensor, embedding_dim: int, max_positions: int = 10000) -> Tensor:
    """Sinusoidal embedding of a float label [B] (Vaswani et al. 2017; DDPM): [sin half, cos half]."""
    if timesteps.dim() != 1:
        raise ValueError(f"timesteps must be 1-D [B], got shape {tuple(timesteps.shape)}")
    half_dim = embedding_dim // 2
    rate = math.log(max_positions) / (half_dim - 1)
    freqs = torch.exp(torch.arange(half_dim, dtype=torch.float32, device=timesteps.device) * -rate)
    emb = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar (Tancik et al. 2020; NCSN++'s noise-level embedding).

    ``W ~ N(0, scale²)`` of size ``embedding_size`` is fixed (``requires_grad=False``, so it is not
    in the EMA list of official checkpoints); the output is ``[sin(2π x W), cos(2π x W)]``.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:  # [B] -> [B, 2·embedding_size]
        x_proj = x[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


def get_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> Tensor:
    """score_sde's descending SMLD table ``exp(linspace(ln σ_max, ln σ_min, N))``, float64.

    Computed with NumPy as the official code does (torch's float64 exp differs in the last bit for
    some entries).
    """
    return torch.tensor(np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales)), dtype=torch.float64)
