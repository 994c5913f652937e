"""ADM's flags (openai/guided-diffusion ``script_util``): ``model_and_diffusion_defaults()`` and
``classifier_defaults()`` keys → the network's constructor arguments and the diffusion's schedule
(plus ``classifier_channel_mult``, the project's, for classifiers of other image sizes).

A checkpoint is a bare ``state_dict``; the flags it was trained with (the command line of the
README's ``MODEL_FLAGS``) are what make it a network, so they are required and checked: unknown keys
and bad values are ValueErrors naming the key and the valid choices. Flags come from a JSON file (a
dict of flags, or a dict with ``model_and_diffusion_flags``: the fixtures' layout) or inline.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["MODEL_DEFAULTS", "DIFFUSION_DEFAULTS", "CLASSIFIER_DEFAULTS", "NOISE_SCHEDULES", "model_flags",
           "classifier_flags", "unet_kwargs", "classifier_kwargs", "read_flags", "default_channel_mult"]

DIFFUSION_DEFAULTS = {"learn_sigma": False, "diffusion_steps": 1000, "noise_schedule": "linear",
                      "timestep_respacing": "", "use_kl": False, "predict_xstart": False,
                      "rescale_timesteps": False, "rescale_learned_sigmas": False}
MODEL_DEFAULTS = {"image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4,
                  "num_heads_upsample": -1, "num_head_channels": -1, "attention_resolutions": "16,8",
                  "channel_mult": "", "dropout": 0.0, "class_cond": False, "use_checkpoint": False,
                  "use_scale_shift_norm": True, "resblock_updown": False, "use_fp16": False,
                  "use_new_attention_order": False, **DIFFUSION_DEFAULTS}
CLASSIFIER_DEFAULTS = {"image_size": 64, "classifier_use_fp16": False, "classifier_width": 128,
                       "classifier_depth": 2, "classifier_attention_resolutions": "32,16,8",
                       "classifier_use_scale_shift_norm": True, "classifier_resblock_updown": True,
                       "classifier_pool": "attention", "classifier_channel_mult": "", **DIFFUSION_DEFAULTS}
NOISE_SCHEDULES = ("linear", "cosine")
_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
_BOOL = ("class_cond", "use_checkpoint", "use_scale_shift_norm", "resblock_updown", "use_fp16",
         "use_new_attention_order", "learn_sigma", "use_kl", "predict_xstart", "rescale_timesteps",
         "rescale_learned_sigmas", "classifier_use_fp16", "classifier_use_scale_shift_norm",
         "classifier_resblock_updown")
_INT = ("image_size", "num_channels", "num_res_blocks", "num_heads", "num_heads_upsample", "num_head_channels",
        "diffusion_steps", "classifier_width", "classifier_depth")


def _checked(given: dict, defaults: dict, where: str) -> dict:
    if not isinstance(given, dict):
        raise ValueError(f"{where}: flags must be a mapping of ADM flags, got {type(given).__name__}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{where}: unknown ADM flag(s) {', '.join(map(repr, unknown))}; expected keys of: "
                         f"{', '.join(sorted(defaults))}")
    flags = {**defaults, **given}
    for k, v in flags.items():
        if k in _BOOL and not isinstance(v, bool):
            raise ValueError(f"{where}: flag {k!r} must be true or false, got {v!r}")
        if k in _INT and (not isinstance(v, int) or isinstance(v, bool)):
            raise ValueError(f"{where}: flag {k!r} must be an integer, got {v!r}")
    if flags["noise_schedule"] not in NOISE_SCHEDULES:
        raise ValueError(f"{where}: flag 'noise_schedule' {flags['noise_schedule']!r} is not ADM's; expected one of: "
                         f"{', '.join(NOISE_SCHEDULES)}")
    if flags["diffusion_steps"] < 2:
        raise ValueError(f"{where}: flag 'diffusion_steps' must be >= 2, got {flags['diffusion_steps']}")
    if flags["predict_xstart"]:  # use_kl, rescale_learned_sigmas: training losses only
        raise ValueError(f"{where}: flag 'predict_xstart' true (an x₀-predicting ADM) is not supported; "
                         f"expected false (ε-prediction, every released ADM checkpoint)")
    if flags["timestep_respacing"] not in ("", None):
        raise ValueError(f"{where}: flag 'timestep_respacing' is a sampling choice, not the model's: give it to the "
                         f"sampler (schedule 'adm_respaced' or 'adm_ddim' with n_steps); expected ''")
    return flags


def model_flags(given: dict, where: str = "ADM flags") -> dict:
    """``model_and_diffusion_defaults()`` updated with ``given`` (checked)."""
    flags = _checked(given, MODEL_DEFAULTS, where)
    _int_list(flags["attention_resolutions"], "attention_resolutions", where)
    default_channel_mult(flags, where)
    return flags


def classifier_flags(given: dict, where: str = "ADM classifier flags") -> dict:
    """``classifier_and_diffusion_defaults()`` updated with ``given`` (checked)."""
    flags = _checked(given, CLASSIFIER_DEFAULTS, where)
    if flags["classifier_pool"] not in ("adaptive", "attention", "spatial", "spatial_v2"):
        raise ValueError(f"{where}: flag 'classifier_pool' {flags['classifier_pool']!r} unknown; expected one of: "
                         f"adaptive, attention, spatial, spatial_v2")
    _int_list(flags["classifier_attention_resolutions"], "classifier_attention_resolutions", where)
    _classifier_channel_mult(flags, where)
    return flags


def _classifier_channel_mult(flags: dict, where: str = "ADM classifier flags") -> tuple:
    """ADM's ``create_classifier`` takes the image size's default; ``classifier_channel_mult`` (the
    project's addition, '' by default) gives it for other sizes."""
    if flags["classifier_channel_mult"] == "":
        return _CHANNEL_MULT.get(flags["image_size"]) or _size_error(flags["image_size"], where)
    return _int_list(flags["classifier_channel_mult"], "classifier_channel_mult", where)


def _size_error(size, where: str):
    raise ValueError(f"{where}: image_size {size} has no default channel_mult; expected one of: "
                     f"{', '.join(map(str, sorted(_CHANNEL_MULT)))}, or give channel_mult")


def _int_list(value, name: str, where: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        raise ValueError(f"{where}: flag {name!r} must be comma-separated integers, got {value!r}") from None
    if not out or any(v <= 0 for v in out):
        raise ValueError(f"{where}: flag {name!r} must be positive integers, got {value!r}")
    return out


def default_channel_mult(flags: dict, where: str = "ADM flags") -> tuple:
    """``channel_mult`` as ADM's ``create_model`` resolves it ('' → the image size's default)."""
    if flags["channel_mult"] == "":
        return _CHANNEL_MULT.get(flags["image_size"]) or _size_error(flags["image_size"], where)
    return _int_list(flags["channel_mult"], "channel_mult", where)


def _attention_ds(image_size: int, resolutions: str, where: str) -> tuple[int, ...]:
    """Resolutions → downsample rates (ADM: ``image_size // res``)."""
    return tuple(image_size // r for r in _int_list(resolutions, "attention_resolutions", where))


def unet_kwargs(flags: dict, num_classes: int | None) -> dict:
    """``UNetModel`` arguments for checked model flags (ADM's ``create_model``)."""
    return dict(image_size=flags["image_size"], in_channels=3, model_channels=flags["num_channels"],
                out_channels=6 if flags["learn_sigma"] else 3, num_res_blocks=flags["num_res_blocks"],
                attention_resolutions=_attention_ds(flags["image_size"], flags["attention_resolutions"], "flags"),
                dropout=flags["dropout"], channel_mult=default_channel_mult(flags), num_classes=num_classes,
                num_heads=flags["num_heads"], num_head_channels=flags["num_head_channels"],
                num_heads_upsample=flags["num_heads_upsample"], use_scale_shift_norm=flags["use_scale_shift_norm"],
                resblock_updown=flags["resblock_updown"], use_new_attention_order=flags["use_new_attention_order"])


def classifier_kwargs(flags: dict, num_classes: int = 1000) -> dict:
    """``EncoderUNetModel`` arguments for checked classifier flags (ADM's ``create_classifier``)."""
    size = flags["image_size"]
    return dict(image_size=size, in_channels=3, model_channels=flags["classifier_width"], out_channels=num_classes,
                num_res_blocks=flags["classifier_depth"],
                attention_resolutions=_attention_ds(size, flags["classifier_attention_resolutions"], "flags"),
                channel_mult=_classifier_channel_mult(flags), num_head_channels=64,
                use_scale_shift_norm=flags["classifier_use_scale_shift_norm"],
                resblock_updown=flags["classifier_resblock_updown"], pool=flags["classifier_pool"])


def read_flags(source, where: str = "ADM flags") -> dict:
    """The flags dict of ``source``: a dict (inline) or a JSON file's path holding the flags, or a dict
    with ``model_and_diffusion_flags`` (the fixtures' layout) or ``classifier_flags``."""
    if isinstance(source, dict):
        return dict(source)
    path = Path(source)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: cannot read the flags JSON {str(path)!r} ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {path} holds a {type(data).__name__}, expected a mapping of ADM flags")
    for key in ("model_and_diffusion_flags", "classifier_flags"):
        if isinstance(data.get(key), dict):
            return dict(data[key])
    return data
