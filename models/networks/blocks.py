"""Residual, attention and resampling blocks of DDPM (Ho et al. 2020) and NCSN++/DDPM++ (Song et al. 2021).

DDPM's blocks are the ``++`` blocks with fixed settings, so one class serves both:

=====================  ==================================================================
DDPM block             same as
=====================  ==================================================================
ResnetBlockDDPM        ``ResnetBlockDDPMpp(num_groups=32, skip_rescale=False, init_scale=0)``
AttnBlock              ``AttnBlockpp(num_groups=32, skip_rescale=False, init_scale=0)``
Downsample/Upsample    ``Downsample/Upsample(fir=False)``
=====================  ==================================================================

Attribute names (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``NIN_0``, ``Conv2d_0``, ...) are those of
the official checkpoints, so state dicts load key for key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.networks.layers import NIN, conv1x1, conv3x3, default_init, dense, group_norm
from models.networks.upfirdn import (
    FIRConv2d,
    downsample_2d,
    naive_downsample_2d,
    naive_upsample_2d,
    upsample_2d,
)

__all__ = ["Combine", "AttnBlockpp", "Upsample", "Downsample", "ResnetBlockDDPMpp", "ResnetBlockBigGANpp"]

_SQRT2 = math.sqrt(2.0)


def _merge(x: Tensor, h: Tensor, skip_rescale: bool) -> Tensor:
    """Residual sum, divided by √2 when ``skip_rescale`` (keeps the variance of two unit branches)."""
    return (x + h) / _SQRT2 if skip_rescale else x + h


class Combine(nn.Module):
    """Merge a 1×1-projected pyramid input ``x`` into ``y`` by 'cat' or 'sum' (NCSN++ input_skip)."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat") -> None:
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"Combine: unknown method {method!r}; expected 'cat' or 'sum'")
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class AttnBlockpp(nn.Module):
    """Single-head spatial self-attention over all H·W positions, residual (SAGAN / DDPM).

    Args:
        channels: C.
        skip_rescale: divide the residual sum by √2.
        init_scale: init scale of the output projection (0 → near-zero, the block starts as identity).
        num_groups: GroupNorm groups; None is ``min(C // 4, 32)``.
    """

    def __init__(
        self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0, num_groups: int | None = None
    ) -> None:
        super().__init__()
        self.GroupNorm_0 = group_norm(channels, num_groups)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.einsum("bchw,bcij->bhwij", q, k) * (int(C) ** (-0.5))
        w = F.softmax(w.reshape(B, H, W, H * W), dim=-1).reshape(B, H, W, H, W)
        h = torch.einsum("bhwij,bcij->bchw", w, v)
        return _merge(x, self.NIN_3(h), self.skip_rescale)


class _Resample(nn.Module):
    """Shared constructor of Upsample/Downsample: the optional learned convolution."""

    up: bool

    def __init__(
        self,
        in_ch: int | None,
        out_ch: int | None = None,
        with_conv: bool = False,
        fir: bool = False,
        fir_kernel: Sequence[int] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and fir:
            self.Conv2d_0 = FIRConv2d(
                in_ch, out_ch, 3, up=self.up, down=not self.up, resample_kernel=fir_kernel, kernel_init=default_init()
            )
        elif with_conv:
            self.Conv_0 = conv3x3(in_ch, out_ch) if self.up else conv3x3(in_ch, out_ch, stride=2, padding=0)
        self.fir, self.fir_kernel, self.with_conv = fir, tuple(fir_kernel), with_conv


class Upsample(_Resample):
    """×2 upsampling: nearest (+ optional 3×3 conv), or FIR (+ optional fused conv)."""

    up = True

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        if self.fir:
            return self.Conv2d_0(x) if self.with_conv else upsample_2d(x, self.fir_kernel, factor=2)
        h = F.interpolate(x, (H * 2, W * 2), mode="nearest")
        return self.Conv_0(h) if self.with_conv else h


class Downsample(_Resample):
    """×2 downsampling: strided 3×3 conv or average pooling, or FIR (+ optional fused conv)."""

    up = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fir:
            return self.Conv2d_0(x) if self.with_conv else downsample_2d(x, self.fir_kernel, factor=2)
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))  # TF "SAME" for stride 2: pad right/bottom
        return F.avg_pool2d(x, 2, stride=2)


