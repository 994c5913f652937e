"""NCSNv2 (Song & Ermon 2020, "Improved Techniques for Training Score-Based Generative Models").

A RefineNet with InstanceNorm++ and ELU, four residual stages (the last two dilated instead of
downsampled) and four refine blocks. The network itself is *not* conditioned on the noise level;
Technique 3 of the paper conditions it by dividing the output by σ:
``s_θ(x, σ) = f_θ(x) / σ``.

Label convention (``forward(x, labels)``):

* **float labels are σ** (continuous use; this is NetworkScore's VE ``'continuous'`` convention,
  label = σ(t), output = score);
* **integer labels are indices** into the descending ``sigmas`` table (σ_max first; NetworkScore's
  ``'smld'`` convention, as the official discrete NCSNv2).

Unlike the official code the output keeps the input's dtype for integer labels too (the float64
``sigmas`` buffer is cast before the division).

Works at any even H = W whose half is at least 2: 32×32 (the CIFAR-10 model, score_sde's
``ncsnv2_64``), 28×28 (Fashion-MNIST) and 8×8 (digits) are exercised in the tests.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.networks.layers import get_act, get_sigmas
from models.networks.refinenet import InstanceNorm2dPlus, RefineBlock, ResidualBlock

__all__ = ["NCSNv2"]


class NCSNv2(nn.Module):
    """NCSNv2 score network.

    Args:
        nf: base width (the CIFAR-10 model uses 128).
        image_size: H = W of the input (only recorded; the network is fully convolutional).
        num_channels: C of the input.
        centered: data in [-1, 1]; otherwise the network maps x ↦ 2x − 1.
        sigma_min: smallest σ of the ``sigmas`` table.
        sigma_max: largest σ (Technique 1: about the largest pairwise distance of the data).
        num_scales: length of the geometric ``sigmas`` table (Technique 2).
        nonlinearity: activation name ('elu' in the paper).
    """

    def __init__(
        self,
        *,
        nf: int = 128,
        image_size: int = 32,
        num_channels: int = 3,
        centered: bool = False,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 232,
        nonlinearity: str = "elu",
    ) -> None:
        super().__init__()
        if image_size % 2 or image_size < 4:
            raise ValueError(f"NCSNv2: image_size must be even and >= 4, got {image_size}")
        self.centered, self.nf, self.image_size = centered, nf, image_size
        self.act = act = get_act(nonlinearity)
        self.register_buffer("sigmas", get_sigmas(sigma_min, sigma_max, num_scales))

        self.begin_conv = nn.Conv2d(num_channels, nf, 3, stride=1, padding=1)
        self.normalizer = InstanceNorm2dPlus(nf)
        self.end_conv = nn.Conv2d(nf, num_channels, 3, stride=1, padding=1)
        self.res1 = nn.ModuleList([ResidualBlock(nf, nf, act=act), ResidualBlock(nf, nf, act=act)])
        self.res2 = nn.ModuleList(
            [ResidualBlock(nf, 2 * nf, resample="down", act=act), ResidualBlock(2 * nf, 2 * nf, act=act)]
        )
        self.res3 = nn.ModuleList(
            [
                ResidualBlock(2 * nf, 2 * nf, resample="down", act=act, dilation=2),
                ResidualBlock(2 * nf, 2 * nf, act=act, dilation=2),
            ]
        )
        self.res4 = nn.ModuleList(
            [
                ResidualBlock(2 * nf, 2 * nf, resample="down", act=act, dilation=4),
                ResidualBlock(2 * nf, 2 * nf, act=act, dilation=4),
            ]
        )
        self.refine1 = RefineBlock([2 * nf], 2 * nf, act=act, start=True)
        self.refine2 = RefineBlock([2 * nf, 2 * nf], 2 * nf, act=act)
        self.refine3 = RefineBlock([2 * nf, 2 * nf], nf, act=act)
        self.refine4 = RefineBlock([nf, nf], nf, act=act, end=True)

    @staticmethod
    def _stage(blocks: nn.ModuleList, x: Tensor) -> Tensor:
        for block in blocks:
            x = block(x)
        return x

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """Score for x [B, C, H, W] at noise levels ``labels`` [B] (σ if float, table index if integer)."""
        h = x if self.centered else 2 * x - 1.0
        h = self.begin_conv(h)
        layer1 = self._stage(self.res1, h)
        layer2 = self._stage(self.res2, layer1)
        layer3 = self._stage(self.res3, layer2)
        layer4 = self._stage(self.res4, layer3)

        ref1 = self.refine1([layer4], layer4.shape[2:])
        ref2 = self.refine2([layer3, ref1], layer3.shape[2:])
        ref3 = self.refine3([layer2, ref2], layer2.shape[2:])
        h = self.refine4([layer1, ref3], layer1.shape[2:])
        h = self.end_conv(self.act(self.normalizer(h)))

        # Technique 3: noise conditioning by dividing the output by σ.
        sigma = labels if labels.is_floating_point() else self.sigmas[labels]
        return h / sigma.to(h.dtype).reshape(x.shape[0], *([1] * (x.dim() - 1)))
