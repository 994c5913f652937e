"""NCSN++ and DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs", appendix H).

One U-Net class covers both: DDPM++ is NCSN++ with positional time embedding, no FIR, no input
pyramid and no division by σ. The modules live in one flat ``all_modules`` list, in the order of
the official code, so that official checkpoints load key for key.

Label convention (``forward(x, time_cond)``):

* ``embedding_type='fourier'``: ``time_cond`` is σ (float); the embedding is Fourier features of
  log σ and, with ``scale_by_sigma``, the output is divided by σ, so the output is the score.
* ``embedding_type='positional'``: ``time_cond`` is a float label (999·t for continuous VP/sub-VP,
  or a discrete index); with ``scale_by_sigma`` the output is divided by ``sigmas[floor(label)]``,
  which is float64, so the output is float64 (as the official discrete VE NCSN++).

Uncentered models (``centered=False``, data in [0, 1]) map the noisy input x ↦ 2x − 1 themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.networks.blocks import (
    AttnBlockpp,
    Combine,
    Downsample,
    ResnetBlockBigGANpp,
    ResnetBlockDDPMpp,
    Upsample,
)
from models.networks.layers import (
    GaussianFourierProjection,
    conv3x3,
    dense,
    get_act,
    get_sigmas,
    get_timestep_embedding,
    group_norm,
)

__all__ = ["NCSNpp"]

_CHOICES = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
}


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net.

    Args:
        nf: base width.
        ch_mult: width multiplier per resolution.
        num_res_blocks: residual blocks per resolution (the deep variants use 8).
        attn_resolutions: resolutions with self-attention.
        dropout: dropout rate.
        resamp_with_conv: learned convolution in the stand-alone resampling layers.
        image_size: H = W of the input.
        num_channels: C of the input.
        centered: data in [-1, 1]; otherwise the network maps x ↦ 2x − 1.
        conditional: use the time embedding.
        fir: FIR resampling (``fir_kernel``) instead of nearest / average pooling.
        fir_kernel: 1-D FIR taps.
        skip_rescale: divide residual sums by √2.
        resblock_type: 'biggan' (resample inside residual blocks) or 'ddpm'.
        progressive: output pyramid 'none', 'output_skip' or 'residual'.
        progressive_input: input pyramid 'none', 'input_skip' or 'residual'.
        progressive_combine: 'sum' or 'cat' (for the skip pyramids).
        embedding_type: 'fourier' (label is σ) or 'positional' (label is a float time index).
        fourier_scale: std of the fixed Fourier frequencies.
        init_scale: init scale of the last layer of every residual branch.
        scale_by_sigma: divide the output by σ (see module docstring).
        sigma_min: smallest σ of the ``sigmas`` buffer.
        sigma_max: largest σ of the ``sigmas`` buffer.
        num_scales: length of the ``sigmas`` buffer.
        nonlinearity: activation name.
        num_groups: GroupNorm groups; None is NCSN++'s ``min(C // 4, 32)`` (DDPM uses 32).
    """

    def __init__(
        self,
        *,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        image_size: int = 32,
        num_channels: int = 3,
        centered: bool = False,
        conditional: bool = True,
        fir: bool = True,
        fir_kernel: Sequence[int] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        resblock_type: str = "biggan",
        progressive: str = "none",
        progressive_input: str = "residual",
        progressive_combine: str = "sum",
        embedding_type: str = "fourier",
        fourier_scale: float = 16.0,
        init_scale: float = 0.0,
        scale_by_sigma: bool = True,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
        nonlinearity: str = "swish",
        num_groups: int | None = None,
    ) -> None:
        super().__init__()
        if num_groups is not None and nf % num_groups:
            raise ValueError(f"{type(self).__name__}: nf must be a multiple of num_groups={num_groups}, got {nf}")
        options = dict(
            resblock_type=resblock_type,
            progressive=progressive,
            progressive_input=progressive_input,
            progressive_combine=progressive_combine,
            embedding_type=embedding_type,
        )
        for key, value in options.items():
            if value not in _CHOICES[key]:
                raise ValueError(f"NCSNpp: unknown {key} {value!r}; expected one of: {', '.join(_CHOICES[key])}")
        self.act = act = get_act(nonlinearity)
        self.register_buffer("sigmas", get_sigmas(sigma_min, sigma_max, num_scales))
        self.nf, self.num_res_blocks = nf, num_res_blocks
        self.attn_resolutions = tuple(attn_resolutions)
        self.num_resolutions = num_resolutions = len(ch_mult)
        all_resolutions = [image_size // 2**i for i in range(num_resolutions)]
        self.centered, self.conditional, self.scale_by_sigma = centered, conditional, scale_by_sigma
        self.skip_rescale, self.resblock_type, self.embedding_type = skip_rescale, resblock_type, embedding_type
        self.progressive, self.progressive_input = progressive, progressive_input

        def attn(channels: int) -> nn.Module:
            return AttnBlockpp(channels, skip_rescale=skip_rescale, init_scale=init_scale, num_groups=num_groups)

        def resnet(in_ch: int, out_ch: int | None = None, up: bool = False, down: bool = False) -> nn.Module:
            if resblock_type == "ddpm":
                return ResnetBlockDDPMpp(
                    act, in_ch, out_ch, temb_dim=4 * nf, dropout=dropout,
                    skip_rescale=skip_rescale, init_scale=init_scale, num_groups=num_groups,
                )  # fmt: skip
            return ResnetBlockBigGANpp(
                act, in_ch, out_ch, temb_dim=4 * nf, up=up, down=down, dropout=dropout,
                fir=fir, fir_kernel=fir_kernel, skip_rescale=skip_rescale, init_scale=init_scale,
                num_groups=num_groups,
            )  # fmt: skip

        # Time embedding.
        modules: list[nn.Module] = []
        if embedding_type == "fourier":
            modules.append(GaussianFourierProjection(embedding_size=nf, scale=fourier_scale))
        embed_dim = 2 * nf if embedding_type == "fourier" else nf
        if conditional:
            modules += [dense(embed_dim, 4 * nf), dense(4 * nf, 4 * nf)]

        # Output pyramid helpers (not in all_modules when they have no parameters).
        if progressive == "output_skip":
            self.pyramid_upsample = Upsample(in_ch=None, fir=fir, fir_kernel=fir_kernel, with_conv=False)
        if progressive_input == "input_skip":
            self.pyramid_downsample = Downsample(in_ch=None, fir=fir, fir_kernel=fir_kernel, with_conv=False)

        # Downsampling path.
        channels = num_channels
        input_pyramid_ch = channels
        modules.append(conv3x3(channels, nf))
        hs_c = [nf]
        in_ch = nf
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                out_ch = nf * ch_mult[i_level]
                modules.append(resnet(in_ch, out_ch))
                in_ch = out_ch
                if all_resolutions[i_level] in self.attn_resolutions:
                    modules.append(attn(in_ch))
                hs_c.append(in_ch)
            if i_level != num_resolutions - 1:
                if resblock_type == "ddpm":
                    modules.append(Downsample(in_ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel))
                else:
                    modules.append(resnet(in_ch, down=True))
                if progressive_input == "input_skip":
                    modules.append(Combine(input_pyramid_ch, in_ch, method=progressive_combine))
                    if progressive_combine == "cat":
                        in_ch *= 2
                elif progressive_input == "residual":
                    modules.append(Downsample(input_pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel))
                    input_pyramid_ch = in_ch
                hs_c.append(in_ch)

        # Middle.
        in_ch = hs_c[-1]
        modules += [resnet(in_ch), attn(in_ch), resnet(in_ch)]

        # Upsampling path.
        pyramid_ch = 0
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[i_level]
                modules.append(resnet(in_ch + hs_c.pop(), out_ch))
                in_ch = out_ch
            if all_resolutions[i_level] in self.attn_resolutions:
                modules.append(attn(in_ch))
            if progressive != "none":
                if i_level == num_resolutions - 1:
                    modules.append(group_norm(in_ch, num_groups))
                    if progressive == "output_skip":
                        modules.append(conv3x3(in_ch, channels, init_scale=init_scale))
                        pyramid_ch = channels
                    else:
                        modules.append(conv3x3(in_ch, in_ch, bias=True))
                        pyramid_ch = in_ch
                elif progressive == "output_skip":
                    modules.append(group_norm(in_ch, num_groups))
                    modules.append(conv3x3(in_ch, channels, bias=True, init_scale=init_scale))
                    pyramid_ch = channels
                else:
                    modules.append(Upsample(pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel))
                    pyramid_ch = in_ch
            if i_level != 0:
                if resblock_type == "ddpm":
                    modules.append(Upsample(in_ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel))
                else:
                    modules.append(resnet(in_ch, up=True))
        assert not hs_c

        if progressive != "output_skip":
            modules.append(group_norm(in_ch, num_groups))
            modules.append(conv3x3(in_ch, channels, init_scale=init_scale))
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x: Tensor, time_cond: Tensor) -> Tensor:
        """Network output for the noisy input x [B, C, H, W] and labels time_cond [B]."""
        modules = iter(self.all_modules)

        # Time embedding.
        if self.embedding_type == "fourier":
            used_sigmas = time_cond
            temb = next(modules)(torch.log(used_sigmas))
        else:
            temb = get_timestep_embedding(time_cond, self.nf)
        if self.conditional:
            temb = next(modules)(temb)
            temb = next(modules)(self.act(temb))
        else:
            temb = None

        if not self.centered:
            x = 2 * x - 1.0

        # Downsampling path.
        input_pyramid = x if self.progressive_input != "none" else None
        hs = [next(modules)(x)]
        for i_level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(modules)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(modules)(h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                h = next(modules)(hs[-1]) if self.resblock_type == "ddpm" else next(modules)(hs[-1], temb)
                if self.progressive_input == "input_skip":
                    input_pyramid = self.pyramid_downsample(input_pyramid)
                    h = next(modules)(input_pyramid, h)
                elif self.progressive_input == "residual":
                    input_pyramid = next(modules)(input_pyramid)
                    input_pyramid = (input_pyramid + h) / math.sqrt(2.0) if self.skip_rescale else input_pyramid + h
                    h = input_pyramid
                hs.append(h)

        # Middle.
        h = hs[-1]
        h = next(modules)(h, temb)
        h = next(modules)(h)
        h = next(modules)(h, temb)

        # Upsampling path.
        pyramid = None
        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = next(modules)(h)
            if self.progressive != "none":
                if i_level == self.num_resolutions - 1:
                    pyramid = self.act(next(modules)(h))
                    pyramid = next(modules)(pyramid)
                elif self.progressive == "output_skip":
                    pyramid = self.pyramid_upsample(pyramid)
                    pyramid_h = self.act(next(modules)(h))
                    pyramid = pyramid + next(modules)(pyramid_h)
                else:
                    pyramid = next(modules)(pyramid)
                    pyramid = (pyramid + h) / math.sqrt(2.0) if self.skip_rescale else pyramid + h
                    h = pyramid
            if i_level != 0:
                h = next(modules)(h) if self.resblock_type == "ddpm" else next(modules)(h, temb)
        assert not hs

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self.act(next(modules)(h))
            h = next(modules)(h)
        if next(modules, None) is not None:
            raise RuntimeError(f"{type(self).__name__}: construction and forward disagree on the modules used")

        if self.scale_by_sigma:
            if self.embedding_type == "positional":
                used_sigmas = self.sigmas[time_cond.long()]
            h = h / used_sigmas.reshape(x.shape[0], *([1] * (x.dim() - 1)))
        return h
