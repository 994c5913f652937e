"""EDM2's magnitude-preserving layers (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", Appendix B.2), written for this project; NVlabs/edm2
``training/networks_edm2.py`` is the reference for names and the order of the arithmetic.

Every operation keeps the expected magnitude (RMS) of its input: ``normalize`` (Eq. 66, eps + RMS),
``mp_silu`` (Eq. 81), ``mp_sum`` (Eq. 88), ``mp_cat`` (Eq. 103), :class:`MPFourier` (Eq. 75) and
:class:`MPConv` (Eq. 47: a convolution / linear map with forced weight normalisation, no bias).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["normalize", "mp_silu", "mp_sum", "mp_cat", "resample", "MPFourier", "MPConv"]


def normalize(x: Tensor, dim=None, eps: float = 1e-4) -> Tensor:
    """x / (eps + RMS(x over ``dim``)); ``dim`` defaults to every dimension but the first. The norm is
    taken in at least float32."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32))
    rms_scale = math.sqrt(norm.numel() / x.numel())  # ‖x‖ · √(1/n) = RMS
    return x / torch.add(eps, norm, alpha=rms_scale).to(x.dtype)


def mp_silu(x: Tensor) -> Tensor:
    """SiLU divided by its output RMS under unit-normal input (0.596)."""
    return F.silu(x) / 0.596


def mp_sum(a: Tensor, b: Tensor, t: float = 0.5) -> Tensor:
    """(1 − t)·a + t·b, rescaled by 1/√((1 − t)² + t²) to unit magnitude (``torch.lerp``, as EDM2)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: Tensor, b: Tensor, dim: int = 1, t: float = 0.5) -> Tensor:
    """Concatenation along ``dim`` with weights (1 − t) and t per channel group, magnitude-preserving."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([c / math.sqrt(na) * (1 - t) * a, c / math.sqrt(nb) * t * b], dim=dim)


def resample(x: Tensor, f=(1, 1), mode: str = "keep") -> Tensor:
    """Depthwise 2× down- ('down': the normalised filter f⊗f, stride 2) or upsampling ('up': its
    transpose ×4) of [B, C, H, W]; 'keep' returns x. f = [1, 1] is box averaging / nearest neighbour."""
    if mode == "keep":
        return x
    if mode not in ("down", "up") or len(f) % 2:
        raise ValueError(f"resample: mode must be keep, down or up and the filter of even length; got {mode!r}, {f!r}")
    f = torch.as_tensor(f, dtype=torch.float32)  # EDM2 builds the filter in float32 (np.float32)
    f = f / f.sum()
    kernel = torch.outer(f, f).to(device=x.device, dtype=x.dtype)[None, None]  # [1, 1, k, k]
    channels, pad = x.shape[1], (len(f) - 1) // 2
    if mode == "down":
        return F.conv2d(x, kernel.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=(pad,))
    return F.conv_transpose2d(x, (kernel * 4).tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=(pad,))


class MPFourier(nn.Module):
    """Fourier features √2 cos(2π(f c + φ)) of a noise label c [B] -> [B, num_channels]; ``freqs`` and
    ``phases`` are fixed buffers (2π already folded in), evaluated in at least float32."""

    def __init__(self, num_channels: int, bandwidth: float = 1) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        y = torch.outer(x.to(dtype), self.freqs.to(dtype)) + self.phases.to(dtype)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (``kernel`` [k, k]) or linear map (``kernel`` []): the weight
    of each output channel normalised to unit RMS and scaled by gain/√fan_in; no bias; 'same' padding.

    ``gain`` is 1 or a learned 0-dim gain. EDM2 stores its snapshots in float16 and evaluates
    gain/√fan_in in the gain's float16 before multiplying the float32 weight: with ``gain_dtype`` set
    (the loader sets it to the snapshot's dtype) that product is rounded to it the same way.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))
        self.gain_dtype: torch.dtype | None = None

    def forward(self, x: Tensor, gain: float | Tensor = 1) -> Tensor:
        w = normalize(self.weight)
        fan_in = w[0].numel()
        scale = gain / math.sqrt(fan_in)
        if isinstance(scale, Tensor) and self.gain_dtype is not None:
            scale = scale.to(self.gain_dtype).to(w.dtype)
        w = (w * scale).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=(w.shape[-1] // 2,))
