"""``kind: edm2`` — an EDM2 snapshot (Karras et al. 2024; :func:`models.edm2.load_edm2`, read without
executing it): ``path`` (a post-hoc EMA reconstruction ``edm2-img*-*.pkl`` or a
``network-snapshot-*.pkl``; relative paths are also looked up under ``$SCOREBENCH_CKPT_DIR``),
``key`` (default 'ema'), ``label`` (the released ImageNet models are class-conditional:
:func:`bench.kinds.base.check_label`), ``sigma_min``/``sigma_max`` (the σ range sampled; default
generate_images.py's 0.002–80). Pixel models (``edm2-img64-*``) sample images in [-1, 1]; latent
models (``edm2-img512-*``) sample Stable Diffusion VAE latents (the model's ``latent_to_vae``); with ``vae``
(a saved diffusers ``AutoencoderKL`` folder, e.g. ``stabilityai/sd-vae-ft-mse``) the run decodes them
through EDM2's (x − bias)/scale and that VAE before its metrics and saved images, ``decode_batch`` rows
per VAE call (default 8; :mod:`models.latent`)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.kinds.base import CKPT_ENV, ModelFacts, ModelKind, resolve_folder, resolve_path, where_env
from bench.kinds.edm import KEYS, check_snapshot, load_snapshot
from bench.kinds.edm import model_files as snapshot_files

EDM2_KEYS = (*KEYS, "vae", "decode_batch")
VAE_URL = "https://huggingface.co/stabilityai/sd-vae-ft-mse"

POSTHOC_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/"


def check(section: dict, files: bool = True) -> None:
    from models.edm2.loader import edm2_label_dim

    name = Path(str(section.get("path"))).name
    check_snapshot(section, files, "EDM2", f"download it from {POSTHOC_URL}{name} (or a network-snapshot-*.pkl "
                   f"of your own EDM2 training run)", edm2_label_dim)
    vae = section.get("vae")
    if vae is not None and not isinstance(vae, str):
        raise ValueError(f"field 'vae' (a saved diffusers AutoencoderKL folder) must be a path, got {vae!r}")
    batch = section.get("decode_batch", 8)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"field 'decode_batch' (latent rows per VAE decoder call) must be an integer >= 1, "
                         f"got {batch!r}")
    if files and vae is not None and not _vae_folder(vae):
        raise FileNotFoundError(f"VAE folder {vae!r} (field 'vae') not found{where_env()}; save one with internet: "
                                f"AutoencoderKL.from_pretrained('stabilityai/sd-vae-ft-mse').save_pretrained({vae!r}) "
                                f"({VAE_URL})")
    if files and vae is not None:
        from models.edm.unpickle import read_snapshot

        encoder = read_snapshot(resolve_path(section["path"], CKPT_ENV), tensors=False).get("encoder")
        if getattr(encoder, "class_name", None) != "StabilityVAEEncoder":
            raise ValueError(f"field 'vae' given, but the EDM2 snapshot {section['path']!r} samples pixels (encoder "
                             f"{getattr(encoder, 'class_name', None)!r}, not a StabilityVAEEncoder); remove 'vae'")


def _vae_folder(vae: str) -> Path | None:
    folder = resolve_folder(vae)
    return folder if folder is not None and (folder / "config.json").is_file() else None


def load(section: dict, device: str, dtype: torch.dtype):
    from models.edm2 import load_edm2
    from models.latent import VAEDecoder, load_vae
    from models.tally import Tally

    model = load_snapshot(section, device, dtype, load_edm2)
    if section.get("vae") is not None:
        if not model.latent:
            raise ValueError(f"field 'vae' given, but the EDM2 snapshot {section['path']!r} samples pixels "
                             f"({model.space.encoder}); remove 'vae'")
        model.tally = Tally()
        model.decoder = VAEDecoder(load_vae(_vae_folder(section["vae"]), device), model.latent_to_vae, model.tally,
                                   chunk=section.get("decode_batch", 8))
        model.image_shape = model.decoder.image_shape(model.shape)
    return model


def describe(section: dict, files: bool = True) -> ModelFacts | None:
    """Sample shape and path from the snapshot's stored constructor arguments (tensors unread; None
    without ``files``): what a guide model is checked against at grid load."""
    import math
    from types import SimpleNamespace

    from models.edm.loader import sde_for
    from models.edm.unpickle import plain, read_snapshot

    found = resolve_path(section["path"], CKPT_ENV) if files else None
    if found is None:
        return None
    record = read_snapshot(found, tensors=False)[section.get("key", "ema")]
    kwargs = plain(record.init_kwargs)
    res, channels = int(kwargs["img_resolution"]), int(kwargs["img_channels"])
    net = SimpleNamespace(kind="edm", sigma_min=0.0, sigma_max=math.inf)  # EDM2's Precond: no σ range of its own
    shape = latents = (channels, res, res)
    vae = _vae_folder(section["vae"]) if section.get("vae") is not None else None
    if vae is not None:  # what the metrics see: the decoded images
        import json

        from models.latent import vae_scale_factor

        config = json.loads((vae / "config.json").read_text())
        shape = (int(config["out_channels"]), res * vae_scale_factor(config), res * vae_scale_factor(config))
    return ModelFacts(shape, sde_for(net, section.get("sigma_min"), section.get("sigma_max")), latents)


def model_files(section: dict) -> dict[str, Path]:
    files = snapshot_files(section)
    vae = _vae_folder(section["vae"]) if isinstance(section.get("vae"), str) else None
    if vae is not None:
        files["vae"] = vae
    return files


KIND = ModelKind(EDM2_KEYS, check, load, describe, model_files, null_condition=False)
