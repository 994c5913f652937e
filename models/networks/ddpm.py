"""DDPM U-Net (Ho et al. 2020, appendix B), as score_sde_pytorch's ``ddpm`` model.

Positional embedding of the float label, residual blocks with GroupNorm(32), self-attention at the
listed resolutions, strided-conv downsampling and nearest + conv upsampling. The output predicts
the noise ε (the score is −output/σ_t).

It is the NCSN++ U-Net with DDPM's settings: 'ddpm' residual blocks, no FIR, no pyramids, no √2
rescaling of residual sums, 32 GroupNorm groups. Its modules and their order in ``all_modules``
are then exactly those of the official ``DDPM`` class (checked against the official layout).
"""

from __future__ import annotations

from collections.abc import Sequence

from models.networks.ncsnpp import NCSNpp

__all__ = ["DDPM"]


class DDPM(NCSNpp):
    """DDPM U-Net; the arguments are those of :class:`NCSNpp` that DDPM's config exposes.

    ``nf`` must be a multiple of 32 (GroupNorm groups). With ``scale_by_sigma`` the output is
    divided by ``sigmas[floor(label)]`` (float64, as the official code).
    """

    def __init__(
        self,
        *,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        image_size: int = 32,
        num_channels: int = 3,
        centered: bool = True,
        conditional: bool = True,
        scale_by_sigma: bool = False,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
        nonlinearity: str = "swish",
    ) -> None:
        super().__init__(
            nf=nf, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
            dropout=dropout, resamp_with_conv=resamp_with_conv, image_size=image_size,
            num_channels=num_channels, centered=centered, conditional=conditional,
            scale_by_sigma=scale_by_sigma, sigma_min=sigma_min, sigma_max=sigma_max, num_scales=num_scales,
            nonlinearity=nonlinearity,
            # DDPM's fixed choices.
            resblock_type="ddpm", fir=False, skip_rescale=False, progressive="none", progressive_input="none",
            embedding_type="positional", init_scale=0.0, num_groups=32,
        )  # fmt: skip
