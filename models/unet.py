"""A compact time-conditioned U-Net ``net(x, labels)`` that trains on a CPU in minutes.

The network follows the DDPM/NCSN++ pattern at a small size: a label embedding (sinusoidal for
VP/sub-VP labels 999·t or discrete indices, Gaussian Fourier features of log σ for VE labels σ), residual
blocks with GroupNorm and SiLU, one or more resolutions joined by skip connections, and optional
self-attention at chosen resolutions.

Output conventions match :class:`models.score.NetworkScore`:
  * ``embedding='positional'`` with ``sigma_scaling='none'``: the output is an ε-prediction
    (VP/sub-VP, label 999·t).
  * ``embedding='fourier'`` with ``sigma_scaling='label'``: the label is σ and the output is divided
    by σ, so the output *is* the score (VE 'continuous', as NCSN++ with ``scale_by_sigma``).
  * ``sigma_scaling='table'``: the label is an integer index into the descending table
    ``exp(linspace(ln σ_max, ln σ_min, num_scales))`` and the output is divided by that σ (VE 'smld',
    NCSNv2's noise conditioning, Technique 3 of Song & Ermon 2020).
  * ``center_input=True`` maps uncentered [0, 1] inputs to 2x − 1 inside the network (as NCSN++).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["UNetConfig", "SmallUNet", "NETWORKS", "build_network"]

EMBEDDINGS = ("positional", "fourier")
SIGMA_SCALINGS = ("none", "label", "table")


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a :class:`SmallUNet` (stored in checkpoints as a plain dict).

    Args:
        in_channels: channels of one sample (1 for grey images).
        image_size: height = width of one sample; every level must divide it exactly.
        ch: channels at the first resolution.
        ch_mult: channel multiplier per resolution; its length is the number of resolutions.
        num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
        attn_resolutions: resolutions (in pixels) that get a self-attention block.
        dropout: dropout inside residual blocks.
        embedding: 'positional' (sinusoidal of the label) or 'fourier' (random Fourier features of
            log label; for σ labels).
        fourier_scale: std of the random frequencies of the 'fourier' embedding (NCSN++ uses 16 with
            128 features; with few features a small scale keeps the embedding smooth in log σ).
        sigma_scaling: 'none', 'label' (divide the output by the label) or 'table' (divide by
            σ[label] of the discrete table); see the module docstring.
        sigma_min: smallest σ of the table ('table' scaling only).
        sigma_max: largest σ of the table ('table' scaling only).
        num_scales: length of the table ('table' scaling only).
        center_input: map inputs x to 2x − 1 first (uncentered [0, 1] data).
        groups: GroupNorm groups (must divide every channel count).
    """

    in_channels: int = 1
    image_size: int = 8
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    embedding: str = "positional"
    fourier_scale: float = 16.0
    sigma_scaling: str = "none"
    sigma_min: float = 0.01
    sigma_max: float = 1.0
    num_scales: int = 0
    center_input: bool = False
    groups: int = 8

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(
                f"unknown embedding {self.embedding!r}; expected one of: {', '.join(EMBEDDINGS)}"
            )
        if self.sigma_scaling not in SIGMA_SCALINGS:
            raise ValueError(
                f"unknown sigma_scaling {self.sigma_scaling!r}; expected one of: {', '.join(SIGMA_SCALINGS)}"
            )
        if self.sigma_scaling == "table" and self.num_scales < 2:
            raise ValueError(f"sigma_scaling 'table' needs num_scales >= 2, got {self.num_scales}")
        size = self.image_size
        for level in range(len(self.ch_mult) - 1):
            if size % 2:
                raise ValueError(
                    f"image_size {self.image_size} cannot be halved {len(self.ch_mult) - 1} times "
                    f"(odd size {size} at level {level})"
                )
            size //= 2
        for mult in self.ch_mult:
            if (self.ch * mult) % self.groups:
                raise ValueError(
                    f"groups={self.groups} must divide every channel count ch*mult={self.ch * mult}"
                )

    def to_dict(self) -> dict:
        """Plain, JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"unknown UNetConfig key(s) {unknown}; expected: {', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def sinusoidal_embedding(labels: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    """DDPM's sinusoidal embedding of float labels [B] → [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_positions) * torch.arange(half, device=labels.device) / (half - 1))
    args = labels.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of log σ (fixed, not trained), as NCSN++'s Gaussian projection."""

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, labels: Tensor) -> Tensor:
        args = labels.float().log()[:, None] * self.W[None] * 2 * math.pi
        return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the embedding as a per-channel shift, twice; 1×1 skip if needed."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels, with a residual connection."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.out = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)  # [B, C, HW] each
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(a.transpose(1, 2).reshape(b, c, h, w))


