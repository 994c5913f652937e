"""``kind: diffusers`` — a saved diffusers folder, offline: a ``UNet2DModel`` pipeline or model folder
(:func:`models.diffusers_adapter.load_diffusers`), or a conditional / latent pipeline folder — Stable
Diffusion 1.x/2.x/XL, DiT, PixArt, SD3, FLUX (:func:`models.diffusers_pipelines.load_pipeline`).

Keys: ``path``; ``scheduler`` (entries overriding the saved scheduler config, e.g. ``prediction_type``;
a model folder's whole schedule); ``label`` (a class-conditional UNet or DiT); ``time_mapping`` (how
the network gets its timestep: a key of :data:`models.discrete.TIME_MAPPINGS`; default 'log_sigma',
for flow-matching models 'flow'; written into the section, so every record states it); ``prompts``
(a text-to-image pipeline's prompts file, :mod:`bench.prompts`; required there, refused elsewhere);
``distilled_guidance`` (FLUX.1-dev's guidance-distilled ``guidance`` input, a condition; default 3.5);
``decode_batch`` (latent rows per VAE decoder call; default 8); ``size`` ([height, width] of a latent
pipeline's decoded image in pixels, the pipelines' ``height``/``width``; default: the pipeline's own)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.kinds.base import ModelFacts, ModelKind, check_label, resolve_folder, where_env

KEYS = ("path", "scheduler", "label", "time_mapping", "prompts", "distilled_guidance", "decode_batch", "size")


def _pipeline(folder: Path | None, size=None) -> dict | None:
    """The configs' facts of a conditional / latent pipeline folder (at ``size``), None for a UNet2DModel
    folder."""
    from models.diffusers_pipelines import is_pipeline, pipeline_facts

    return pipeline_facts(folder, size) if folder is not None and is_pipeline(folder) else None


def check(section: dict, files: bool = True) -> None:
    from bench.prompts import check_prompts_section, read_prompts
    from models.diffusers_adapter import class_label_dim, model_spec, unet_config, unet_folder
    from models.diffusers_pipelines import check_size

    path = section.get("path")
    if not isinstance(path, str):
        raise ValueError(f"field 'path' (a saved diffusers pipeline or model folder) must be a string, got {path!r}")
    overrides = section.get("scheduler", {})
    if not isinstance(overrides, dict):
        raise ValueError(f"field 'scheduler' must be a mapping of scheduler config entries, got {overrides!r}")
    folder = resolve_folder(path) if files else None
    if files and folder is None:
        raise FileNotFoundError(f"diffusers folder {path!r} not found{where_env()}; save one with internet: "
                                f"DDPMPipeline.from_pretrained('google/ddpm-cifar10-32').save_pretrained({path!r})")
    check_label(section)
    if "prompts" in section:
        check_prompts_section(section["prompts"])
    batch = section.get("decode_batch", 8)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"field 'decode_batch' (latent rows per VAE decoder call) must be an integer >= 1, "
                         f"got {batch!r}")
    guidance = section.get("distilled_guidance")
    if guidance is not None and (not isinstance(guidance, int | float) or isinstance(guidance, bool) or guidance < 0):
        raise ValueError(f"field 'distilled_guidance' must be a number >= 0, got {guidance!r}")
    size = section.get("size")
    if size is not None and not (isinstance(size, list | tuple) and len(size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"field 'size' must be [height, width] of the decoded image in pixels, two positive "
                         f"integers, got {size!r}")
    model_spec(_config(folder, overrides), section.get("time_mapping"), where=f"diffusers folder {path!r}")
    if folder is None:
        return
    facts = _pipeline(folder)
    where = f"the denoiser in diffusers folder {path!r}"
    if facts is None:
        check_label(section, class_label_dim(unet_config(unet_folder(folder)), where), where)
        if "prompts" in section:
            raise ValueError(f"field 'prompts' given, but diffusers folder {path!r} holds a UNet2DModel, which takes "
                             f"no text; remove 'prompts'")
        if size is not None:
            raise ValueError(f"field 'size' given, but diffusers folder {path!r} holds a UNet2DModel (pixel space, "
                             f"its sample_size only); 'size' applies to latent pipelines; remove it")
        return
    check_label(section, facts["label_dim"], where)
    if facts["text"] and "prompts" not in section:
        raise ValueError(f"diffusers folder {path!r} is a text-to-image pipeline ({facts['class']}): field 'prompts' "
                         f"is required, e.g. prompts: {{file: captions.txt}} (one prompt per line)")
    if not facts["text"] and "prompts" in section:
        raise ValueError(f"field 'prompts' given, but diffusers folder {path!r} ({facts['class']}) has no text "
                         f"encoder; remove 'prompts'")
    if guidance is not None and facts["family"] != "flux":
        raise ValueError(f"field 'distilled_guidance' applies to FLUX pipelines; diffusers folder {path!r} holds a "
                         f"{facts['class']}; remove it")
    check_size(folder, size)
    if "prompts" in section:
        read_prompts(section["prompts"])


def _config(folder: Path | None, overrides: dict) -> dict:
    """The saved scheduler config (where the folder has one) with the section's overrides."""
    from models.diffusers_adapter import read_scheduler_config

    saved = {}
    if folder is not None and (folder / "scheduler").is_dir():
        saved = read_scheduler_config(folder / "scheduler")
    return {**saved, **overrides}


