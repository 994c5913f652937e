"""Conditional and latent diffusers pipelines as models of the harness, loaded offline from a saved
pipeline folder: Stable Diffusion 1.x/2.x and SDXL (``UNet2DConditionModel``), DiT
(``DiTTransformer2DModel``), PixArt (``PixArtTransformer2DModel``), SD3 (``SD3Transformer2DModel``) and
FLUX (``FluxTransformer2DModel``).

The denoiser's path, prediction and time mapping come from the pipeline's scheduler config exactly as
for a ``UNet2DModel`` (:func:`models.diffusers_adapter.model_spec`): a VP table for SD/SDXL/DiT/PixArt
(ε or v prediction; DiT's and PixArt's learned-σ output: the ε half), the flow path with velocity
prediction for SD3/FLUX (the network's timestep σ·N; FLUX's transformer takes σ itself). Every harness
sampler then runs on them through the same :class:`~models.discrete.TimestepNet`.

**Conditions** are per row: class indices [B] int64 (DiT; its null class is ``num_embeds_ada_norm``,
as ``DiTPipeline`` uses 1000) or a dict of tensors with leading dimension B (text pipelines): what the
denoiser takes besides x and the timestep, produced by the pipeline's own ``encode_prompt`` (its
tokenizers and transformers text encoders, from the folder, ``local_files_only``):

==========  =====================================================  ===================================
family      condition keys                                         null condition (``null_condition``)
==========  =====================================================  ===================================
sd          encoder_hidden_states                                  the pipeline's negative embedding of
sdxl        encoder_hidden_states, text_embeds, time_ids            no negative prompt (""; SDXL's
sd3         encoder_hidden_states, pooled_projections               ``force_zeros_for_empty_prompt``:
pixart      encoder_hidden_states, encoder_attention_mask           zeros), as its CFG branch uses
flux        encoder_hidden_states, pooled_projections, guidance    the embedding of ""
dit         class indices [B]                                      num_embeds_ada_norm
==========  =====================================================  ===================================

FLUX's guidance-distilled ``guidance`` input (FLUX.1-dev) is a condition of the network (the
``distilled_guidance`` value, per row), not classifier-free guidance. FLUX's latents are the
unpacked [C, H, W] the pipeline draws its noise in; each network call packs them into 2×2 patches
and unpacks the output, as ``FluxPipeline`` does.

**Size**: ``size`` ([height, width] of the decoded image, the pipelines' ``height``/``width``;
default: the pipeline's) sets the latents to height/s × width/s (s: the VAE scale factor), and SDXL's
time ids, PixArt-α 1024's size conditions and FLUX's packing follow it (:func:`check_size`: the
multiples each pipeline's ``check_inputs`` asks for).

**Latents** decode through the pipeline's VAE (:class:`models.latent.VAEDecoder`, ``decoder``), with
the pipeline's ``scaling_factor`` (and ``shift_factor`` for SD3/FLUX). Text encoder calls and VAE
decoder calls are counted in the model's :class:`~models.tally.Tally` (``tally``), apart from NFE.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from models.discrete import TimestepNet
from models.latent import VAEDecoder, scaled_latents, vae_scale_factor
from models.parameterisation import PredictionModel
from models.tally import Tally

__all__ = ["FAMILIES", "PipelineModel", "load_pipeline", "pipeline_facts", "check_size", "denoiser_class",
           "is_pipeline"]


@dataclass(frozen=True)
class Family:
    """What one denoiser class of a pipeline is: its component name, its condition ('text', 'class' or
    None), and whether it predicts a learned σ beside ε (2C output channels, the first C used)."""

    component: str
    condition: str | None


FAMILIES = {
    "UNet2DConditionModel": Family("unet", "text"),
    "DiTTransformer2DModel": Family("transformer", "class"),
    "PixArtTransformer2DModel": Family("transformer", "text"),
    "SD3Transformer2DModel": Family("transformer", "text"),
    "FluxTransformer2DModel": Family("transformer", "text"),
}
FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale: a guidance-distilled FLUX's `guidance` input
# Pipeline components the harness never runs (loaded as None).
_UNUSED = ("safety_checker", "feature_extractor", "image_encoder")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from e


def is_pipeline(folder: Path) -> bool:
    """A saved pipeline folder whose denoiser is one of :data:`FAMILIES` (not a ``UNet2DModel``)."""
    folder = Path(folder)
    return (folder / "model_index.json").is_file() and denoiser_class(folder) is not None


def denoiser_class(folder: Path) -> str | None:
    """The class name of a pipeline folder's denoiser (``unet/`` or ``transformer/``) if it is in
    :data:`FAMILIES`, else None."""
    for component in ("transformer", "unet"):
        cfg = Path(folder) / component / "config.json"
        if cfg.is_file():
            name = _read_json(cfg).get("_class_name")
            return name if name in FAMILIES else None
    return None


def _family_name(cls: str, config: dict) -> str:
    if cls == "UNet2DConditionModel":
        return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd"
    return {"DiTTransformer2DModel": "dit", "PixArtTransformer2DModel": "pixart", "SD3Transformer2DModel": "sd3",
            "FluxTransformer2DModel": "flux"}[cls]


def pipeline_facts(folder: Path, size=None) -> dict:
    """What a pipeline folder's configs say, without loading weights: ``{'family', 'class', 'component',
    'condition', 'label_dim', 'shape' (latent sample), 'image_shape', 'text', 'multiple', 'rule'}``, at the
    pipeline's default size or at ``size`` ([height, width] of the decoded image, pixels; checked by
    :func:`check_size`). ``multiple``: what a size's height and width must be multiples of, ``rule`` why."""
    folder = Path(folder)
    cls = denoiser_class(folder)
    if cls is None:
        raise ValueError(f"{folder}: no denoiser of a supported class; expected unet/ or transformer/ with one of: "
                         f"{', '.join(FAMILIES)}")
    fam = FAMILIES[cls]
    cfg = _read_json(folder / fam.component / "config.json")
    name = _family_name(cls, cfg)
    if cfg.get("time_cond_proj_dim") is not None:
        raise ValueError(f"{folder / fam.component / 'config.json'}: time_cond_proj_dim {cfg['time_cond_proj_dim']} "
                         f"(a guidance-embedding UNet, e.g. LCM) is not supported; expected time_cond_proj_dim null")
    vae_cfg = _read_json(folder / "vae" / "config.json") if (folder / "vae" / "config.json").is_file() else None
    scale = vae_scale_factor(vae_cfg) if vae_cfg else 8
    if name == "flux":
        # FluxPipeline's default size: default_sample_size (128) latent cells, packed in 2x2 patches.
        channels, size_z = int(cfg["in_channels"]) // 4, (128, 128)
    else:
        s = cfg["sample_size"]
        channels, size_z = int(cfg["in_channels"]), (s, s) if isinstance(s, int) else tuple(s)
    if size is not None:
        size_z = (int(size[0]) // scale, int(size[1]) // scale)
    shape = (channels, *size_z)
    image = (int(vae_cfg["out_channels"]), size_z[0] * scale, size_z[1] * scale) if vae_cfg else None
    index = _read_json(folder / "model_index.json")
    return {"family": name, "class": cls, "component": fam.component, "condition": fam.condition,
            "label_dim": int(cfg.get("num_embeds_ada_norm") or 0) if name == "dit" else 0,
            "shape": shape, "image_shape": image, "text": any(k.startswith("text_encoder") and index[k][0]
                                                             for k in index if isinstance(index[k], list)),
            **_size_rule(name, scale, cfg)}


def _size_rule(family: str, scale: int, cfg: dict) -> dict:
    """What the pipeline's height and width must be multiples of (``multiple``) and why (``rule``): its own
    ``check_inputs`` and whole latent cells (``patch`` of them per token)."""
    if family == "flux":
        return {"multiple": 2 * scale, "rule": f"FluxPipeline.check_inputs: the VAE scale factor {scale} x 2, "
                                               f"its 2x2 packing"}
    patch = int(cfg.get("patch_size") or 1)
    cells = f"the VAE scale factor {scale}" + (f" x the transformer's patch size {patch}" if patch > 1 else "")
    if family == "sd3":
        return {"multiple": scale * patch, "rule": f"StableDiffusion3Pipeline.check_inputs: {cells}"}
    if family == "dit":
        return {"multiple": scale * patch, "rule": f"{cells}; square: DiT's transformer unpatchifies a square"}
    pipe = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "pixart": "PixArtAlphaPipeline"}
    return {"multiple": math.lcm(8, scale * patch), "rule": f"{pipe[family]}.check_inputs: 8, and {cells}"}


