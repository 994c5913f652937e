"""An ADM network as a score model: ε̂ from the first C output channels, x̂₀ optionally clipped, the
learned variance kept for ADM's own ancestral sampler.

With x = α_t x₀ + σ_t ε on ADM's path (:func:`models.adm.schedule.adm_path`) and the network fed
k(t) (:func:`models.adm.schedule.model_timesteps`):

    ε̂ = out[:, :C],   x̂₀ = (x − σ_t ε̂)/α_t,   score = −ε̂/σ_t.

``clip_denoised`` (ADM's sampling default, ``clip_denoised=True`` in ``image_sample.py``): x̂₀ is
clamped to the data range [−1, 1] and ε̂ re-derived from it, ε̂ = (x − α_t x̂₀)/σ_t — what ADM's
``p_sample`` (mean from the clipped x̂₀) and ``ddim_sample`` (ε re-derived from the clipped x̂₀) both
use, so every sampler sees the same clipped denoiser. It is a model option (recorded with the
model section); ``clip_denoised: false`` is the network as trained.

Learned variance (``learn_sigma``, Nichol & Dhariwal 2021, Eq. 15): the other C channels give
v = (out[:, C:] + 1)/2, the weight of log β_t against log β̃_t in the reverse step's log-variance.
Only :class:`solvers.adm.ADMAncestral` reads it (:meth:`ADMScore.data_noise_and_variance`); every
other sampler ignores it.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

from torch import Tensor, nn

from models.adm.schedule import model_timesteps
from models.paths import expand_like
from models.score import class_indices

__all__ = ["ADMScore", "AncestralTerms", "clip_data_and_noise"]


class AncestralTerms(NamedTuple):
    """What ADM's ancestral step needs from one network call (:meth:`ADMScore.data_noise_and_variance`)."""

    x0: Tensor  # [B, ...] x̂₀ (clipped where the model clips)
    eps: Tensor  # [B, ...] ε̂ consistent with x̂₀
    v: Tensor | None  # [B, ...] learned log-variance weight in [0, 1] (None: no learned variance)
    guidance: Tensor | None  # [B, ...] s·∇ log p(y | x_t) of a classifier (None: unguided); p_sample adds Σ·it


def clip_data_and_noise(x0: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor,
                        data_range: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """(x̂₀ clamped to ``data_range``, ε̂ = (x − α x̂₀)/σ re-derived from it); α, σ: [B]."""
    x0 = x0.clamp(*data_range)
    return x0, (x - expand_like(alpha, x) * x0) / expand_like(sigma, x)


class ADMScore:
    """An ADM ``UNetModel`` on its path, called with ADM's timestep k(t) and class labels per batch.

    Args:
        net: a loaded :class:`models.adm.unet.UNetModel`.
        path: ADM's :class:`~models.paths.TabulatedPath` (``diffusion_steps`` entries).
        rescale_timesteps: ADM's flag (the network was fed k·1000/N).
        clip_denoised: clamp x̂₀ to [−1, 1] (module docstring).
    """

    def __init__(self, net: nn.Module, path, rescale_timesteps: bool = False, clip_denoised: bool = True) -> None:
        self.net = net.eval()
        self.sde = path
        self.steps = len(path.alphas_cumprod)
        self.rescale_timesteps = bool(rescale_timesteps)
        self.clip_denoised = bool(clip_denoised)
        self.shape = (net.in_channels, net.image_size, net.image_size)
        self.data_range = (-1.0, 1.0)
        self.learn_sigma = net.out_channels == 2 * net.in_channels
        self.label_dim = int(net.num_classes or 0)
        self.row_labels: Tensor | None = None  # [B] class indices once conditioned

    def conditioned(self, labels: Tensor) -> ADMScore:
        """The same network for a batch whose row i asks for class ``labels[i]`` (no copy of the network)."""
        new = copy.copy(self)
        device = next(self.net.parameters()).device
        new.row_labels = class_indices(labels, self.label_dim, "ADM model").to(device)
        return new

    def timesteps(self, t: Tensor) -> Tensor:
        """The network's timestep input k(t) [B] float64 (:func:`models.adm.schedule.model_timesteps`)."""
        return model_timesteps(t, self.steps, self.rescale_timesteps)

    def network_output(self, x: Tensor, t: Tensor) -> Tensor:
        """The raw output [B, C or 2C, H, W] at (x, t) (one network call), in x's dtype."""
        y = None
        if self.label_dim:
            if self.row_labels is None:
                raise ValueError(f"ADM model: the network is class-conditional ({self.label_dim} classes) and was "
                                 f"called without class labels; condition it first (models.score.conditioned)")
            if self.row_labels.shape[0] != x.shape[0]:
                raise ValueError(f"ADM model: {self.row_labels.shape[0]} per-sample class labels for a batch of "
                                 f"{x.shape[0]} (a row subset must go through select_rows)")
            y = self.row_labels
        param = next(self.net.parameters())
        return self.net(x.to(param.dtype), self.timesteps(t).to(x.device), y).to(x.dtype)

    def _split(self, out: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        c = x.shape[1]
        eps = out[:, :c]
        alpha, sigma = self.sde.marginal(t)
        x0 = (x - expand_like(sigma, x) * eps) / expand_like(alpha, x)
        if self.clip_denoised:
            x0, eps = clip_data_and_noise(x0, x, alpha, sigma, self.data_range)
        v = (out[:, c:] + 1) / 2 if self.learn_sigma else None
        return x0, eps, v

    def data_and_noise(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) [B, ...] at (x, t), one network call."""
        x0, eps, _ = self._split(self.network_output(x, t), x, t)
        return x0, eps

    def data_noise_and_variance(self, x: Tensor, t: Tensor) -> AncestralTerms:
        """x̂₀, ε̂ and the learned variance weight v (None without ``learn_sigma``), one network call."""
        return AncestralTerms(*self._split(self.network_output(x, t), x, t), None)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """The score −ε̂/σ_t [B, ...], one network call."""
        sigma = self.sde.marginal(t)[1]
        return -self.data_and_noise(x, t)[1] / expand_like(sigma, x)