def resolve(section: dict, files: bool = True) -> dict:
    """The section with its time mapping (the model's default where not given) and its prompts' pick
    written in."""
    from models.diffusers_adapter import model_spec

    if "prompts" in section:
        section = {**section, "prompts": {"pick": "index", **section["prompts"]}}
    if "time_mapping" in section or not files:
        return section
    folder = resolve_folder(section["path"])
    spec = model_spec(_config(folder, section.get("scheduler", {})), None)
    return {**section, "time_mapping": spec["mapping"]}


def describe(section: dict, files: bool = True) -> ModelFacts | None:
    """The shape of what the metrics see (a latent model's decoded image) and the path (its scheduler
    config), without loading the weights."""
    from models.diffusers_adapter import model_spec, sample_shape, unet_config, unet_folder

    folder = resolve_folder(section["path"]) if files else None
    if folder is None:
        return None
    spec = model_spec(_config(folder, section.get("scheduler", {})), section.get("time_mapping"))
    facts = _pipeline(folder, section.get("size"))
    if facts is not None:
        return ModelFacts(tuple(facts["image_shape"] or facts["shape"]), spec["path"], tuple(facts["shape"]))
    return ModelFacts(sample_shape(unet_config(unet_folder(folder))), spec["path"])


def load(section: dict, device: str, dtype: torch.dtype):
    from models.diffusers_adapter import load_diffusers
    from models.diffusers_pipelines import is_pipeline, load_pipeline

    folder = resolve_folder(section["path"])
    if is_pipeline(folder):
        return load_pipeline(folder, scheduler=section.get("scheduler"), time_mapping=section.get("time_mapping"),
                             device=device, dtype=dtype, distilled_guidance=section.get("distilled_guidance"),
                             decode_batch=section.get("decode_batch", 8), size=section.get("size"))
    return load_diffusers(folder, scheduler=section.get("scheduler"), time_mapping=section.get("time_mapping"),
                          device=device, dtype=dtype)


def model_files(section: dict) -> dict[str, Path]:
    from bench.prompts import prompts_file

    folder = resolve_folder(section["path"]) if isinstance(section.get("path"), str) else None
    files = {"checkpoint": folder} if folder is not None else {}
    prompts = prompts_file(section["prompts"]) if isinstance(section.get("prompts"), dict) else None
    if prompts is not None:
        files["prompts"] = prompts
    return files


KIND = ModelKind(KEYS, check, load, describe, model_files, resolve)