class _ResnetBlock(nn.Module):
    """Residual block: GN → act → (resample) → conv → + Dense(act(temb)) → GN → act → dropout → conv.

    Subclasses add the shortcut layer (after ``Conv_1``, as in the official key order) and may
    resample both branches.
    """

    def __init__(
        self,
        act: nn.Module,
        in_ch: int,
        out_ch: int | None,
        temb_dim: int | None,
        dropout: float,
        skip_rescale: bool,
        init_scale: float,
        num_groups: int | None,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch, num_groups)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch, num_groups)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.act, self.in_ch, self.out_ch, self.skip_rescale = act, in_ch, out_ch, skip_rescale

    def _resample(self, x: Tensor) -> Tensor:
        return x

    def _shortcut(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.act(self.GroupNorm_0(x))
        h, x = self._resample(h), self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        return _merge(self._shortcut(x), h, self.skip_rescale)


class ResnetBlockDDPMpp(_ResnetBlock):
    """DDPM residual block: GN → act → conv → + Dense(temb) → GN → act → dropout → conv, plus skip.

    Args:
        act: activation module.
        in_ch: input channels.
        out_ch: output channels (default in_ch); a change adds a 1×1 NIN (or 3×3 conv) shortcut.
        temb_dim: width of the time embedding (None: unconditional).
        conv_shortcut: 3×3 conv instead of NIN on the shortcut.
        dropout: dropout rate.
        skip_rescale: divide the residual sum by √2.
        init_scale: init scale of the last convolution.
        num_groups: GroupNorm groups; None is ``min(C // 4, 32)``, DDPM uses 32.
    """

    def __init__(
        self,
        act: nn.Module,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.1,
        skip_rescale: bool = False,
        init_scale: float = 0.0,
        num_groups: int | None = None,
    ) -> None:
        super().__init__(act, in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale, num_groups)
        if self.in_ch != self.out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(self.in_ch, self.out_ch)
            else:
                self.NIN_0 = NIN(self.in_ch, self.out_ch)
        self.conv_shortcut = conv_shortcut

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.in_ch == self.out_ch:
            return x
        return self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)


class ResnetBlockBigGANpp(_ResnetBlock):
    """BigGAN residual block (Brock et al. 2019) with optional ×2 up/down inside the block.

    Resampling (FIR or naive) is applied to both branches after the first activation; a 1×1 conv
    shortcut is added when the channels or the resolution change.

    Args:
        act: activation module.
        in_ch: input channels.
        out_ch: output channels (default in_ch).
        temb_dim: width of the time embedding (None: unconditional).
        up: upsample ×2.
        down: downsample ×2.
        dropout: dropout rate.
        fir: FIR resampling with ``fir_kernel`` (else nearest / average pooling).
        fir_kernel: 1-D FIR taps.
        skip_rescale: divide the residual sum by √2.
        init_scale: init scale of the last convolution.
        num_groups: GroupNorm groups; None is ``min(C // 4, 32)``.
    """

    def __init__(
        self,
        act: nn.Module,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.1,
        fir: bool = False,
        fir_kernel: Sequence[int] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        init_scale: float = 0.0,
        num_groups: int | None = None,
    ) -> None:
        super().__init__(act, in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale, num_groups)
        self.has_shortcut = self.in_ch != self.out_ch or up or down
        if self.has_shortcut:
            self.Conv_2 = conv1x1(self.in_ch, self.out_ch)
        self.up, self.down, self.fir, self.fir_kernel = up, down, fir, tuple(fir_kernel)

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return upsample_2d(x, self.fir_kernel, factor=2) if self.fir else naive_upsample_2d(x, factor=2)
        if self.down:
            return downsample_2d(x, self.fir_kernel, factor=2) if self.fir else naive_downsample_2d(x, factor=2)
        return x

    def _shortcut(self, x: Tensor) -> Tensor:
        return self.Conv_2(x) if self.has_shortcut else x
