"""ADM's U-Net (``UNetModel``) and its noisy classifier (``EncoderUNetModel``), the project's own
implementation (Dhariwal & Nichol 2021, App. A; module names and ``state_dict`` keys as
openai/guided-diffusion's, so its checkpoints load key for key: shared/fixtures/adm/README.md §2–3).

The encoder (``input_blocks``: a 3×3 conv, then per level ``num_res_blocks`` ResBlocks, each followed
by attention where the downsample rate is in ``attention_resolutions``, and a downsampling block
between levels) and the ``middle_block`` (ResBlock, attention, ResBlock) are shared; the U-Net adds the
decoder (``output_blocks``: ``num_res_blocks + 1`` ResBlocks per level on the concatenation with the
stored skip activation, attention as above, an upsampling block ending each level but the last) and
``out`` (GN, SiLU, conv 3×3). The classifier ends in a pooling head instead (``pool``).

``use_fp16`` (ADM converts the torso to float16 at load) is accepted and not applied: a run's dtype is
the harness's ``dtype`` option. ``use_checkpoint`` (gradient checkpointing in training) does not
change the forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.adm.layers import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    EmbedSequential,
    GroupNorm32,
    ResBlock,
    Upsample,
    timestep_embedding,
)

__all__ = ["UNetModel", "EncoderUNetModel", "POOLS"]

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


class _Encoder(nn.Module):
    """Time embedding, ``input_blocks`` and ``middle_block`` (shared by the U-Net and the classifier)."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, num_res_blocks: int,
                 attention_resolutions, dropout: float = 0.0, channel_mult=(1, 2, 4, 8), conv_resample: bool = True,
                 num_heads: int = 1, num_head_channels: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False,
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.image_size, self.in_channels, self.model_channels = image_size, in_channels, model_channels
        self.channel_mult = tuple(channel_mult)
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = num_classes
        if num_classes is not None:  # registered here: ADM's state_dict order
            self.label_emb = nn.Embedding(num_classes, emb_dim)
        self._res = dict(emb_channels=emb_dim, dropout=dropout, use_scale_shift_norm=use_scale_shift_norm)
        self._attn = dict(num_heads=num_heads, num_head_channels=num_head_channels,
                          use_new_attention_order=use_new_attention_order)
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        self.skip_channels = [ch]
        self.feature_size = ch
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out_channels=int(mult * model_channels), **self._res)]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **self._attn))
                self.input_blocks.append(EmbedSequential(*layers))
                self.skip_channels.append(ch)
                self.feature_size += ch
            if level != len(channel_mult) - 1:
                down = (ResBlock(ch, out_channels=ch, down=True, **self._res) if resblock_updown
                        else Downsample(ch, conv_resample, out_channels=ch))
                self.input_blocks.append(EmbedSequential(down))
                self.skip_channels.append(ch)
                self.feature_size += ch
                ds *= 2
        self.middle_block = EmbedSequential(ResBlock(ch, **self._res), AttentionBlock(ch, **self._attn),
                                            ResBlock(ch, **self._res))
        self.feature_size += ch
        self.channels, self.ds = ch, ds  # at the middle block

    def embed(self, timesteps: Tensor, dtype: torch.dtype) -> Tensor:
        """time_embed(timestep_embedding(timesteps)), [B, 4·model_channels] in ``dtype``."""
        emb = timestep_embedding(timesteps, self.model_channels, dtype)
        return self.time_embed(emb.to(dtype))


class UNetModel(_Encoder):
    """ADM's denoising U-Net: ``net(x [B, C, H, W], timesteps [B], y [B] or None) -> [B, out_channels, H, W]``.

    ``timesteps`` are ADM's (original, possibly fractional) timestep indices; ``y`` the class indices,
    given iff ``num_classes`` is set (``label_emb``). With ``learn_sigma`` the output has 2C channels:
    ε̂ then the variance interpolation (Nichol & Dhariwal 2021, Eq. 15).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions, dropout: float = 0.0, channel_mult=(1, 2, 4, 8),
                 conv_resample: bool = True, num_classes: int | None = None, num_heads: int = 1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False) -> None:
        super().__init__(image_size, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout,
                         channel_mult, conv_resample, num_heads, num_head_channels, use_scale_shift_norm,
                         resblock_updown, use_new_attention_order, num_classes)
        self.out_channels = out_channels
        up_attn = dict(self._attn, num_heads=num_heads if num_heads_upsample == -1 else num_heads_upsample)
        skips = list(self.skip_channels)
        ch, ds = self.channels, self.ds
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), out_channels=int(model_channels * mult),
                                                    **self._res)]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, **up_attn))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, out_channels=ch, up=True, **self._res) if resblock_updown
                                  else Upsample(ch, conv_resample, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 nn.Conv2d(int(channel_mult[0] * model_channels), out_channels, 3, padding=1))

    def forward(self, x: Tensor, timesteps: Tensor, y: Tensor | None = None) -> Tensor:
        if (y is None) != (self.num_classes is None):
            raise ValueError(f"ADM UNetModel: class labels y must be given iff the model is class-conditional "
                             f"(num_classes={self.num_classes}, got y={'None' if y is None else list(y.shape)})")
        emb = self.embed(timesteps, x.dtype)
        if y is not None:
            emb = emb + self.label_emb(y)
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class EncoderUNetModel(_Encoder):
    """ADM's noisy classifier: the U-Net's encoder and middle block, then a pooling head →
    ``net(x [B, C, H, W], timesteps [B]) -> logits [B, out_channels]``.

    ``pool``: 'adaptive' (GN, SiLU, global average, 1×1 conv), 'attention' (GN, SiLU,
    :class:`AttentionPool2d`; needs ``num_head_channels``), 'spatial' / 'spatial_v2' (the spatial means
    of every block's output, concatenated, through an MLP).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions, dropout: float = 0.0, channel_mult=(1, 2, 4, 8),
                 conv_resample: bool = True, num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, pool: str = "adaptive") -> None:
        del num_heads_upsample  # the encoder has no upsampling attention
        super().__init__(image_size, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout,
                         channel_mult, conv_resample, num_heads, num_head_channels, use_scale_shift_norm,
                         resblock_updown, use_new_attention_order)
        if pool not in POOLS:
            raise ValueError(f"EncoderUNetModel: unknown pool {pool!r}; expected one of: {', '.join(POOLS)}")
        self.pool, self.out_channels = pool, out_channels
        ch = self.channels
        if pool == "adaptive":
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     nn.Conv2d(ch, out_channels, 1), nn.Flatten())
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("EncoderUNetModel: pool 'attention' needs num_head_channels (got -1)")
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                     AttentionPool2d(image_size // self.ds, ch, num_head_channels, out_channels))
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(self.feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        else:
            self.out = nn.Sequential(nn.Linear(self.feature_size, 2048), GroupNorm32(2048), nn.SiLU(),
                                     nn.Linear(2048, out_channels))

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        emb = self.embed(timesteps, x.dtype)
        spatial = self.pool.startswith("spatial")
        means = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                means.append(h.mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.mean(dim=(2, 3)))
            return self.out(torch.cat(means, dim=-1))
        return self.out(h)
