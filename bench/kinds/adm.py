"""``kind: adm`` — an OpenAI guided-diffusion (ADM) checkpoint: a bare ``state_dict`` built into the
project's ``UNetModel`` by the flags it was trained with (:func:`models.adm.load_adm`; strict on keys
and shapes, ``weights_only``).

Keys: ``path`` (the ``.pt``; relative paths are also looked up under ``$SCOREBENCH_CKPT_DIR``),
``flags`` (ADM's ``model_and_diffusion_defaults()`` keys inline, or the path of a JSON file holding
them: :mod:`models.adm.flags`), ``label`` (class-conditional networks, or a classifier's classes:
:func:`bench.kinds.base.check_label`), ``clip_denoised`` (default true, ADM's sampling default: x̂₀
clamped to [−1, 1]), ``classifier`` (classifier guidance: ``{path, scale, flags}`` with ADM's
``classifier_defaults()`` keys; ``scale`` defaults to ADM's 1.0, and a sweep's ``guidance: {kind:
classifier, scale: [...]}`` replaces it, one run per scale; its gradient evaluations are counted apart
from the NFE as ``classifier_nfe`` and per network as 'classifier' and 'classifier_backward':
:mod:`models.adm.guidance`).

With ``files``, the checks read the checkpoint's keys and shapes (memory-mapped) against the network
the flags build on the ``meta`` device: a mismatch names the first keys, before anything runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.kinds.base import CKPT_ENV, ModelFacts, ModelKind, check_label, resolve_path, where_env

KEYS = ("path", "flags", "label", "clip_denoised", "classifier")
CLASSIFIER_KEYS = ("path", "flags", "scale")
PRETRAINED_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
DEFAULT_CLASSIFIER_SCALE = 1.0  # ADM's classifier_scale default (a sweep's guidance: {kind: classifier} replaces it)


def _flags_source(value, field: str, files: bool):
    """The flags mapping, or the path of the JSON holding them (resolved where ``files``)."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a mapping of ADM flags or the path of a JSON file holding them, "
                         f"got {value!r}")
    found = resolve_path(value, CKPT_ENV)
    if found is None and files:
        raise FileNotFoundError(f"ADM flags file {value!r} (field {field!r}) not found{where_env()}")
    return found


def _model_flags(section: dict, files: bool) -> dict | None:
    from models.adm.flags import model_flags, read_flags

    source = _flags_source(section.get("flags"), "flags", files)
    return None if source is None else model_flags(read_flags(source, "field 'flags'"), "field 'flags'")


def _classifier_flags(section: dict, image_size: int, files: bool) -> dict | None:
    from models.adm.flags import classifier_flags, read_flags

    given = section["classifier"].get("flags", {})
    source = _flags_source(given, "classifier.flags", files)
    if source is None:
        return None
    return classifier_flags({"image_size": image_size, **read_flags(source, "field 'classifier.flags'")},
                            "field 'classifier.flags'")


def _checkpoint(path, what: str, files: bool) -> Path | None:
    if not isinstance(path, str):
        raise ValueError(f"field {what!r} (an ADM .pt state_dict) must be a string, got {path!r}")
    found = resolve_path(path, CKPT_ENV)
    if found is None and files:
        raise FileNotFoundError(f"ADM checkpoint {path!r} not found{where_env()}; download it from "
                                f"{PRETRAINED_URL}{Path(path).name} (openai/guided-diffusion's README lists them)")
    return found


def check(section: dict, files: bool = True) -> None:
    from models.adm.loader import check_state_dict, classifier_for, read_state_dict, unet_for

    if "flags" not in section:
        raise ValueError("field 'flags' is required: the ADM flags the checkpoint was trained with (inline, or a "
                         "JSON file), e.g. the MODEL_FLAGS of guided-diffusion's README")
    found = _checkpoint(section.get("path"), "path", files)
    flags = _model_flags(section, files)
    check_label(section)
    if not isinstance(section.get("clip_denoised", True), bool):
        raise ValueError(f"field 'clip_denoised' must be true or false, got {section['clip_denoised']!r}")
    guide = section.get("classifier")
    if guide is not None:
        if not isinstance(guide, dict) or "path" not in guide:
            raise ValueError(f"field 'classifier' must be a mapping with path (scale, flags), got {guide!r}")
        unknown = sorted(set(guide) - set(CLASSIFIER_KEYS))
        if unknown:
            raise ValueError(f"field 'classifier': unknown key(s) {', '.join(map(repr, unknown))}; expected one of: "
                             f"{', '.join(CLASSIFIER_KEYS)}")
        scale = guide.get("scale", DEFAULT_CLASSIFIER_SCALE)
        if not isinstance(scale, int | float) or isinstance(scale, bool) or not scale >= 0:
            raise ValueError(f"field 'classifier.scale' must be a number >= 0, got {scale!r}")
    if not files or flags is None:
        return
    state = read_state_dict(found)
    where = f"ADM checkpoint {section['path']!r}"
    net = unet_for(flags, state, where)
    check_state_dict(net, state, where)
    label_dim = int(net.num_classes or 0)
    if guide is not None:
        clf_path = _checkpoint(guide["path"], "classifier.path", files)
        clf_flags = _classifier_flags(section, flags["image_size"], files)
        clf_state = read_state_dict(clf_path)
        clf_where = f"ADM classifier {guide['path']!r}"
        clf = classifier_for(clf_flags, clf_state, clf_where)
        check_state_dict(clf, clf_state, clf_where)
        if label_dim and clf.out_channels != label_dim:
            raise ValueError(f"{clf_where} has {clf.out_channels} classes, the model {label_dim}; expected equal")
        label_dim = label_dim or clf.out_channels
    check_label(section, label_dim, f"the ADM model {section['path']!r}")


def load(section: dict, device: str, dtype: torch.dtype):
    """The section's model (guided where it names a classifier), label-free: conditioned per batch."""
    from models.adm import load_adm, load_classifier
    from models.adm.guidance import ClassifierGuidance

    flags = _model_flags(section, True)
    model = load_adm(resolve_path(section["path"], CKPT_ENV), flags, clip_denoised=section.get("clip_denoised", True),
                     device=device, dtype=dtype)
    guide = section.get("classifier")
    if guide is None:
        return model
    classifier, _ = load_classifier(resolve_path(guide["path"], CKPT_ENV),
                                    _classifier_flags(section, flags["image_size"], True), device=device, dtype=dtype)
    return ClassifierGuidance(model, classifier, guide.get("scale", DEFAULT_CLASSIFIER_SCALE))


def describe(section: dict, files: bool = True) -> ModelFacts | None:
    """Shape and path from the flags alone (no checkpoint needed)."""
    from models.adm.schedule import adm_path

    flags = _model_flags(section, files)
    if flags is None:
        return None
    size = flags["image_size"]
    return ModelFacts((3, size, size), adm_path(flags["noise_schedule"], flags["diffusion_steps"]))


def model_files(section: dict) -> dict[str, Path]:
    out = {}
    for role, value in (("checkpoint", section.get("path")), ("flags", section.get("flags"))):
        if isinstance(value, str) and resolve_path(value, CKPT_ENV) is not None:
            out[role] = resolve_path(value, CKPT_ENV)
    guide = section.get("classifier")
    if isinstance(guide, dict):
        for role, value in (("classifier", guide.get("path")), ("classifier_flags", guide.get("flags"))):
            if isinstance(value, str) and resolve_path(value, CKPT_ENV) is not None:
                out[role] = resolve_path(value, CKPT_ENV)
    return out


KIND = ModelKind(KEYS, check, load, describe, model_files, null_condition=False)
