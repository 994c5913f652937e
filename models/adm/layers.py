"""The building blocks of OpenAI's ADM U-Net (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on
Image Synthesis", §3 and App. A), written for the project from the description of
openai/guided-diffusion's ``unet.py``/``nn.py`` (shared/fixtures/adm/README.md §3). Module and
parameter names are ADM's, so an ADM ``state_dict`` loads key for key.

* :func:`timestep_embedding` — the sinusoidal embedding [cos | sin] of a (possibly fractional) timestep;
* :class:`GroupNorm32` — 32 groups, eps 1e-5, computed in float32 for half-precision inputs;
* :class:`ResBlock` — GN, SiLU, conv; the embedding added (or as scale-and-shift of the second GN,
  ``use_scale_shift_norm``); SiLU, dropout, conv; optional up/down-sampling inside the block;
* :class:`AttentionBlock` — multi-head self-attention over the positions, in ADM's two channel
  layouts of q, k, v (``use_new_attention_order``);
* :class:`AttentionPool2d` — the noisy classifier's attention pooling (from CLIP);
* :class:`Downsample` / :class:`Upsample` — average pool or strided conv; nearest ×2 with optional conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["timestep_embedding", "GroupNorm32", "ResBlock", "AttentionBlock", "AttentionPool2d", "Downsample",
           "Upsample", "EmbedSequential", "qkv_attention"]


def timestep_embedding(timesteps: Tensor, dim: int, dtype: torch.dtype = torch.float32,
                       max_period: float = 10000.0) -> Tensor:
    """[B, dim]: cos(t f_j) for the first half, sin(t f_j) for the second, f_j = max_period^(−j/half).

    Computed in float32 (as ADM) unless ``dtype`` is float64 (the project's float64 runs)."""
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=timesteps.device) / half)
    args = timesteps[:, None].to(dtype) * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5); half-precision inputs are normalised in float32."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                                self.eps).to(x.dtype)
        return super().forward(x)


class Downsample(nn.Module):
    """×½: a 3×3 conv with stride 2 (``use_conv``; key ``op``) or a 2×2 average pool."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError(f"Downsample: an average pool keeps the channels ({channels} ≠ {out_channels})")
            self.op = nn.AvgPool2d(2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """×2 nearest, then a 3×3 conv (``use_conv``; key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class ResBlock(nn.Module):
    """x + F(x, emb) with a 1×1 conv on the skip path where the channels change.

    F: GN, SiLU, [resample], conv 3×3; then the embedding's projection added to h, or with
    ``use_scale_shift_norm`` applied as GN(h)·(1 + scale) + shift (scale first in the projection);
    SiLU, dropout, conv 3×3. ``up``/``down`` resample both h (after GN and SiLU, before the conv) and
    the skip path with the parameter-free :class:`Upsample`/:class:`Downsample`.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if use_scale_shift_norm else 1)
                                                              * out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


def qkv_attention(qkv: Tensor, heads: int, new_order: bool) -> Tensor:
    """Softmax attention of [B, 3·H·c, T] packed q, k, v → [B, H·c, T].

    Channel layout: ``new_order`` [q|k|v][head][c] (ADM's QKVAttention), else [head][q|k|v][c]
    (QKVAttentionLegacy). q and k are both scaled by c^(−1/4); the softmax over keys is taken in float32.
    """
    b, width, length = qkv.shape
    c = width // (3 * heads)
    if new_order:
        q, k, v = (u.reshape(b * heads, c, length) for u in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * c, length).split(c, dim=1)
    scale = 1 / math.sqrt(math.sqrt(c))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight,
                           dim=-1).to(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(b, heads * c, length)


def attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """ADM's head count: ``channels // num_head_channels`` when that is given (≠ −1), else ``num_heads``."""
    if num_head_channels == -1:
        return num_heads
    if channels % num_head_channels:
        raise ValueError(f"attention: {channels} channels are not divisible by num_head_channels={num_head_channels}")
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """x + proj_out(attention(qkv(GN(x)))) over the H·W positions (1×1 Conv1d for qkv and proj_out)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False) -> None:
        super().__init__()
        self.num_heads = attention_heads(channels, num_heads, num_head_channels)
        self.new_order = use_new_attention_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.new_order))
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling (the classifier's ``pool='attention'`` head): the mean position is
    prepended to the H·W positions, a learned positional embedding [C, H·W + 1] added, attention (new
    order) with ``channels // head_channels`` heads, and the output projection read at the mean position."""

    def __init__(self, spatial: int, channels: int, head_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(channels, spatial**2 + 1) / channels**0.5)
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels or channels, 1)
        self.num_heads = attention_heads(channels, 1, head_channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        return self.c_proj(qkv_attention(self.qkv_proj(x), self.num_heads, new_order=True))[:, :, 0]


class EmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks also take the embedding (ADM's ``TimestepEmbedSequential``)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x
