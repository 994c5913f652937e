"""diffusers ``UNet2DModel``s (e.g. the DDPM CIFAR-10 model users download from the hub) seen as VP
score models, from a module or from a saved pipeline/model folder. Optional extra:
``pip install 'scorebench[diffusers]'``.

Schedule. DDPM's linear schedule β_i = linspace(β_start, β_end, N) is score_sde's discrete VP table
with β_min = N·β_start and β_max = N·β_end: the VP SDE it discretises. The model is wrapped with
score_sde's discrete DDPM label convention (REFERENCE §1.7): label t·(N − 1) as a float, score
s = −ε̂ / √(1 − ᾱ)[floor(label)]. Other schedules (``scaled_linear``, ``squaredcos_cap_v2``,
``trained_betas``, zero-terminal-SNR rescaling) discretise no VP SDE of the project (whose β(t) is
linear) and are refused with the reason.

Prediction types, all turned into ε̂ with the table's ᾱ = ᾱ[floor(label)] before the score above:
``epsilon`` (ε̂ itself), ``sample`` (x̂₀: ε̂ = (x − √ᾱ x̂₀)/√(1 − ᾱ)) and ``v_prediction``
(v = √ᾱ ε − √(1 − ᾱ) x₀, Salimans & Ho 2022: ε̂ = √(1 − ᾱ) x + √ᾱ v̂).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from models.score import NetworkScore
from models.sde import VPSDE, expand_like

__all__ = ["DiffusersEpsilonNet", "from_diffusers", "load_diffusers", "PREDICTION_TYPES", "BETA_SCHEDULES",
           "read_scheduler_config", "class_label_dim", "unet_folder", "unet_config"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
BETA_SCHEDULES = ("linear",)  # the schedules that discretise a VP SDE with linear β(t)
_NO_VP_SDE = {
    "scaled_linear": "β_i = linspace(√β_start, √β_end, N)² is quadratic in i, not a discretised linear β(t)",
    "squaredcos_cap_v2": "the cosine schedule (Nichol & Dhariwal 2021) has no linear β(t)",
}
_LEARNED_VARIANCE = ("learned", "learned_range")


class DiffusersEpsilonNet(nn.Module):
    """``net(x, labels) -> ε̂``: a diffusers UNet2DModel with the (float) timestep as label; x̂₀- and
    v-predictions are converted to ε̂ with the DDPM table's ᾱ[floor(label)] (``alphas_cumprod``)."""

    def __init__(self, unet: nn.Module, prediction_type: str = "epsilon", alphas_cumprod: Tensor | None = None,
                 channels: int | None = None) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"diffusers adapter: prediction_type {prediction_type!r} is not supported; "
                             f"expected one of: {', '.join(PREDICTION_TYPES)}")
        if prediction_type != "epsilon" and alphas_cumprod is None:
            raise ValueError(f"diffusers adapter: prediction_type {prediction_type!r} needs the schedule's ᾱ table")
        self.unet = unet
        self.prediction_type = prediction_type
        self.channels = channels  # keep the first `channels` outputs (learned-variance models output 2C)
        if alphas_cumprod is not None:
            self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float64), persistent=False)

    def forward(self, x: Tensor, labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        out = self.unet(x, labels, class_labels=class_labels).sample
        if self.channels is not None:
            out = out[:, :self.channels]
        if self.prediction_type == "epsilon":
            return out
        table = self.alphas_cumprod
        abar = table[labels.long().clamp(0, len(table) - 1)]
        a, s = expand_like(abar.sqrt(), x), expand_like((1 - abar).sqrt(), x)
        if self.prediction_type == "sample":
            return (x - a * out) / s
        return s * x + a * out  # v_prediction


def _betas(cfg: dict) -> Tensor:
    """The linear table linspace(β_start, β_end, N), float64 (after the schedule was checked)."""
    return torch.linspace(cfg["beta_start"], cfg["beta_end"], int(cfg["num_train_timesteps"]), dtype=torch.float64)


def check_scheduler_config(cfg: dict, where: str = "diffusers adapter") -> dict:
    """The scheduler config with DDPM's defaults filled in; ValueError where it maps onto no VP SDE."""
    cfg = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
           "prediction_type": "epsilon", **(cfg or {})}
    schedule = cfg["beta_schedule"]
    if cfg.get("trained_betas") is not None:
        raise ValueError(f"{where}: trained_betas (an explicit β table) maps onto no VP SDE of the project; "
                         f"expected beta_schedule one of: {', '.join(BETA_SCHEDULES)}")
    if schedule not in BETA_SCHEDULES:
        why = _NO_VP_SDE.get(schedule, "unknown schedule")
        raise ValueError(f"{where}: beta_schedule {schedule!r} is not supported ({why}); "
                         f"expected one of: {', '.join(BETA_SCHEDULES)}")
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(f"{where}: rescale_betas_zero_snr makes ᾱ_N = 0 (infinite σ at T): no VP SDE; "
                         f"expected rescale_betas_zero_snr: false")
    if cfg["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(f"{where}: prediction_type {cfg['prediction_type']!r} is not supported; "
                         f"expected one of: {', '.join(PREDICTION_TYPES)}")
    N = int(cfg["num_train_timesteps"])
    if N < 2 or not 0 < cfg["beta_start"] < cfg["beta_end"] < 1:
        raise ValueError(f"{where}: need num_train_timesteps >= 2 and 0 < beta_start < beta_end < 1, got "
                         f"{N}, {cfg['beta_start']}, {cfg['beta_end']}")
    return cfg


