"""diffusers ``UNet2DModel``s (e.g. the DDPM CIFAR-10 model users download from the hub) as models of the
harness, from a module or from a saved pipeline/model folder, offline. Optional extra:
``pip install 'scorebench[diffusers]'``.

Every scheduler config diffusers saves is read (:func:`model_spec`):

* **VP schedulers** (DDPM, DDIM, Euler, DPM-Solver, UniPC, …): the ᾱ table of ``beta_schedule``
  (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``) or ``trained_betas``, computed in float32 as
  diffusers does (:func:`models.discrete.diffusers_betas`), optionally ``rescale_betas_zero_snr``
  (Lin et al. 2024; ᾱ_{N−1} = 0 is replaced by 2^-24, as diffusers' Euler, DPM-Solver and UniPC do).
  The model's path is the tabulated path of that table (:class:`models.paths.TabulatedPath`) and the
  network gets the timestep of the named *time mapping* (:mod:`models.discrete`; default
  ``log_sigma``). ``prediction_type``: ``epsilon`` → 'eps', ``sample`` → 'x0', ``v_prediction`` → 'v'
  (:mod:`models.parameterisation`).
* **Flow matching** (``FlowMatchEulerDiscreteScheduler``, or ``prediction_type: flow_prediction``):
  x_t = (1 − σ) x₀ + σ ε on :class:`models.paths.FlowPath` (time = σ), the network predicting the
  velocity ε − x₀ ('flow') at timestep σ·N. The scheduler's own smallest level
  shift/N / (1 + (shift − 1)/N) is the path's ``eps``; its ``shift`` applies to sampling grids
  (:class:`solvers.fixed.FixedSteps` ``shift``).

What a scheduler config asks for that the harness cannot honour (dynamic shifting, inverted or
stretched σ's, an unknown schedule, prediction or variance type) is refused at load with the reason.
Entries that configure diffusers' own sampler rather than the model (``clip_sample``,
``thresholding``, ``timestep_spacing``, ``steps_offset``, the solver's order, …) are not read: the
harness's samplers are chosen in the grid, where the spacings are options of the fixed grid
(:mod:`solvers.spacing`); none of them clips x̂₀.
Learned-variance UNets (``variance_type`` learned / learned_range, 2C output channels) give their
prediction from the first C channels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from models.discrete import (
    BETA_SCHEDULES,
    DEFAULT_TIME_MAPPING,
    TIME_MAPPINGS,
    ZERO_SNR_ALPHA_BAR,
    TimestepNet,
    alphas_cumprod,
    diffusers_betas,
    rescale_zero_terminal_snr,
    train_sigmas,
)
from models.parameterisation import PredictionModel
from models.paths import FlowPath, TabulatedPath

__all__ = ["from_diffusers", "load_diffusers", "PREDICTION_TYPES", "BETA_SCHEDULES", "model_spec",
           "check_scheduler_config", "read_scheduler_config", "class_label_dim", "unet_folder", "unet_config",
           "FLOW_SCHEDULERS", "sample_shape"]

# diffusers' prediction_type -> the harness's prediction (models.parameterisation.PREDICTIONS)
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "flow"}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
_LEARNED_VARIANCE = ("learned", "learned_range")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", *_LEARNED_VARIANCE)
# Config entries that change what the model is, and the value under which the harness honours them.
_UNSUPPORTED = {
    "use_dynamic_shifting": (False, "the shift then depends on the image size (mu per call); put exp(mu) of the "
                             "size on the sampler as shift, docs/latent.md"),
    "invert_sigmas": (False, "inverted σ's sample backwards"),
    "shift_terminal": (None, "a stretched terminal σ is not part of the path"),
}


def _is_flow(cfg: dict) -> bool:
    """A flow-matching scheduler config (its class, or ``prediction_type: flow_prediction``)."""
    return cfg.get("_class_name") in FLOW_SCHEDULERS or cfg.get("prediction_type") == "flow_prediction"


def _where(where: str, key: str) -> str:
    return f"{where}: scheduler config field {key!r}"


def check_scheduler_config(cfg: dict, where: str = "diffusers adapter") -> dict:
    """The scheduler config with DDPM's defaults filled in; ValueError naming the field, the reason and
    the valid choices for what the harness cannot honour."""
    cfg = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
           "prediction_type": "epsilon", **(cfg or {})}
    if cfg["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(f"{_where(where, 'prediction_type')}: {cfg['prediction_type']!r} is not supported; "
                         f"expected one of: {', '.join(PREDICTION_TYPES)}")
    N = cfg["num_train_timesteps"]
    if not isinstance(N, int) or isinstance(N, bool) or N < 2:
        raise ValueError(f"{_where(where, 'num_train_timesteps')}: must be an integer >= 2, got {N!r}")
    for key, (ok, why) in _UNSUPPORTED.items():
        if cfg.get(key) not in (ok, None):
            raise ValueError(f"{_where(where, key)}: {cfg[key]!r} cannot be honoured ({why}); expected {key}: {ok}")
    if cfg.get("variance_type") not in (None, *VARIANCE_TYPES):
        raise ValueError(f"{_where(where, 'variance_type')}: {cfg['variance_type']!r} is unknown; expected one of: "
                         f"{', '.join(VARIANCE_TYPES)}")
    if _is_flow(cfg):
        shift = cfg.get("shift", cfg.get("flow_shift", 1.0))
        if not isinstance(shift, int | float) or isinstance(shift, bool) or not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"{_where(where, 'shift')}: must be a number > 0, got {shift!r}")
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if cfg.get(key):
                raise ValueError(f"{_where(where, key)}: a σ ladder is a sampling schedule, not the model; set it "
                                 f"on the sampler (schedule: karras / log_snr); expected {key}: false")
        return cfg
    if cfg.get("trained_betas") is None:
        if cfg["beta_schedule"] not in BETA_SCHEDULES:
            raise ValueError(f"{_where(where, 'beta_schedule')}: {cfg['beta_schedule']!r} is not supported; "
                             f"expected one of: {', '.join(BETA_SCHEDULES)} (or trained_betas)")
        if cfg["beta_schedule"] != "squaredcos_cap_v2" and not 0 < cfg["beta_start"] < cfg["beta_end"] < 1:
            raise ValueError(f"{where}: need 0 < beta_start < beta_end < 1, got {cfg['beta_start']}, {cfg['beta_end']}")
    else:
        betas = cfg["trained_betas"]
        if not isinstance(betas, list | tuple) or len(betas) != N or not all(
                isinstance(b, int | float) and 0 < b < 1 for b in betas):
            raise ValueError(f"{_where(where, 'trained_betas')}: must be {N} numbers in (0, 1) "
                             f"(num_train_timesteps), got {str(betas)[:80]}")
    return cfg


def model_spec(cfg: dict, time_mapping: str | None = None, where: str = "diffusers adapter") -> dict:
    """What a (checked) scheduler config makes of the network: ``{'path', 'prediction', 'mapping',
    'sigmas', 'num_train_timesteps', 'alphas_cumprod'}`` (module docstring)."""
    cfg = check_scheduler_config(cfg, where)
    N = int(cfg["num_train_timesteps"])
    if _is_flow(cfg):
        if time_mapping not in (None, "flow"):
            raise ValueError(f"{where}: field 'time_mapping' {time_mapping!r} does not apply to a flow-matching model "
                             f"(its network takes σ·N); expected time_mapping: flow")
        shift = float(cfg.get("shift", cfg.get("flow_shift", 1.0)))
        s_min = shift / N / (1 + (shift - 1) / N)  # the scheduler's smallest training level
        return {"path": FlowPath(eps=s_min), "prediction": "flow", "mapping": "flow", "sigmas": None,
                "num_train_timesteps": N, "alphas_cumprod": None}
    mapping = DEFAULT_TIME_MAPPING if time_mapping is None else time_mapping
    if mapping not in TIME_MAPPINGS or mapping == "flow":
        raise ValueError(f"{where}: field 'time_mapping' {mapping!r} is unknown for a VP table; expected one of: "
                         f"{', '.join(m for m in TIME_MAPPINGS if m != 'flow')}")
    betas = diffusers_betas(cfg["beta_schedule"], N, cfg["beta_start"], cfg["beta_end"], cfg.get("trained_betas"))
    if cfg.get("rescale_betas_zero_snr"):
        betas = rescale_zero_terminal_snr(betas)
    abar = alphas_cumprod(betas)
    if cfg.get("rescale_betas_zero_snr"):
        abar[-1] = ZERO_SNR_ALPHA_BAR
    return {"path": TabulatedPath(tuple(abar.double().tolist())),
            "prediction": PREDICTION_TYPES[cfg["prediction_type"]],
            "mapping": mapping, "sigmas": train_sigmas(abar), "num_train_timesteps": N, "alphas_cumprod": abar}


class _UNetCall:
    """``(x, τ [, class_labels]) -> output`` of a UNet2DModel: the ``.sample``, its first ``channels``
    channels (learned-variance models output 2C)."""

    def __init__(self, unet: nn.Module, channels: int | None) -> None:
        self.unet, self.channels = unet.eval(), channels

    def __call__(self, x, timestep, class_labels=None):
        out = self.unet(x, timestep, class_labels=class_labels).sample
        return out if self.channels is None else out[:, :self.channels]


def from_diffusers(unet: nn.Module, scheduler_config: dict | None = None,
                   time_mapping: str | None = None) -> PredictionModel:
    """A UNet2DModel with its scheduler config as a model of the harness (module docstring).

    Args:
        unet: a diffusers ``UNet2DModel``.
        scheduler_config: the scheduler's config (any diffusers scheduler; default DDPM's 1000 linear
            steps from 1e-4 to 0.02, ε-prediction).
        time_mapping: a key of :data:`models.discrete.TIME_MAPPINGS` (default 'log_sigma'; flow
            models: 'flow').

    Raises:
        ValueError: what the config asks for and the harness cannot honour (with the reason).
    """
    cfg = check_scheduler_config(scheduler_config)
    spec = model_spec(cfg, time_mapping)
    c = unet.config
    channels = None
    if c.out_channels != c.in_channels:
        if cfg.get("variance_type") in _LEARNED_VARIANCE and c.out_channels == 2 * c.in_channels:
            channels = c.in_channels
        else:
            raise ValueError(f"diffusers adapter: the UNet has {c.out_channels} output channels for {c.in_channels} "
                             f"input channels (variance_type {cfg.get('variance_type')!r}); expected equal, or "
                             f"twice with variance_type one of: {', '.join(_LEARNED_VARIANCE)}")
    shape = sample_shape(dict(c))
    net = TimestepNet(_UNetCall(unet, channels), spec["path"], spec["mapping"], spec["sigmas"],
                      spec["num_train_timesteps"])
    model = PredictionModel(net, spec["path"], spec["prediction"], shape, (-1.0, 1.0),
                            label_dim=class_label_dim(dict(c)))
    model.time_mapping = spec["mapping"]
    return model


def sample_shape(unet_config: dict) -> tuple[int, ...]:
    """One sample's shape (C, H, W) from a UNet2DModel config."""
    size = unet_config["sample_size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (int(unet_config["in_channels"]), *size)


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


def load_diffusers(path: str | Path, scheduler: dict | None = None, time_mapping: str | None = None,
                   device: str = "cpu", dtype: torch.dtype = torch.float32) -> PredictionModel:
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
    model_spec(config, time_mapping, where=str(path))
    unet = UNet2DModel.from_pretrained(folder, local_files_only=True, torch_dtype=dtype).to(device=device)
    return from_diffusers(unet, config, time_mapping)
