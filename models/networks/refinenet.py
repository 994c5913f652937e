"""RefineNet blocks of NCSN / NCSNv2 (Song & Ermon 2019, 2020; Lin et al. 2017 "RefineNet").

InstanceNorm++ normalisation, pre-activation residual blocks (with mean-pool or dilated
"downsampling"), and the RefineNet cascade: residual conv units (RCU), multi-resolution fusion (MSF)
and chained residual pooling (CRP). Attribute names follow the NCSNv2 code, so its state dicts keep
their key names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["InstanceNorm2dPlus", "ConvMeanPool", "ResidualBlock", "RCUBlock", "MSFBlock", "CRPBlock", "RefineBlock"]


def _conv3x3(in_ch: int, out_ch: int, bias: bool = True, dilation: int = 1) -> nn.Conv2d:
    """3×3 convolution that keeps the spatial size (padding = dilation)."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias)


class InstanceNorm2dPlus(nn.Module):
    """InstanceNorm++ (Song & Ermon 2019, appendix A.1).

    Instance normalisation removes each channel's spatial mean μ_k, which can shift colours; this
    adds it back, normalised across channels: ``γ_k (x_k − μ_k)/s_k + α_k (μ_k − m)/v + β_k``, with
    m and v² the mean and (unbiased) variance of the μ_k over channels.
    """

    def __init__(self, num_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num_features, self.bias = num_features, bias
        self.instance_norm = nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))
        self.gamma = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))
        if bias:
            self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        means = x.mean(dim=(2, 3))  # [B, C]
        m = means.mean(dim=-1, keepdim=True)
        v = means.var(dim=-1, keepdim=True)
        means = (means - m) / torch.sqrt(v + 1e-5)
        h = self.instance_norm(x) + means[..., None, None] * self.alpha[..., None, None]
        out = self.gamma.view(1, -1, 1, 1) * h
        return out + self.beta.view(1, -1, 1, 1) if self.bias else out


class ConvMeanPool(nn.Module):
    """Convolution (size kept) followed by 2×2 mean pooling."""

    def __init__(self, input_dim: int, output_dim: int, kernel_size: int = 3, biases: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_dim, output_dim, kernel_size, padding=kernel_size // 2, bias=biases)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        return (h[:, :, ::2, ::2] + h[:, :, 1::2, ::2] + h[:, :, ::2, 1::2] + h[:, :, 1::2, 1::2]) / 4.0


class ResidualBlock(nn.Module):
    """Pre-activation residual block: norm → act → conv → norm → act → conv, plus a shortcut.

    ``resample='down'`` halves the resolution with a mean-pooled convolution, except when
    ``dilation > 1``: then the block keeps the resolution and widens the receptive field with
    dilated convolutions instead (as NCSNv2 does in its last two stages).

    Args:
        input_dim: input channels.
        output_dim: output channels.
        resample: None or 'down'.
        act: activation module.
        dilation: dilation of the 3×3 convolutions (1: none).
    """

    def __init__(
        self, input_dim: int, output_dim: int, resample: str | None = None, act: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        if resample not in (None, "down"):
            raise ValueError(f"ResidualBlock: resample must be None or 'down', got {resample!r}")
        self.non_linearity = act if act is not None else nn.ELU()
        self.input_dim, self.output_dim, self.resample = input_dim, output_dim, resample
        mid = input_dim if resample == "down" else output_dim
        self.conv1 = _conv3x3(input_dim, mid, dilation=dilation)
        self.normalize2 = InstanceNorm2dPlus(mid)
        if resample == "down" and dilation == 1:
            self.conv2 = ConvMeanPool(input_dim, output_dim, 3)
            shortcut = lambda: ConvMeanPool(input_dim, output_dim, kernel_size=1)  # noqa: E731
        elif dilation > 1:
            self.conv2 = _conv3x3(mid, output_dim, dilation=dilation)
            shortcut = lambda: _conv3x3(input_dim, output_dim, dilation=dilation)  # noqa: E731
        else:
            self.conv2 = _conv3x3(mid, output_dim)
            shortcut = lambda: nn.Conv2d(input_dim, output_dim, 1)  # noqa: E731
        if output_dim != input_dim or resample is not None:
            self.shortcut = shortcut()
        self.normalize1 = InstanceNorm2dPlus(input_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.non_linearity(self.normalize1(x)))
        h = self.conv2(self.non_linearity(self.normalize2(h)))
        identity = self.output_dim == self.input_dim and self.resample is None
        return (x if identity else self.shortcut(x)) + h


class RCUBlock(nn.Module):
    """Residual conv unit: ``n_blocks`` residual blocks of ``n_stages`` (act → 3×3 conv, no bias)."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, act: nn.Module) -> None:
        super().__init__()
        for i in range(n_blocks):
            for j in range(n_stages):
                setattr(self, f"{i + 1}_{j + 1}_conv", _conv3x3(features, features, bias=False))
        self.n_blocks, self.n_stages, self.act = n_blocks, n_stages, act

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.n_blocks):
            residual = x
            for j in range(self.n_stages):
                x = getattr(self, f"{i + 1}_{j + 1}_conv")(self.act(x))
            x = x + residual
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: 3×3 conv of each input to ``features``, bilinear resize, sum."""

    def __init__(self, in_planes: Sequence[int], features: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(c, features) for c in in_planes)
        self.features = features

    def forward(self, xs: Sequence[Tensor], shape: Sequence[int]) -> Tensor:
        total = None
        for conv, x in zip(self.convs, xs):
            h = F.interpolate(conv(x), size=tuple(shape), mode="bilinear", align_corners=True)
            total = h if total is None else total + h
        return total


class CRPBlock(nn.Module):
    """Chained residual pooling: repeated 5×5 max-pool → 3×3 conv, each stage added to the output."""

    def __init__(self, features: int, n_stages: int, act: nn.Module) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(features, features, bias=False) for _ in range(n_stages))
        self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(x)
        path = x
        for conv in self.convs:
            path = conv(self.pool(path))
            x = path + x
        return x


class RefineBlock(nn.Module):
    """RefineNet block: RCU per input → MSF (if several inputs) → CRP → output RCU.

    Args:
        in_planes: channels of each input, finest resolution first.
        features: output channels.
        act: activation module.
        start: single-input block (no fusion).
        end: last block (three output RCUs instead of one).
    """

    def __init__(
        self, in_planes: Sequence[int], features: int, act: nn.Module, start: bool = False, end: bool = False
    ) -> None:
        super().__init__()
        self.n_blocks = len(in_planes)
        self.adapt_convs = nn.ModuleList(RCUBlock(c, 2, 2, act) for c in in_planes)
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, act)
        if not start:
            self.msf = MSFBlock(in_planes, features)
        self.crp = CRPBlock(features, 2, act)

    def forward(self, xs: Sequence[Tensor], output_shape: Sequence[int]) -> Tensor:
        hs = [conv(x) for conv, x in zip(self.adapt_convs, xs)]
        h = self.msf(hs, output_shape) if self.n_blocks > 1 else hs[0]
        return self.output_convs(self.crp(h))