def from_diffusers(unet: nn.Module, scheduler_config: dict | None = None) -> NetworkScore:
    """Wrap a UNet2DModel as a VP score model.

    Args:
        unet: a diffusers ``UNet2DModel``.
        scheduler_config: the scheduler's config (``num_train_timesteps``, ``beta_start``, ``beta_end``,
            ``beta_schedule``, ``prediction_type``, ``variance_type``); default DDPM's 1000 steps,
            1e-4 to 0.02, ε-prediction.

    Raises:
        ValueError: a schedule that discretises no VP SDE, or an unknown prediction type.
    """
    cfg = check_scheduler_config(scheduler_config)
    N = int(cfg["num_train_timesteps"])
    sde = VPSDE(beta_min=cfg["beta_start"] * N, beta_max=cfg["beta_end"] * N)
    c = unet.config
    channels = None
    if c.out_channels != c.in_channels:
        if cfg.get("variance_type") in _LEARNED_VARIANCE and c.out_channels == 2 * c.in_channels:
            channels = c.in_channels
        else:
            raise ValueError(f"diffusers adapter: the UNet has {c.out_channels} output channels for {c.in_channels} "
                             f"input channels (variance_type {cfg.get('variance_type')!r}); expected equal, or "
                             f"twice with variance_type one of: {', '.join(_LEARNED_VARIANCE)}")
    size = c.sample_size if isinstance(c.sample_size, int) else tuple(c.sample_size)
    shape = (c.in_channels, size, size) if isinstance(size, int) else (c.in_channels, *size)
    alphas_cumprod = torch.cumprod(1 - _betas(cfg), 0)
    net = DiffusersEpsilonNet(unet, cfg["prediction_type"], alphas_cumprod, channels)
    return NetworkScore(net, sde, shape, (-1.0, 1.0), time_label="ddpm", num_scales=N,
                        label_dim=class_label_dim(dict(c)))


def class_label_dim(unet_config: dict, where: str = "diffusers adapter") -> int:
    """Number of classes of a UNet2DModel config (``num_class_embeds`` with the default class embedding;
    0: unconditional). ``class_embed_type`` 'timestep'/'identity' embed continuous class vectors,
    which have no class index: refused."""
    embed = unet_config.get("class_embed_type")
    if embed is not None:
        raise ValueError(f"{where}: class_embed_type {embed!r} embeds continuous class vectors, not class indices; "
                         f"expected class_embed_type null (an nn.Embedding of num_class_embeds classes)")
    return int(unet_config.get("num_class_embeds") or 0)


def read_scheduler_config(path: Path) -> dict:
    """A saved scheduler's ``scheduler_config.json`` as a dict (any scheduler class: only its schedule
    fields are used)."""
    f = Path(path) / "scheduler_config.json"
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: cannot read the scheduler config ({e})") from e


def unet_folder(path: Path) -> Path:
    """The UNet's folder of a saved pipeline (``unet/``) or model folder (``config.json``)."""
    path = Path(path)
    if (path / "unet").is_dir():
        return path / "unet"
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"{path}: no diffusers pipeline folder (expected {path / 'unet'}) or model folder "
                            f"(expected {path / 'config.json'}); download one with internet "
                            f"(DDPMPipeline.from_pretrained(...).save_pretrained('{path}'))")


def unet_config(folder: Path) -> dict:
    """A UNet folder's ``config.json``."""
    try:
        return json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{Path(folder) / 'config.json'}: cannot read the model config ({e})") from e


def load_diffusers(path: str | Path, scheduler: dict | None = None) -> NetworkScore:
    """Load a saved diffusers pipeline folder (``unet/`` and ``scheduler/``) or model folder
    (``config.json`` + weights; the schedule then comes from ``scheduler``, default DDPM's) from disk.

    ``scheduler`` entries override the saved scheduler config (e.g. ``prediction_type``). Hub downloads
    are left to diffusers (``DDPMPipeline.from_pretrained('google/ddpm-cifar10-32')`` with internet,
    then ``save_pretrained(path)``); this function reads local files only.
    """
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise ImportError("the diffusers adapter needs `pip install 'scorebench[diffusers]'`") from e
    path = Path(path)
    folder, config = unet_folder(path), {}
    if folder != path and (path / "scheduler").is_dir():
        config = read_scheduler_config(path / "scheduler")
    cls = unet_config(folder).get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"{folder}: model class {cls!r} is not supported; expected one of: UNet2DModel")
    config = {**config, **(scheduler or {})}
    check_scheduler_config(config, where=str(path))  # before loading any weights
    unet = UNet2DModel.from_pretrained(folder, local_files_only=True)
    return from_diffusers(unet, config)
