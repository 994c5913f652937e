"""FIR up/down-sampling in pure PyTorch (no CUDA extension).

``upfirdn2d`` is the operation of StyleGAN2 (Karras et al. 2020, appendix B): zero-stuff the input
by ``up``, pad, convolve every channel with a 2-D FIR filter, keep every ``down``-th pixel. The
resampling helpers below are its uses in NCSN++ (Song et al. 2021): a normalised separable kernel
such as ``[1, 3, 3, 1]``, gain ``up²`` so that upsampling keeps the mean, and paddings that keep the
sampling grid centred.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "fir_kernel_2d",
    "upfirdn2d",
    "upsample_2d",
    "downsample_2d",
    "upsample_conv_2d",
    "conv_downsample_2d",
    "naive_upsample_2d",
    "naive_downsample_2d",
    "FIRConv2d",
]


def fir_kernel_2d(k: Sequence[float], gain: float = 1.0, device=None) -> Tensor:
    """Normalised 2-D FIR kernel: outer(k, k) / sum, times ``gain``, float32 [K, K]."""
    k = torch.as_tensor(k, dtype=torch.float32, device=device)
    if k.dim() == 1:
        k = torch.outer(k, k)
    return k / k.sum() * gain


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, FIR-filter each channel, downsample.

    Args:
        x: input [B, C, H, W].
        kernel: 2-D filter [K, K], applied as a true convolution (flipped).
        up: upsampling factor (zeros inserted after every pixel).
        down: downsampling factor (every ``down``-th output pixel kept).
        pad: (before, after) padding of both spatial axes after upsampling; negative values crop.

    Returns:
        [B, C, (H·up + p0 + p1 − K)//down + 1, same for W].
    """
    B, C, H, W = x.shape
    p0, p1 = pad
    kh, kw = kernel.shape
    out = x.reshape(B * C, 1, H, 1, W, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1])  # zeros after each pixel along W and H
    out = out.reshape(B * C, 1, H * up, W * up)
    out = F.pad(out, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    out = out[:, :, max(-p0, 0) : out.shape[2] - max(-p1, 0), max(-p0, 0) : out.shape[3] - max(-p1, 0)]
    weight = torch.flip(kernel, [0, 1]).reshape(1, 1, kh, kw).to(out.dtype)
    out = F.conv2d(out, weight)
    out = out[:, :, ::down, ::down]
    return out.reshape(B, C, out.shape[2], out.shape[3])


def upsample_2d(x: Tensor, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2, gain: float = 1.0) -> Tensor:
    """FIR upsampling by ``factor``: [B, C, H, W] → [B, C, H·factor, W·factor]."""
    kernel = fir_kernel_2d(k, gain * factor**2, x.device)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Tensor, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2, gain: float = 1.0) -> Tensor:
    """FIR downsampling by ``factor``: [B, C, H, W] → [B, C, H/factor, W/factor]."""
    kernel = fir_kernel_2d(k, gain, x.device)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: Tensor, w: Tensor, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Tensor:
    """Fused upsample + convolution (StyleGAN2): a strided transposed conv, then the FIR filter.

    Equivalent to zero-stuffing x, convolving with ``w`` and filtering; ``w`` is [out, in, K, K].
    No official CIFAR-10 config reaches this path (it needs ``resblock_type='ddpm'`` with FIR), so
    it is checked against its definition in the tests rather than against a recorded fixture.
    """
    out_ch, in_ch, kh, kw = w.shape
    kernel = fir_kernel_2d(k, factor**2, x.device)
    p = (kernel.shape[0] - factor) - (kw - 1)
    # conv_transpose2d takes [in, out, K, K]; flipping makes it the adjoint of a correlation with w.
    wt = torch.flip(w, [2, 3]).transpose(0, 1)
    x = F.conv_transpose2d(x, wt, stride=factor)
    return upfirdn2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: Tensor, w: Tensor, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Tensor:
    """Fused FIR filter + strided convolution (StyleGAN2); ``w`` is [out, in, K, K]."""
    kernel = fir_kernel_2d(k, 1.0, x.device)
    p = (kernel.shape[0] - factor) + (w.shape[-1] - 1)
    x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor)


def naive_upsample_2d(x: Tensor, factor: int = 2) -> Tensor:
    """Nearest-neighbour upsampling by pixel repetition."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H, 1, W, 1).repeat(1, 1, 1, factor, 1, factor)
    return x.reshape(B, C, H * factor, W * factor)


def naive_downsample_2d(x: Tensor, factor: int = 2) -> Tensor:
    """Average pooling over ``factor × factor`` blocks."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // factor, factor, W // factor, factor).mean(dim=(3, 5))


class FIRConv2d(nn.Module):
    """3×3 (odd K) convolution with optional fused FIR up- or downsampling (StyleGAN2's ``Conv2d``).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel: spatial size K of the convolution (odd).
        up: upsample by 2 before the convolution.
        down: downsample by 2 after the convolution.
        resample_kernel: 1-D FIR taps.
        use_bias: add a learned bias.
        kernel_init: ``init(shape) -> Tensor`` for the weight (zeros when None).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        up: bool = False,
        down: bool = False,
        resample_kernel: Sequence[float] = (1, 3, 3, 1),
        use_bias: bool = True,
        kernel_init=None,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("FIRConv2d: up and down are exclusive")
        if kernel < 1 or kernel % 2 != 1:
            raise ValueError(f"FIRConv2d: kernel must be odd and >= 1, got {kernel}")
        shape = (out_ch, in_ch, kernel, kernel)
        self.weight = nn.Parameter(kernel_init(shape) if kernel_init is not None else torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if use_bias else None
        self.up, self.down = up, down
        self.resample_kernel = tuple(resample_kernel)
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            x = upsample_conv_2d(x, self.weight, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, self.weight, k=self.resample_kernel)
        else:
            x = F.conv2d(x, self.weight, padding=self.kernel // 2)
        if self.bias is not None:
            x = x + self.bias.reshape(1, -1, 1, 1)
        return x