class SmallUNet(nn.Module):
    """Time-conditioned U-Net ``net(x [B, C, H, W], labels [B]) -> [B, C, H, W]``; see :class:`UNetConfig`."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        emb_dim = 4 * cfg.ch
        if cfg.embedding == "fourier":
            self.embed = FourierEmbedding(cfg.ch, cfg.fourier_scale)
        self.emb_mlp = nn.Sequential(nn.Linear(cfg.ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.sigma_scaling == "table":
            sigmas = torch.exp(
                torch.linspace(math.log(cfg.sigma_max), math.log(cfg.sigma_min), cfg.num_scales)
            )
            self.register_buffer("sigmas", sigmas)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)

        def block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, cfg.groups, cfg.dropout)

        # Down path: remember every skip's channel count.
        self.down = nn.ModuleList()
        skips, c, size = [cfg.ch], cfg.ch, cfg.image_size
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                layer = nn.ModuleList([block(c, cfg.ch * mult)])
                c = cfg.ch * mult
                if size in cfg.attn_resolutions:
                    layer.append(AttnBlock(c, cfg.groups))
                self.down.append(layer)
                skips.append(c)
            if level < len(cfg.ch_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
                size //= 2
        self.mid = nn.ModuleList([block(c, c), AttnBlock(c, cfg.groups), block(c, c)])
        # Up path: one more block per level, each eating one skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                layer = nn.ModuleList([block(c + skips.pop(), cfg.ch * mult)])
                c = cfg.ch * mult
                if size in cfg.attn_resolutions:
                    layer.append(AttnBlock(c, cfg.groups))
                self.up.append(layer)
            if level > 0:
                self.up.append(
                    nn.ModuleList(
                        [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
                    )
                )
                size *= 2
        self.norm_out = nn.GroupNorm(cfg.groups, c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        cfg = self.config
        # Label embedding.
        if cfg.embedding == "fourier":
            emb = self.embed(labels)
        else:
            emb = sinusoidal_embedding(labels, cfg.ch)
        emb = self.emb_mlp(emb.to(x.dtype))
        h = self.conv_in(2 * x - 1 if cfg.center_input else x)
        # Down, middle, up.
        hs = [h]
        for layer in self.down:
            if isinstance(layer[0], ResBlock):
                h = layer[0](h, emb)
                for extra in layer[1:]:
                    h = extra(h)
            else:
                h = layer[0](h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer[0], ResBlock):
                h = layer[0](torch.cat([h, hs.pop()], dim=1), emb)
                for extra in layer[1:]:
                    h = extra(h)
            else:
                h = layer[1](layer[0](h))
        out = self.conv_out(F.silu(self.norm_out(h)))
        # Noise conditioning by division (NCSN++ scale_by_sigma, NCSNv2 Technique 3).
        if cfg.sigma_scaling == "label":
            out = out / labels.to(out.dtype).reshape(-1, 1, 1, 1)
        elif cfg.sigma_scaling == "table":
            out = out / self.sigmas[labels.long()].to(out.dtype).reshape(-1, 1, 1, 1)
        return out


NETWORKS: dict[str, tuple[type, type]] = {"small_unet": (SmallUNet, UNetConfig)}


def build_network(name: str, config: dict) -> nn.Module:
    """Rebuild a network from its registry name and plain-dict config; unknown names raise ValueError."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; expected one of: {', '.join(NETWORKS)}")
    net_cls, cfg_cls = NETWORKS[name]
    return net_cls(cfg_cls.from_dict(config))
