"""CLIP score of images against their prompts, as torchmetrics' ``CLIPScore`` computes it.

For each image x with prompt c: 100 · cos(E_I(x), E_T(c)) with E_I, E_T transformers' ``CLIPModel``
image and text embeddings (``get_image_features`` / ``get_text_features``, after the projections);
the value is the mean over samples, clipped at 0 *after* the mean (torchmetrics 1.x:
``max(Σ score / n, 0)``; Hessel et al.'s CLIP-S clips each sample and weights by 2.5). Images are
quantised to uint8 as for FID and go through the backbone's own ``CLIPProcessor`` (resize of the
shortest side, centre crop, CLIP mean/std); prompts are tokenised by it, padded, and cut to the text
model's ``max_position_embeddings`` (77) as torchmetrics cuts them. The backbone is named and pinned
by its folder: default ViT-L/14 (``openai/clip-vit-large-patch14``, torchmetrics' default), from a
local folder only; the record names it and the hash of its weights. The backbone changes the number
(ViT-L/14 vs ViT-g-14), and so did torchmetrics' ×100 in other packages: compare like with like.

The state is mergeable sums (n, Σ score, and per seed group for the jackknife). Sample i's prompt is
``prompts[seed_i mod len(prompts)]`` of the list the metric is built with (a prompts file, one per
line, cycled over the seeds), or given with the batch (``update(samples, ids, prompts=[...])``). In a
run of a text-to-image model (``prompts`` in its model section) the executor passes each batch's own
prompts (``takes_prompts``); the grid refuses the metric for models without prompts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from bench.metrics.assets import MissingAssetError, cache_dir
from bench.metrics.feature_fd import check_state
from bench.metrics.grouped_mean import GroupedMean
from bench.metrics.inception import file_sha256, quantize_uint8
from bench.metrics.registry import MetricEntry, RunFacts, image_shape

__all__ = ["ENTRY", "ClipScore", "find_clip"]

DEFAULT_BACKBONE = "openai/clip-vit-large-patch14"


def find_clip(path: str | Path | None = None) -> Path:
    """The CLIP folder (``config.json``, weights, processor files): ``path``, else
    ``$SCOREBENCH_CACHE/clip-vit-large-patch14``.

    Raises:
        MissingAssetError: one line naming the folder and how to get it.
    """
    folder = Path(path).expanduser() if path is not None else cache_dir() / "clip-vit-large-patch14"
    if (folder / "config.json").is_file():
        return folder
    raise MissingAssetError(f"CLIP backbone not found at {folder}; nothing is downloaded automatically: get it with "
                            f"`huggingface-cli download {DEFAULT_BACKBONE} --local-dir {folder}`, or name a folder "
                            f"with data: {{clip: PATH}}")


def _embedding(out) -> Tensor:
    return out if isinstance(out, Tensor) else out.pooler_output  # transformers 5 returns the projected pooler


class ClipScore:
    """The ``clip_score`` accumulator: ``update(samples, ids, prompts=...)``, ``state``, ``merge``, ``compute``.

    Args:
        clip: the CLIP folder (:func:`find_clip`).
        device: where CLIP runs.
        data_range, rounding: the samples' range and their quantisation to uint8 (as FID).
        batch_size: images per forward.
        prompts: the prompt of seed s is ``prompts[s mod len(prompts)]`` (or give them with each batch).
        seeds: the samples' seeds, copied into the protocol.
    """

    name = "clip_score"
    takes_prompts = True  # the executor passes each batch's prompts to update()

    def __init__(self, *, clip: str | Path | None = None, device: str | torch.device = "cpu",
                 data_range: tuple[float, float] = (0.0, 1.0), rounding: str = "round", batch_size: int = 64,
                 prompts: list[str] | None = None, seeds: str | None = None) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.folder = find_clip(clip)
        self.model = CLIPModel.from_pretrained(str(self.folder), local_files_only=True).eval().to(device)
        self.processor = CLIPProcessor.from_pretrained(str(self.folder), local_files_only=True)
        self.device, self.batch_size, self.data_range, self.rounding = device, batch_size, data_range, rounding
        self.prompts = None if prompts is None else list(prompts)
        self.sums = GroupedMean()  # n, Σ score, and per seed group for the jackknife
        weights = sorted(self.folder.glob("*.safetensors")) or sorted(self.folder.glob("*.bin"))
        self._protocol = {
            "backbone": self.model.config.name_or_path or self.folder.name, "backbone_path": str(self.folder),
            "backbone_sha256": file_sha256(weights[0]) if len(weights) == 1 else None,
            "score": "100 * cos(image, prompt) embeddings, mean over samples, clipped at 0 after the mean "
                     "(torchmetrics CLIPScore)",
            "preprocessing": f"uint8 ({rounding}) images through the backbone's CLIPProcessor; prompts cut to "
                             f"{self.model.config.text_config.max_position_embeddings} tokens",
            "data_range": list(data_range), "num_prompts": None if prompts is None else len(prompts), "seeds": seeds}

    @torch.no_grad()
    def scores(self, images: Tensor, prompts: list[str]) -> Tensor:
        """100 · cos(image, prompt) per sample, float64 [B] (uint8 or float images in ``data_range``)."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        u8 = quantize_uint8(images, self.data_range, self.rounding).cpu()
        if u8.shape[1] == 1:
            u8 = u8.repeat(1, 3, 1, 1)
        limit = self.model.config.text_config.max_position_embeddings
        out = []
        for lo in range(0, len(u8), self.batch_size):
            pix = self.processor(images=list(u8[lo: lo + self.batch_size]), return_tensors="pt")["pixel_values"]
            text = self.processor(text=list(prompts[lo: lo + self.batch_size]), return_tensors="pt", padding=True)
            img = _embedding(self.model.get_image_features(pix.to(self.device)))
            txt = _embedding(self.model.get_text_features(text["input_ids"][..., :limit].to(self.device),
                                                          text["attention_mask"][..., :limit].to(self.device)))
            img = img / img.norm(p=2, dim=-1, keepdim=True)
            txt = txt / txt.norm(p=2, dim=-1, keepdim=True)
            out.append((100 * (img * txt).sum(-1)).double().cpu())
        return torch.cat(out)

    def update(self, samples: Tensor, ids: Tensor | None = None, prompts: list[str] | None = None) -> None:
        """Add a batch of images [B, C, H, W] with their seeds ``ids`` [B] and prompts (default: by seed)."""
        if prompts is None:
            if self.prompts is None or ids is None:
                raise ValueError("clip_score needs the prompt of every sample: build it with prompts=[...] and pass "
                                 "the seeds, or pass prompts=[...] with the batch")
            prompts = [self.prompts[int(i) % len(self.prompts)] for i in ids]
        self.sums.add(self.scores(samples, prompts), ids)

    def state(self) -> dict:
        return {"metric": self.name, **self.sums.state()}

    def merge(self, state: dict) -> None:
        check_state(self.name, state)
        self.sums.merge(state)

    def compute(self) -> tuple[float, dict]:
        s = self.sums
        if s.n == 0:
            raise ValueError("no samples added")
        value = max(s.sum / s.n, 0.0)  # the clip after the mean, as torchmetrics
        return value, {"metric": self.name, **self._protocol, "num_generated": s.n,
                       "uncertainty": s.uncertainty(value, lambda mean: max(mean, 0.0))}


def _options(facts: RunFacts) -> dict:
    return {"clip": facts.data.get("clip"), "data_range": facts.data_range, "device": facts.device,
            "seeds": facts.seeds}


def _applies(kind: str, shape: tuple[int, ...] | None, conditional: bool | str) -> str | None:
    if conditional != "text":
        return "it needs a text prompt per sample: a text-to-image model with a prompts file (model 'prompts')"
    return image_shape(kind, shape, conditional)


ENTRY = MetricEntry(
    name="clip_score", summary="CLIP score: 100 cos(image, prompt), mean clipped at 0 (torchmetrics), ViT-L/14",
    build=ClipScore, options=_options, lower_is_better=False, applies=_applies,
    files=lambda data: {"clip": find_clip(data.get("clip"))}, keys=("clip",))