def check_size(folder: Path, size, where: str = "field 'size'") -> tuple[int, int] | None:
    """``size`` ([height, width] of the decoded image in pixels, or None: the pipeline's default) checked
    against the pipeline in ``folder``: ValueError naming the field and the pipeline's rule."""
    if size is None:
        return None
    facts = pipeline_facts(folder)
    m, rule = facts["multiple"], facts["rule"]
    if any(s % m for s in size):
        raise ValueError(f"{where} must be [height, width] divisible by {m} for the {facts['family']} pipeline in "
                         f"{folder} ({rule}), got {list(size)!r}")
    if facts["family"] == "dit" and size[0] != size[1]:
        raise ValueError(f"{where} must be square for a DiT pipeline ({rule}), got {list(size)!r}")
    cfg = _read_json(folder / facts["component"] / "config.json")
    most = cfg.get("pos_embed_max_size")
    if facts["family"] == "sd3" and most and max(size) > most * m:
        raise ValueError(f"{where} must be at most {most * m} per side for the SD3 pipeline in {folder} (its "
                         f"transformer's pos_embed_max_size {most} patches of {m} pixels), got {list(size)!r}")
    return int(size[0]), int(size[1])


# ---- the network calls: (x, τ, condition) -> the prediction ---------------------------------------
class _Call:
    """``(x, τ, condition) -> output`` of a pipeline's denoiser (its first ``channels`` channels where it
    also predicts a learned σ)."""

    def __init__(self, net, family: str, channels: int | None, image_size: tuple[int, int] | None) -> None:
        self.net, self.family, self.channels, self.image_size = net.eval(), family, channels, image_size

    def __call__(self, x: Tensor, tau: Tensor, cond) -> Tensor:
        out = getattr(self, f"_{self.family}")(x, tau.to(x.dtype), cond)
        return out if self.channels is None else out[:, :self.channels]

    def _sd(self, x, tau, c):
        return self.net(x, tau, encoder_hidden_states=c["encoder_hidden_states"]).sample

    def _sdxl(self, x, tau, c):
        added = {"text_embeds": c["text_embeds"], "time_ids": c["time_ids"]}
        return self.net(x, tau, encoder_hidden_states=c["encoder_hidden_states"], added_cond_kwargs=added).sample

    def _dit(self, x, tau, labels):
        return self.net(x, timestep=tau, class_labels=labels).sample

    def _pixart(self, x, tau, c):
        added = {"resolution": None, "aspect_ratio": None}
        if self.net.config.sample_size == 128:  # PixArt-α 1024: resolution and aspect-ratio conditions
            h, w = self.image_size
            added = {"resolution": torch.tensor([[h, w]], dtype=x.dtype, device=x.device).repeat(x.shape[0], 1),
                     "aspect_ratio": torch.tensor([[h / w]], dtype=x.dtype, device=x.device).repeat(x.shape[0], 1)}
        return self.net(x, encoder_hidden_states=c["encoder_hidden_states"], encoder_attention_mask=
                        c["encoder_attention_mask"], timestep=tau, added_cond_kwargs=added).sample

    def _sd3(self, x, tau, c):
        return self.net(hidden_states=x, timestep=tau, encoder_hidden_states=c["encoder_hidden_states"],
                        pooled_projections=c["pooled_projections"], return_dict=False)[0]

    def _flux(self, x, tau, c):
        B, C, H, W = x.shape
        packed = x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), C * 4)
        img_ids = torch.zeros(H // 2, W // 2, 3)
        img_ids[..., 1] += torch.arange(H // 2)[:, None]
        img_ids[..., 2] += torch.arange(W // 2)[None, :]
        text = c["encoder_hidden_states"]
        txt_ids = torch.zeros(text.shape[1], 3, device=x.device, dtype=text.dtype)
        guidance = c.get("guidance") if self.net.config.guidance_embeds else None
        out = self.net(hidden_states=packed, timestep=tau / 1000, guidance=guidance,
                       pooled_projections=c["pooled_projections"], encoder_hidden_states=text, txt_ids=txt_ids,
                       img_ids=img_ids.reshape(-1, 3).to(device=x.device, dtype=x.dtype), return_dict=False)[0]
        return out.view(B, H // 2, W // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


# ---- text encoding -------------------------------------------------------------------------------
def _count_text_encoders(pipe, tally: Tally) -> None:
    """Add one ``text_encoder`` call of its rows to ``tally`` at every forward of each text encoder of
    ``pipe`` (a forward pre-hook: the pipeline's ``encode_prompt`` reads the encoders' config and dtype,
    so they stay the modules themselves)."""

    def hook(module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        tally.add("text_encoder", rows=int(ids.shape[0]))

    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        enc = getattr(pipe, name, None)
        if enc is not None:
            enc.register_forward_pre_hook(hook, with_kwargs=True)


def _encode(pipe, family: str, prompts: list[str], device, negative: bool, image_size) -> tuple[dict, dict | None]:
    """(condition of ``prompts``, the pipeline's negative condition where ``negative``) through the
    pipeline's own ``encode_prompt``."""
    if family == "sd":
        pos, neg = pipe.encode_prompt(prompts, device, 1, negative)
        return {"encoder_hidden_states": pos}, negative and {"encoder_hidden_states": neg}
    if family == "sdxl":
        pos, neg, pooled, npooled = pipe.encode_prompt(prompts, None, device, 1, negative)
        proj = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
        ids = pipe._get_add_time_ids(tuple(image_size), (0, 0), tuple(image_size), dtype=pos.dtype,
                                     text_encoder_projection_dim=proj).to(device).repeat(len(prompts), 1)
        return ({"encoder_hidden_states": pos, "text_embeds": pooled, "time_ids": ids},
                negative and {"encoder_hidden_states": neg, "text_embeds": npooled, "time_ids": ids})
    if family == "sd3":
        pos, neg, pooled, npooled = pipe.encode_prompt(prompts, None, None, device=device,
                                                       do_classifier_free_guidance=negative)
        return ({"encoder_hidden_states": pos, "pooled_projections": pooled},
                negative and {"encoder_hidden_states": neg, "pooled_projections": npooled})
    if family == "pixart":
        pos, mask, neg, nmask = pipe.encode_prompt(prompts, do_classifier_free_guidance=negative, device=device,
                                                   clean_caption=False)
        return ({"encoder_hidden_states": pos, "encoder_attention_mask": mask},
                negative and {"encoder_hidden_states": neg, "encoder_attention_mask": nmask})
    if family == "flux":
        pos, pooled, _ = pipe.encode_prompt(prompts, None, device=device)
        return {"encoder_hidden_states": pos, "pooled_projections": pooled}, None
    raise ValueError(f"pipeline family {family!r} takes no text")


def _rows(cond, n: int):
    """A one-row condition repeated to n rows."""
    if isinstance(cond, Tensor):
        return cond.expand(n, *cond.shape[1:])
    return {k: v.expand(n, *v.shape[1:]) for k, v in cond.items()}


def _check_rows(cond, what: str):
    sizes = {int(cond.shape[0])} if isinstance(cond, Tensor) else {int(v.shape[0]) for v in cond.values()}
    if len(sizes) != 1:
        raise ValueError(f"{what}: every tensor of a condition needs the same number of rows, got {sorted(sizes)}")
    return sizes.pop()


# ---- the model -----------------------------------------------------------------------------------
class PipelineModel(PredictionModel):
    """A diffusers pipeline's denoiser as a score model (module docstring), conditioned per batch on one
    condition row per sample (:meth:`conditioned`), with its :meth:`null_condition`, the pipeline's prompt
    encoding (:meth:`encode_prompts`, text pipelines) and its VAE decoder (``decoder``, latent models:
    ``shape`` is the latent sample's, ``image_shape`` the decoded image's)."""

    def __init__(self, net, path, prediction, shape, *, family: str, condition: str | None, label_dim: int,
                 pipe, tally: Tally, decoder: VAEDecoder | None, image_size, distilled_guidance: float | None):
        super().__init__(net, path, prediction, shape, (-1.0, 1.0), label_dim=label_dim)
        self.family, self.condition, self.pipe, self.tally = family, condition, pipe, tally
        self.decoder = decoder
        self.image_shape = decoder.image_shape(self.shape) if decoder is not None else self.shape
        self.image_size, self.distilled_guidance = image_size, distilled_guidance
        self._null = None

    @property
    def text(self) -> bool:
        return self.condition == "text"

    def _device(self):
        return next(self.net.network.net.parameters()).device

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict:
        """The condition rows of ``prompts`` [len(prompts)], encoded by the pipeline's own text encoder(s)
        (one counted ``text_encoder`` call per encoder)."""
        if not self.text:
            raise ValueError(f"{self.family} pipeline: takes no prompts (its condition is {self.condition!r})")
        cond, _ = _encode(self.pipe, self.family, list(prompts), self._device(), False, self.image_size)
        return self._with_guidance(cond)

    def _with_guidance(self, cond: dict) -> dict:
        if self.family == "flux" and self.distilled_guidance is not None:
            n = _check_rows(cond, "FLUX condition")
            cond = {**cond, "guidance": torch.full((n,), float(self.distilled_guidance), device=self._device())}
        return cond

    @torch.no_grad()
    def null_condition(self, n: int):
        """n rows of the condition the model was trained to read as "no condition": DiT's null class, or a
        text pipeline's negative embedding without a negative prompt (the embedding of "")."""
        if self.condition == "class":
            return torch.full((n,), self.label_dim, dtype=torch.int64)
        if self._null is None:
            if self.family == "flux":  # FluxPipeline's negative branch (true CFG) encodes "" as a prompt
                null, _ = _encode(self.pipe, self.family, [""], self._device(), False, self.image_size)
            else:
                _, null = _encode(self.pipe, self.family, [""], self._device(), True, self.image_size)
            self._null = self._with_guidance(null)
        return _rows(self._null, n)

    def conditioned(self, cond) -> PipelineModel:
        """The same network for a batch whose row i has condition row i of ``cond`` (class indices [B] in
        0..label_dim, the null class included, or a dict of [B, ...] tensors)."""
        if self.condition is None:
            raise ValueError(f"{self.family} pipeline: the model is unconditional; it takes no condition")
        if self.condition == "class":
            idx = torch.as_tensor(cond)
            if idx.is_floating_point() or idx.dim() != 1 or not bool(((idx >= 0) & (idx <= self.label_dim)).all()):
                raise ValueError(f"{self.family} pipeline: class labels must be [B] class indices in "
                                 f"0..{self.label_dim} ({self.label_dim}: the null class), got {cond!r}")
        elif not isinstance(cond, dict):
            raise ValueError(f"{self.family} pipeline: a text condition is a dict of [B, ...] tensors "
                             f"(encode_prompts), got {type(cond).__name__}")
        else:
            _check_rows(cond, f"{self.family} pipeline")
        new = copy.copy(self)
        new.row_labels = cond
        return new

    def _call(self, x: Tensor, t: Tensor) -> Tensor:
        cond = self.row_labels
        if self.condition is None:
            return self.net(x, t, None)
        rows = None if cond is None else _check_rows(cond, f"{self.family} pipeline")
        if rows != x.shape[0]:
            raise ValueError(f"{self.family} pipeline: the network is conditional ({self.condition}); condition it on "
                             f"one row per sample first (conditioned(model, condition)); got {rows} rows for "
                             f"{x.shape[0]} samples")
        if isinstance(cond, Tensor):
            cond = cond.to(x.device)
        else:
            cond = {k: v.to(x.device) for k, v in cond.items()}
        return self.net(x, t, cond)


def load_pipeline(path, scheduler: dict | None = None, time_mapping: str | None = None, device: str = "cpu",
                  dtype: torch.dtype = torch.float32, distilled_guidance: float | None = None,
                  decode_batch: int = 8, size=None) -> PipelineModel:
    """Load a saved pipeline folder (``model_index.json``; module docstring) offline as a
    :class:`PipelineModel`. ``scheduler`` entries override the saved scheduler config; ``size`` ([height,
    width] of the decoded image, the pipelines' ``height``/``width``; default: the pipeline's) sets the
    latents' size and what follows it (SDXL's time ids, PixArt-α 1024's size conditions, FLUX's packing)."""
    from diffusers import DiffusionPipeline

    from models.diffusers_adapter import check_scheduler_config, model_spec, read_scheduler_config

    path = Path(path)
    facts = pipeline_facts(path, check_size(path, size, "size"))
    config = {**(read_scheduler_config(path / "scheduler") if (path / "scheduler").is_dir() else {}),
              **(scheduler or {})}
    check_scheduler_config(config, where=str(path))  # before loading any weights
    spec = model_spec(config, time_mapping, where=str(path))
    index = _read_json(path / "model_index.json")
    # components the harness never runs, and those saved empty ([null, null], e.g. SD3 without T5), as None
    unused = {k: None for k, v in index.items() if k in _UNUSED or (isinstance(v, list) and v[0] is None)}
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, torch_dtype=dtype, **unused)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    net = getattr(pipe, facts["component"]).eval()
    c = net.config
    channels = None
    # out_channels null (FLUX.1's saved configs leave it out): the denoiser's output has in_channels channels
    out_channels = c.out_channels if c.out_channels is not None else c.in_channels
    if out_channels != c.in_channels:
        if out_channels == 2 * c.in_channels:  # learned σ (DiT, PixArt): the first half is ε
            channels = int(c.in_channels)
        else:
            raise ValueError(f"{path}: the denoiser has {out_channels} output channels for {c.in_channels} input "
                             f"channels; expected equal, or twice (a learned σ)")
    tally = Tally()
    decoder = None
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        to_vae = scaled_latents(vae.config.scaling_factor, getattr(vae.config, "shift_factor", None))
        decoder = VAEDecoder(vae, to_vae, tally, chunk=decode_batch)
    if facts["text"]:
        _count_text_encoders(pipe, tally)
    image_size = facts["image_shape"][1:] if facts["image_shape"] else None
    if facts["family"] == "flux" and net.config.guidance_embeds and distilled_guidance is None:
        distilled_guidance = FLUX_GUIDANCE
    call = _Call(net, facts["family"], channels, image_size)
    timestep_net = TimestepNet(call, spec["path"], spec["mapping"], spec["sigmas"], spec["num_train_timesteps"])
    model = PipelineModel(timestep_net, spec["path"], spec["prediction"], facts["shape"], family=facts["family"],
                          condition=facts["condition"], label_dim=facts["label_dim"], pipe=pipe, tally=tally,
                          decoder=decoder, image_size=image_size, distilled_guidance=distilled_guidance)
    model.time_mapping = spec["mapping"]
    return model
