"""Model configurations as plain data: the official score_sde CIFAR-10 configs, and NCSNv2 ones.

Each :class:`ModelConfig` records the network (architecture name + constructor arguments), the SDE
(with its sampling ε), the time-label convention of :class:`models.score.NetworkScore`, the data
range, and the EMA rate, sampling and training settings of the official config. The official
values were taken from score_sde_pytorch's ``configs/`` (commit cb1f359) and are checked against
shared/fixtures/score_sde/arch/*.json by tests/test_networks.py.

Names are the official config paths. ``vp/ddpm/cifar10_continuous`` (the official path),
``vp/cifar10_ddpm_continuous`` (its checkpoint folder) and ``vp/ddpm_cifar10_continuous`` (the name
of its architecture file) are the same config; see ``ALIASES``. Configs not covered by an
architecture file (the discrete ones, sub-VP DDPM, NCSNv2) follow the official config files but are
checked only by parameter counts and forward runs.

Usage::

    net = build_network("ve/cifar10_ncsnpp_continuous", nf=16)   # reduced width
    config = get_config("vp/cifar10_ddpmpp_continuous"); sde = config.make_sde()
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from models.networks import NETWORKS
from models.sde import SDE, make_sde

__all__ = ["ModelConfig", "CONFIGS", "ALIASES", "get_config", "build_network", "config_names"]


@dataclass(frozen=True)
class ModelConfig:
    """One model configuration.

    Attributes:
        name: the config name, e.g. 've/cifar10_ncsnpp_continuous'.
        network: key of ``models.networks.NETWORKS``.
        arch: keyword arguments of the network constructor (data shape and centering included).
        sde: ``make_sde`` arguments: ``kind`` plus the SDE parameters and the sampling ``eps``.
        time_label: NetworkScore convention: 'continuous', 'ddpm' or 'smld'.
        num_scales: N of the discrete model (the official config's ``model.num_scales``).
        ema_rate: EMA decay used in training (the loader applies the stored EMA weights).
        likelihood_eps: lower integration limit of the likelihood ODE.
        dataset: dataset name of the config.
        sampling: the official sampler settings (predictor, corrector, snr, ...).
        training: the official training settings that matter for evaluation.
    """

    name: str
    network: str
    arch: dict[str, Any]
    sde: dict[str, Any]
    time_label: str
    num_scales: int
    ema_rate: float
    likelihood_eps: float = 1e-5
    dataset: str = "CIFAR10"
    sampling: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        return (self.arch["num_channels"], self.arch["image_size"], self.arch["image_size"])

    @property
    def centered(self) -> bool:
        return self.arch["centered"]

    @property
    def data_range(self) -> tuple[float, float]:
        """(-1, 1) for centered models, (0, 1) for uncentered ones (the network centers itself)."""
        return (-1.0, 1.0) if self.centered else (0.0, 1.0)

    @property
    def sampling_eps(self) -> float:
        return self.sde["eps"]

    def make_sde(self) -> SDE:
        """The SDE of this config (a models.sde object)."""
        return make_sde(**self.sde)

    def build(self, **overrides: Any) -> nn.Module:
        """The network, with constructor arguments overridden (e.g. ``nf=16``); see :func:`build_network`."""
        cls = NETWORKS[self.network]
        allowed = [p for p in inspect.signature(cls).parameters]
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown override(s) {unknown} for config {self.name!r} ({self.network}); "
                f"expected some of: {', '.join(allowed)}"
            )
        return cls(**{**self.arch, **overrides})


# Shared settings of the official CIFAR-10 configs (configs/default_cifar10_configs.py).
_CIFAR10 = dict(image_size=32, num_channels=3)
_TRAINING = dict(continuous=True, reduce_mean=False, likelihood_weighting=False, n_iters=1300001, batch_size=128)
_SAMPLING = dict(
    method="pc", predictor="euler_maruyama", corrector="none", snr=0.16, n_steps_each=1,
    noise_removal=True, probability_flow=False,
)  # fmt: skip
_VE = dict(kind="ve", sigma_min=0.01, sigma_max=50.0, T=1.0, eps=1e-5)
_VP = dict(kind="vp", beta_min=0.1, beta_max=20.0, T=1.0, eps=1e-3)
_SUBVP = dict(_VP, kind="subvp")
_UNET = dict(
    ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), dropout=0.1, resamp_with_conv=True, conditional=True,
    sigma_min=0.01, sigma_max=50.0, num_scales=1000, nonlinearity="swish", nf=128,
)  # fmt: skip

# configs/ve/cifar10_ncsnpp_continuous.py
_NCSNPP = dict(
    _UNET, **_CIFAR10, centered=False, num_res_blocks=4, fir=True, fir_kernel=(1, 3, 3, 1),
    skip_rescale=True, resblock_type="biggan", progressive="none", progressive_input="residual",
    progressive_combine="sum", embedding_type="fourier", fourier_scale=16.0, init_scale=0.0,
    scale_by_sigma=True,
)  # fmt: skip
# configs/vp/cifar10_ddpmpp_continuous.py: the NCSN++ code as DDPM++.
_DDPMPP = dict(
    _NCSNPP, centered=True, fir=False, progressive_input="none", embedding_type="positional",
    scale_by_sigma=False,
)  # fmt: skip
# configs/vp/ddpm/cifar10_continuous.py
_DDPM = dict(_UNET, **_CIFAR10, centered=True, num_res_blocks=2, scale_by_sigma=False)

_VE_SAMPLING = dict(_SAMPLING, predictor="reverse_diffusion", corrector="langevin")


def _official(name: str, network: str, arch: dict, sde: dict, *, ema_rate: float, time_label: str = "continuous",
              sampling: dict = _SAMPLING, **training) -> ModelConfig:  # fmt: skip
    return ModelConfig(
        name=name, network=network, arch=arch, sde=sde, time_label=time_label, num_scales=arch["num_scales"],
        ema_rate=ema_rate, sampling=dict(sampling), training=dict(_TRAINING, **training),
    )  # fmt: skip


def _ncsnv2(name: str, *, time_label: str, dataset: str, image_size: int, num_channels: int, nf: int,
            sigma_max: float, num_scales: int, sigma_min: float = 0.01) -> ModelConfig:  # fmt: skip
    """NCSNv2 config: σ_max by Technique 1, a geometric table of ``num_scales`` by Technique 2."""
    arch = dict(nf=nf, image_size=image_size, num_channels=num_channels, centered=False,
                sigma_min=sigma_min, sigma_max=sigma_max, num_scales=num_scales, nonlinearity="elu")  # fmt: skip
    sampling = dict(_SAMPLING, predictor="none", corrector="ald", snr=0.176, n_steps_each=5)
    return ModelConfig(
        name=name, network="ncsnv2", arch=arch, time_label=time_label, num_scales=num_scales, ema_rate=0.999,
        sde=dict(_VE, sigma_min=sigma_min, sigma_max=sigma_max), dataset=dataset, sampling=sampling,
        training=dict(_TRAINING, continuous=time_label == "continuous"),
    )  # fmt: skip


_ALL = [
    _official("ve/cifar10_ncsnpp_continuous", "ncsnpp", _NCSNPP, _VE, ema_rate=0.999, sampling=_VE_SAMPLING),
    _official("ve/cifar10_ncsnpp_deep_continuous", "ncsnpp", dict(_NCSNPP, num_res_blocks=8), _VE,
              ema_rate=0.999, sampling=_VE_SAMPLING, n_iters=950001),  # fmt: skip
    _official("vp/cifar10_ddpmpp_continuous", "ncsnpp", _DDPMPP, _VP, ema_rate=0.9999, reduce_mean=True),
    _official("vp/cifar10_ddpmpp_deep_continuous", "ncsnpp", dict(_DDPMPP, num_res_blocks=8), _VP,
              ema_rate=0.9999, reduce_mean=True, n_iters=950001),  # fmt: skip
    _official("subvp/cifar10_ddpmpp_continuous", "ncsnpp", _DDPMPP, _SUBVP, ema_rate=0.9999, reduce_mean=True),
    _official("subvp/cifar10_ddpmpp_deep_continuous", "ncsnpp", dict(_DDPMPP, num_res_blocks=8), _SUBVP,
              ema_rate=0.9999, reduce_mean=True, n_iters=950001),  # fmt: skip
    _official("vp/ddpm_cifar10_continuous", "ddpm", _DDPM, _VP, ema_rate=0.9999, reduce_mean=True),
    _official("subvp/cifar10_ddpm_continuous", "ddpm", _DDPM, _SUBVP, ema_rate=0.9999, reduce_mean=True),
    # Discrete-time models (labels are indices; NCSN++ with positional embedding outputs float64).
    _official("ve/cifar10_ncsnpp", "ncsnpp", dict(_NCSNPP, embedding_type="positional"), _VE, ema_rate=0.999,
              sampling=_VE_SAMPLING, time_label="smld", continuous=False),  # fmt: skip
    _official("vp/cifar10_ddpmpp", "ncsnpp", _DDPMPP, _VP, ema_rate=0.9999, time_label="ddpm",
              sampling=dict(_SAMPLING, predictor="ancestral_sampling"), reduce_mean=True, continuous=False),
    _official("vp/ddpm_cifar10", "ddpm", _DDPM, _VP, ema_rate=0.9999, time_label="ddpm",
              sampling=dict(_SAMPLING, predictor="ancestral_sampling"), reduce_mean=True, continuous=False),
    # NCSNv2: the official CIFAR-10 model (configs/ve/ncsnv2/cifar10.py: N = 232, ALD 5 steps, snr 0.176),
    # the same network in continuous time, and small variants; σ_max of the small ones is the largest
    # pairwise distance of the training set in [0, 1] (digits 4.81, Fashion-MNIST 22.5), N from
    # Technique 2 (γ = 1.36 for D = 64, 1.082 for D = 784).
    _ncsnv2("ve/ncsnv2_cifar10", time_label="smld", dataset="CIFAR10", image_size=32, num_channels=3, nf=128,
            sigma_max=50.0, num_scales=232),  # fmt: skip
    _ncsnv2("ve/ncsnv2_cifar10_continuous", time_label="continuous", dataset="CIFAR10", image_size=32,
            num_channels=3, nf=128, sigma_max=50.0, num_scales=232),  # fmt: skip
    _ncsnv2("ve/ncsnv2_fashion_mnist_continuous", time_label="continuous", dataset="FashionMNIST",
            image_size=28, num_channels=1, nf=64, sigma_max=25.0, num_scales=100),  # fmt: skip
    _ncsnv2("ve/ncsnv2_digits_continuous", time_label="continuous", dataset="digits", image_size=8,
            num_channels=1, nf=32, sigma_max=5.0, num_scales=21),  # fmt: skip
]

CONFIGS: dict[str, ModelConfig] = {c.name: c for c in _ALL}

# Other spellings of the same configs: official config paths and the checkpoint folder names of the
# score_sde_pytorch Google Drive.
ALIASES = {
    "vp/ddpm/cifar10_continuous": "vp/ddpm_cifar10_continuous",
    "vp/cifar10_ddpm_continuous": "vp/ddpm_cifar10_continuous",
    "vp/ddpm/cifar10": "vp/ddpm_cifar10",
    "vp/cifar10_ddpm": "vp/ddpm_cifar10",
    "ve/ncsnv2/cifar10": "ve/ncsnv2_cifar10",
}


def config_names() -> list[str]:
    """Every accepted config name (canonical names and aliases), sorted."""
    return sorted([*CONFIGS, *ALIASES])


def get_config(name: str) -> ModelConfig:
    """The config called ``name`` (an alias is accepted); unknown names raise ValueError listing the valid ones."""
    config = CONFIGS.get(ALIASES.get(name, name))
    if config is None:
        raise ValueError(f"unknown model config {name!r}; expected one of: {', '.join(config_names())}")
    return config


def build_network(name: str, **overrides: Any) -> nn.Module:
    """Build the network of config ``name`` with constructor arguments overridden (e.g. ``nf=16``).

    Args:
        name: config name or alias.
        **overrides: network constructor arguments (unknown ones raise ValueError).

    Returns:
        The nn.Module (training mode, freshly initialised).
    """
    return get_config(name).build(**overrides)
