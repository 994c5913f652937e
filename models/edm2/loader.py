"""EDM2 network snapshots as score models (Karras et al. 2024; NVlabs/edm2's
``network-snapshot-*.pkl`` and the post-hoc EMA reconstructions ``edm2-img*-*.pkl``), without
NVIDIA's code.

:func:`load_network` reads the pickle with the restricted unpickler of :mod:`models.edm.unpickle`
(nothing stored is imported or executed), builds the project's :class:`~models.edm2.precond.Precond`
from the stored constructor arguments, checks the module tree and loads the tensors strictly (keys
and shapes), as :mod:`models.edm.loader` does for EDM. Snapshots store float16 weights; they are
upcast exactly, and the one product EDM2 evaluates in float16 (a learned gain / √fan_in) is rounded
the same way (:class:`~models.edm2.layers.MPConv`).

:class:`EDM2Score` is the denoiser as a score model with the 'edm' prediction
(:mod:`models.parameterisation`): x̂₀ = D(x; σ) on the VE SDE σ_t ∈ [0.002, 80] of
``generate_images.py``, score (D − x)/σ²; class labels per batch (:func:`models.score.conditioned`);
the snapshot's encoder says whether samples are pixels or VAE latents (:mod:`models.edm2.encoders`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from models.edm.loader import EDMScore, NetworkInfo, network_from_record, network_label_dim, one_hot_labels, sde_for
from models.edm.unpickle import read_snapshot, state_dict
from models.edm2.encoders import SampleSpace, sample_space_from_record
from models.edm2.layers import MPConv
from models.edm2.precond import PRECONDS
from models.parameterisation import to_data_and_noise
from models.sde import expand_like

__all__ = ["load_network", "load_edm2", "read_edm2_snapshot", "edm2_label_dim", "EDM2Score"]


def read_edm2_snapshot(path: str | Path, key: str = "ema") -> tuple[nn.Module, NetworkInfo, SampleSpace]:
    """(network in eval mode, float32 on CPU; its info; the sample space of the ``encoder`` entry).

    Raises:
        UnsafePickleError: the file needs a global or construct the loader does not accept.
        ValueError: unknown entry or class, constructor arguments, module tree, keys or shapes that
            differ from the project's network, an unknown encoder.
    """
    path = Path(path)
    data = read_snapshot(path)
    if key not in data:
        raise ValueError(f"{path}: no entry {key!r}; expected one of: {', '.join(map(str, data))}")
    record = data[key]
    net, info = network_from_record(record, f"{path} entry {key!r}", PRECONDS)
    gain_dtype = state_dict(record)["unet.out_gain"].dtype  # float16 in every EDM2 snapshot
    for module in net.modules():
        if isinstance(module, MPConv):
            module.gain_dtype = gain_dtype
    return net, info, sample_space_from_record(data.get("encoder"), f"{path} entry 'encoder'")


def load_network(path: str | Path, key: str = "ema") -> tuple[nn.Module, NetworkInfo]:
    """The EDM2 ``Precond`` stored under ``key`` and its info (see :func:`read_edm2_snapshot`)."""
    net, info, _ = read_edm2_snapshot(path, key)
    return net, info


def edm2_label_dim(path: str | Path, key: str = "ema") -> int:
    """The number of classes of the snapshot's network, from its stored arguments (tensors unread)."""
    return network_label_dim(path, key, PRECONDS)


class EDM2Score(EDMScore):
    """An EDM2 denoiser as a score model: 'edm' prediction (x̂₀ = D(x; σ_t) on the VE SDE, one network
    call per :meth:`data_and_noise` or score call), class labels as :class:`~models.edm.loader.EDMScore`
    (fixed, or per batch through :meth:`conditioned`).

    Args:
        precond: a loaded :class:`~models.edm2.precond.Precond`.
        sde: its SDE (:func:`models.edm.loader.sde_for`: VE, σ ∈ [0.002, 80] by default).
        space: the snapshot's sample space (pixels or VAE latents).
        class_labels: [1 or B, label_dim] label vectors, or None.
    """

    def __init__(self, precond: nn.Module, sde, space: SampleSpace, class_labels: Tensor | None = None) -> None:
        super().__init__(precond, sde, class_labels)
        self.space = space

    @property
    def latent(self) -> bool:
        """Whether the samples are VAE latents (else pixels in [-1, 1])."""
        return self.space.latent

    def latent_to_vae(self, x: Tensor) -> Tensor:
        """The VAE decoder's input for latent samples x [B, C, H, W]: (x − bias)/scale, float32."""
        return self.space.latent_to_vae(x)

    def data_and_noise(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) [B, ...] at (x, t): x̂₀ = D(x/α_t; σ_t/α_t) (one network call)."""
        alpha, sigma = self.sde.marginal(t.to(torch.float64))
        out = self.denoise(x / expand_like(alpha, x), sigma / alpha)
        return to_data_and_noise(out, x, "edm", self.sde, t)


def load_edm2(path: str | Path, key: str = "ema", label=None, sigma_min: float | None = None,
              sigma_max: float | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> EDM2Score:
    """An EDM2 snapshot as a score model (:class:`EDM2Score`) on ``device`` in ``dtype``.

    Args:
        path: ``network-snapshot-*.pkl`` or a post-hoc reconstruction ``edm2-img*-*.pkl``.
        key: the snapshot entry ('ema').
        label: class index (or per-sample indices); None: conditioned per batch later.
        sigma_min, sigma_max: the σ range sampled (default generate_images.py's 0.002–80).
    """
    net, _, space = read_edm2_snapshot(path, key)
    net = net.to(device=device, dtype=dtype)
    labels = one_hot_labels(net.label_dim, label)
    labels = None if labels is None else labels.to(device=device, dtype=dtype)
    return EDM2Score(net, sde_for(net, sigma_min, sigma_max), space, labels)
