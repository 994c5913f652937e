"""EDM2's magnitude-preserving U-Net (Karras et al. 2024, Figure 21, config G), written for this
project. Module names (``enc.16x16_conv``, ``dec.8x8_in0``, ...) and parameter order are EDM2's, so a
snapshot's ``state_dict`` loads strictly. Called ``unet(x [B, C, H, W], noise_labels [B],
class_labels [1 or B, label_dim] or None)``; returns F_x [B, C, H, W].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.edm2.layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample

__all__ = ["Block", "UNet"]


class Block(nn.Module):
    """A residual block with optional self-attention. 'enc' blocks resample, project the skip and
    pixel-normalise before the residual branch; 'dec' blocks project the skip after it. The residual
    branch is conv3×3(mp_silu(x)), modulated by (1 + gain·linear(emb)), then conv3×3(mp_silu(·));
    branches meet in mp_sum(t = res_balance). Attention: ``num_heads`` = out_channels //
    channels_per_head (0 without attention), q, k, v pixel-normalised per head."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample_mode: str = "keep", resample_filter=(1, 1), attention: bool = False,
                 channels_per_head: int = 64, dropout: float = 0, res_balance: float = 0.3,
                 attn_balance: float = 0.3, clip_act: float | None = 256) -> None:
        if flavor not in ("enc", "dec"):
            raise ValueError(f"Block: flavor must be 'enc' or 'dec', got {flavor!r}")
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout  # training only; sampling never drops
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # Main branch.
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        # Residual branch, modulated by the embedding.
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1  # [B, out_channels]
        y = self.conv_res1(mp_silu(y * c[:, :, None, None].to(y.dtype)))
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        # Self-attention over the H·W positions; qkv channels interleaved as (head, c, {q, k, v}).
        if self.num_heads:
            qkv = self.attn_qkv(x)
            qkv = qkv.reshape(qkv.shape[0], self.num_heads, -1, 3, qkv.shape[2] * qkv.shape[3])
            q, k, v = normalize(qkv, dim=2).unbind(3)  # [B, heads, c, HW] each
            weights = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
            y = torch.einsum("nhqk,nhck->nhcq", weights, v)
            x = mp_sum(x, self.attn_proj(y.reshape(*x.shape)), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clip(-self.clip_act, self.clip_act)
        return x


class UNet(nn.Module):
    """EDM2's U-Net: noise embedding MPFourier → MPConv (plus the class embedding by mp_sum), an
    encoder of ``num_blocks`` blocks per resolution (a 'down' block between levels), a decoder that
    opens with two blocks at the lowest resolution ('in0' with attention, 'in1') or an 'up' block,
    then ``num_blocks + 1`` blocks each fed mp_cat(x, skip); every encoder output is a skip. A
    constant-1 channel is appended to the input; the output conv carries the learned ``out_gain``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, model_channels: int = 192,
                 channel_mult=(1, 2, 3, 4), channel_mult_noise: int | None = None, channel_mult_emb: int | None = None,
                 num_blocks: int = 3, attn_resolutions=(16, 8), label_balance: float = 0.5,
                 concat_balance: float = 0.5, **block_kwargs) -> None:
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim else None

        def block(cin: int, cout: int, flavor: str, **kw) -> Block:
            return Block(cin, cout, cemb, flavor=flavor, **kw, **block_kwargs)

        self.enc = nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(cout, channels, kernel=[3, 3])
                cout = channels
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, "enc", resample_mode="down")
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = block(cout, channels, "enc", attention=res in attn_resolutions)
                cout = channels

        self.dec = nn.ModuleDict()
        skips = [m.out_channels for m in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, "dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, "dec")
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, "dec", resample_mode="up")
            for idx in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = block(cout + skips.pop(), channels, "dec",
                                                            attention=res in attn_resolutions)
                cout = channels
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def embedding(self, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        """The block embedding [B, cemb]: mp_silu of the noise embedding mp_sum'ed with the class one."""
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            labels = class_labels * math.sqrt(class_labels.shape[1])  # unit-RMS one-hot rows
            emb = mp_sum(emb, self.emb_label(labels), t=self.label_balance)
        return mp_silu(emb)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        emb = self.embedding(noise_labels, class_labels)
        # Encoder: every output, the first conv's too, is a skip.
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, module in self.enc.items():
            x = module(x) if name.endswith("_conv") else module(x, emb)
            skips.append(x)
        # Decoder: the blocks (not in0/in1/up) take the next skip, current activation first.
        for name, module in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = module(x, emb)
        return self.out_conv(x, gain=self.out_gain)
