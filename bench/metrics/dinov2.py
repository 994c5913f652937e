"""FD_DINOv2: the Fréchet distance in DINOv2 ViT-L/14 features, as EDM2's ``calculate_metrics.py`` and
layer6ai-labs' dgm-eval compute it (Stein et al. 2023; Karras et al. 2024).

The protocol, read from both codebases (neither is a package; nothing of them is copied here):

* input: uint8 RGB images (samples quantised as for FID; one channel repeated to three);
* resize to 224 × 224: ``pil`` (default) — each image as a PIL RGB uint8 image, ``Image.resize((224,
  224), BICUBIC)``, back to uint8: what dgm-eval does (torchvision's ``Resize`` on a PIL image is that
  call) and EDM2's ``resize_mode='pil'``, which EDM2 calls the reference; ``torch`` — EDM2's default,
  ``F.interpolate(float32, 224, bicubic, antialias=True)`` on 0..255 values ("almost the same");
* scale to [0, 1] (/255), normalise with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224,
  0.225);
* the torch.hub ``dinov2_vitl14`` backbone: its output is the CLS token after the final LayerNorm
  (``x_norm_clstoken``; 1024-d). Its position embeddings (a 37 × 37 grid, trained at 518 px) are
  resampled to the 16 × 16 patches of a 224 px input by ``F.interpolate(bicubic, scale_factor =
  (16 + 0.1)/37, align_corners=False)`` in float32 (the hub model's ``interpolate_offset=0.1``);
* mean and covariance of the features in float64; the Fréchet distance (EDM2: ``scipy.linalg.sqrtm``;
  here the same trace from a symmetric eigenproblem, :mod:`bench.metrics.frechet`).

The network is transformers' ``Dinov2Model`` (its CLS token after its final ``layernorm`` is the
hub's ``x_norm_clstoken``). transformers resamples position embeddings to an exact size
(``size=(16, 16)``), which is not the hub's scale factor, so the position embeddings are resampled
once here the hub's way and stored at 16 × 16. Weights come from a local file or folder only:

* the torch.hub checkpoint ``dinov2_vitl14_pretrain.pth`` (a state dict, read with
  ``weights_only=True`` and converted to transformers' names), or
* a transformers folder (``config.json`` + weights, e.g. ``facebook/dinov2-large``).

Both give the same features (tested on a random small DINOv2 in both formats).
"""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.metrics.assets import MissingAssetError, atomic_write, cache_dir
from bench.metrics.edm_reference import check_protocol, is_edm_pickle
from bench.metrics.feature_fd import FrechetMetric
from bench.metrics.inception import file_sha256, quantize_uint8
from bench.metrics.reference import ReferenceStats
from bench.metrics.registry import MetricEntry, RunFacts, image_shape, require_res
from bench.metrics.stats import StreamingStats

__all__ = ["ENTRY", "DINOv2Features", "compute_dinov2_reference", "find_dinov2", "hub_position_embeddings",
           "hub_to_transformers", "load_dinov2", "make_fd_dinov2", "resize_224"]

HUB_FILE = "dinov2_vitl14_pretrain.pth"
HUB_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/" + HUB_FILE
HF_REPO = "facebook/dinov2-large"
RESIZES = ("pil", "torch")
SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
HUB_OFFSET = 0.1  # torch.hub dinov2: interpolate_offset
HEAD_DIM = 64  # every DINOv2 ViT (S, B, L, g) has 64-d attention heads


def _fetch_hint(put: Path) -> str:
    return (f"get it with `curl -L -o {put} {HUB_URL}` or `huggingface-cli download {HF_REPO} --local-dir "
            f"{put.parent / 'dinov2-large'}`, or name a file/folder with data: {{dinov2: PATH}}")


def find_dinov2(path: str | Path | None = None) -> Path:
    """The DINOv2 weights: ``path`` (a hub ``.pth`` file or a transformers folder), else
    ``$SCOREBENCH_CACHE/dinov2_vitl14_pretrain.pth`` or ``$SCOREBENCH_CACHE/dinov2-large``.

    Raises:
        MissingAssetError: one line naming where it looked and how to get the weights.
    """
    put = cache_dir() / HUB_FILE
    candidates = [Path(path).expanduser()] if path is not None else [put, cache_dir() / "dinov2-large"]
    for c in candidates:
        if c.is_file() or (c / "config.json").is_file():
            return c
    raise MissingAssetError(f"DINOv2 ViT-L/14 weights not found at {', '.join(map(str, candidates))}; "
                            f"nothing is downloaded automatically: {_fetch_hint(put)}")


# --- the network ---------------------------------------------------------------------------------
def hub_position_embeddings(pos_embed: Tensor, grid: int, offset: float = HUB_OFFSET) -> Tensor:
    """The hub model's position embeddings [1, 1 + M², D] resampled to a ``grid`` × ``grid`` patch grid as
    its ``interpolate_pos_encoding`` does: bicubic, ``scale_factor = (grid + offset) / M``, no
    ``align_corners``, no antialiasing, in float32; the CLS position kept."""
    cls, patches = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    m = int(math.isqrt(patches.shape[1]))
    if m * m != patches.shape[1]:
        raise ValueError(f"position embeddings of {patches.shape[1]} patches are not a square grid")
    if m == grid:
        return pos_embed.float()
    scale = (grid + offset) / m
    img = patches.reshape(1, m, m, -1).permute(0, 3, 1, 2)
    out = F.interpolate(img, scale_factor=(scale, scale), mode="bicubic", align_corners=False)
    if out.shape[-2:] != (grid, grid):
        raise ValueError(f"resampling {m}x{m} position embeddings gave {tuple(out.shape[-2:])}, not {grid}x{grid}")
    return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def _hub_config(state: dict):
    """A ``Dinov2Config`` for a hub state dict (sizes read from its tensors; 64-d heads)."""
    from transformers import Dinov2Config

    if any(".mlp.w12." in k for k in state):
        raise ValueError("SwiGLU DINOv2 (ViT-g/14) checkpoints are not supported; use ViT-L/14")
    dim = state["cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    patch = state["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    return Dinov2Config(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=dim // HEAD_DIM,
                        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] // dim, patch_size=patch,
                        image_size=grid * patch, layer_norm_eps=1e-6, layerscale_value=1.0, hidden_act="gelu",
                        qkv_bias=True)


def hub_to_transformers(state: dict, target_keys: set[str]) -> dict:
    """A torch.hub DINOv2 state dict under transformers ``Dinov2Model``'s names (``target_keys``: the model's
    own keys, to tell transformers' attention naming: ``q_proj``/``o_proj`` or ``attention.query``/``output.dense``)."""
    new_names = any(".attention.q_proj." in k for k in target_keys)
    attn = ({"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "o": "attention.o_proj"}
            if new_names else {"q": "attention.attention.query", "k": "attention.attention.key",
                               "v": "attention.attention.value", "o": "attention.output.dense"})
    out = {}
    for k, v in state.items():
        if k == "cls_token":
            out["embeddings.cls_token"] = v
        elif k == "mask_token":
            out["embeddings.mask_token"] = v.reshape(1, -1)
        elif k == "pos_embed":
            out["embeddings.position_embeddings"] = v
        elif k.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("norm."):
            out["layernorm." + k.rsplit(".", 1)[1]] = v
        elif m := re.match(r"blocks\.(\d+)\.(.+)$", k):
            pre, rest = f"encoder.layer.{m.group(1)}.", m.group(2)
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                for part, t in zip("qkv", v.chunk(3, dim=0)):
                    out[f"{pre}{attn[part]}.{kind}"] = t
            elif rest.startswith("attn.proj."):
                out[f"{pre}{attn['o']}.{rest.rsplit('.', 1)[1]}"] = v
            elif rest in ("ls1.gamma", "ls2.gamma"):
                out[f"{pre}layer_scale{rest[2]}.lambda1"] = v
            elif rest.split(".")[0] in ("norm1", "norm2", "mlp"):
                out[pre + rest] = v
            else:
                raise ValueError(f"unexpected DINOv2 key {k!r}")
        else:
            raise ValueError(f"unexpected DINOv2 key {k!r}")
    return out


def load_dinov2(path: str | Path, device: str | torch.device = "cpu"):
    """transformers ``Dinov2Model`` from a hub ``.pth`` state dict or a transformers folder, in eval mode,
    with its position embeddings resampled the hub's way for 224 px inputs (module docstring)."""
    from transformers import Dinov2Model

    path = Path(path)
    if path.is_dir():
        model = Dinov2Model.from_pretrained(str(path), local_files_only=True)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = Dinov2Model(_hub_config(state))
        converted = hub_to_transformers(state, set(model.state_dict()))
        missing, unexpected = model.load_state_dict(converted, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: not a DINOv2 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    grid = SIZE // model.config.patch_size
    emb = model.embeddings
    with torch.no_grad():
        emb.position_embeddings = torch.nn.Parameter(hub_position_embeddings(emb.position_embeddings, grid),
                                                     requires_grad=False)
    return model.eval().requires_grad_(False).to(device)


def resize_224(x: Tensor, mode: str = "pil") -> Tensor:
    """uint8 images [B, 3, H, W] → float32 [B, 3, 224, 224] on the 0..255 scale, by the protocol's resize."""
    if mode == "pil":
        from PIL import Image

        arr = x.permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([np.asarray(Image.fromarray(a, "RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
                        for a in arr])
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, torch.float32)
    if mode == "torch":
        return F.interpolate(x.to(torch.float32), size=(SIZE, SIZE), mode="bicubic", antialias=True)
    raise ValueError(f"unknown DINOv2 resize {mode!r}; expected one of: {', '.join(RESIZES)}")


class DINOv2Features:
    """uint8 images [B, C, H, W] (C = 1 or 3) → DINOv2 CLS features [B, D], float32.

    Args:
        weights: a hub ``.pth`` file or a transformers folder (:func:`find_dinov2`).
        device: where the network runs.
        resize: ``'pil'`` (dgm-eval, EDM2's reference mode) or ``'torch'`` (EDM2's default).
        batch_size: images per forward.
    """

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu", resize: str = "pil",
                 batch_size: int = 64) -> None:
        if resize not in RESIZES:
            raise ValueError(f"unknown DINOv2 resize {resize!r}; expected one of: {', '.join(RESIZES)}")
        self.weights, self.device, self.resize, self.batch_size = Path(weights), device, resize, batch_size
        self.model = load_dinov2(self.weights, device)
        self.dim = self.model.config.hidden_size
        self._mean = torch.tensor(MEAN, device=device).reshape(1, 3, 1, 1)
        self._std = torch.tensor(STD, device=device).reshape(1, 3, 1, 1)

    def protocol(self) -> dict:
        sha = file_sha256(self.weights) if self.weights.is_file() else None
        return {"feature_network": f"DINOv2 {self.weights.name} (transformers Dinov2Model, CLS token after the "
                                   f"final LayerNorm, {self.dim}-d)",
                "feature_network_sha256": sha, "dinov2_resize": self.resize,
                "preprocessing": f"uint8 RGB, resize 224 ({self.resize} bicubic), /255, ImageNet mean/std"}

    def __call__(self, x: Tensor) -> Tensor:
        if x.dtype != torch.uint8:
            raise ValueError(f"DINOv2 features take uint8 images, got {x.dtype}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        out = []
        with torch.no_grad():
            for lo in range(0, x.shape[0], self.batch_size):
                img = resize_224(x[lo: lo + self.batch_size], self.resize).to(self.device) / 255.0
                img = (img - self._mean) / self._std
                out.append(self.model(pixel_values=img).pooler_output.float())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


# --- reference statistics and the metric ---------------------------------------------------------
def reference_file_name(dataset: str, res: int | str, split: str, resize: str) -> str:
    return f"{dataset}_dinov2_{resize}_{split}_{res}.npz".lower()


def find_dinov2_reference(data: dict, resize: str, feats: bool = False) -> Path:
    """The reference statistics a ``data`` section names (``dinov2_ref``, else the cache's
    ``stats/{dataset}_dinov2_{resize}_{split}_{res}.npz``), checked to be of ``resize``'s protocol; with
    ``feats``, the reference features instead (``dinov2_feats``, else the same name ending ``_feats.npz``).

    Raises:
        MissingAssetError: absent (one line: where, and how to make it).
        ValueError: computed with another protocol, or without the features (names the file and the field).
    """
    key = "dinov2_feats" if feats else "dinov2_ref"
    if data.get(key):
        path = Path(data[key]).expanduser()
    else:
        name = reference_file_name(data.get("dataset", "cifar10"), require_res(data), data.get("fid_split", "train"),
                                   resize)
        path = cache_dir() / "stats" / (name[: -len(".npz")] + "_feats.npz" if feats else name)
    what = "features" if feats else "statistics"
    if not path.is_file():
        raise MissingAssetError(f"DINOv2 reference {what} not found at {path}; compute them from the dataset "
                                f"with bench.metrics.dinov2.compute_dinov2_reference{'(feats=True)' if feats else ''} "
                                f"(docs/metrics.md)")
    if is_edm_pickle(path):  # EDM2's statistics: mu and sigma of its own protocol (resize 'torch')
        if feats:
            raise ValueError(f"{path}: field 'feats' is missing (EDM2's statistics hold mu and sigma; reference "
                             "features, one row per image, are needed)")
        check_protocol(path, "fd_dinov2", dinov2_resize=resize)
        return path
    with np.load(path) as f:
        stored = str(f["dinov2_resize"]) if "dinov2_resize" in f.files else None
        has_feats = "feats" in f.files
    if stored != resize:
        raise ValueError(f"{path}: field 'dinov2_resize' is {stored!r}, the run asks for {resize!r} ({what} of "
                         f"another protocol)")
    if feats and not has_feats:
        raise ValueError(f"{path}: field 'feats' is missing (reference features, one row per image, are needed)")
    return path


def compute_dinov2_reference(images, out: str | Path, *, weights: str | Path | None = None, resize: str = "pil",
                             device: str | torch.device = "cpu", data_range: tuple[float, float] = (0.0, 1.0),
                             source: str = "", feats: bool = False) -> Path:
    """Reference statistics (``mu``, ``sigma``, ``n`` and the protocol) of a dataset's images, written to ``out``;
    with ``feats``, also the features themselves (float32 ``feats`` [N, D], what ``prdc_dinov2`` compares
    with) to ``out`` with ``_feats.npz`` for ``.npz``.

    Args:
        images: batches [B, C, H, W], uint8 or float in ``data_range``.
        out: the npz to write.
        weights, resize, device: as :class:`DINOv2Features`.
        source: what the images are (stored as provenance).
        feats: also write the features.
    """
    net = DINOv2Features(find_dinov2(weights), device, resize)
    stats, rows = StreamingStats(), []
    for batch in images:
        f = net(quantize_uint8(batch, data_range))
        stats.update(f)
        if feats:
            rows.append(f.cpu().numpy())
    provenance = {"source": source or "computed by scorebench", "dinov2_resize": resize,
                  "feature_network": net.protocol()["feature_network"],
                  "feature_network_sha256": str(net.protocol()["feature_network_sha256"])}
    stats.save(out, **provenance)
    if feats:
        path = Path(out).with_name(Path(out).name.removesuffix(".npz") + "_feats.npz")
        atomic_write(path, lambda fh: np.savez(fh, feats=np.concatenate(rows).astype(np.float32), **provenance))
    return Path(out)


def make_fd_dinov2(dataset: str = "cifar10", res: int = 32, split: str = "train", *, dinov2: str | Path | None = None,
                   dinov2_ref: str | Path | None = None, dinov2_resize: str = "pil",
                   reference: ReferenceStats | None = None, device: str | torch.device = "cpu",
                   data_range: tuple[float, float] = (0.0, 1.0), rounding: str = "round", batch_size: int = 64,
                   seeds: str | None = None) -> FrechetMetric:
    """Build the ``fd_dinov2`` accumulator (``update``, ``state``, ``merge``, ``compute``).

    Raises:
        MissingAssetError: the weights or the reference statistics are missing.
        ValueError: the statistics were computed with another resize.
    """
    weights = find_dinov2(dinov2)
    if reference is None:
        path = find_dinov2_reference({"dataset": dataset, "res": res, "fid_split": split, "dinov2_ref": dinov2_ref},
                                     dinov2_resize)
        given = f"{dataset}/{split}/{res}" if dinov2_ref is None else "given file"
        reference = ReferenceStats.load(path, "fd_dinov2", {"dinov2_resize": dinov2_resize}, reference_dataset=given)
    net = DINOv2Features(weights, device, dinov2_resize, batch_size)
    protocol = {**net.protocol(), "quantization": f"uint8, {rounding}", "data_range": list(data_range),
                "frechet": "scorebench eigh (float64)", "seeds": seeds}
    return FrechetMetric("fd_dinov2", net, reference, protocol,
                         prepare=partial(quantize_uint8, data_range=data_range, rounding=rounding))


def fd_dinov2_options(facts: RunFacts) -> dict:
    """Options of ``fd_dinov2`` for a run (``prdc_dinov2`` starts from them)."""
    data = facts.data
    return {"dataset": data.get("dataset", "cifar10"), "res": data.get("res", facts.shape[-1]),
            "split": data.get("fid_split", "train"), "dinov2": data.get("dinov2"), "dinov2_ref": data.get("dinov2_ref"),
            "dinov2_resize": data.get("dinov2_resize", "pil"), "data_range": facts.data_range, "device": facts.device,
            "seeds": facts.seeds}


def _files(data: dict) -> dict[str, Path]:
    return {"weights": find_dinov2(data.get("dinov2")),
            "reference": find_dinov2_reference(data, data.get("dinov2_resize", "pil"))}


def check_data(data: dict) -> None:
    """The ``data``-section keys of the DINOv2 metrics: ``dinov2_resize`` a known resize, paths strings."""
    if "dinov2_resize" in data and data["dinov2_resize"] not in RESIZES:
        raise ValueError(f"field 'dinov2_resize' must be one of: {', '.join(RESIZES)}; got {data['dinov2_resize']!r}")
    for k in ("dinov2", "dinov2_ref", "dinov2_feats"):
        if k in data and not isinstance(data[k], str):
            raise ValueError(f"field {k!r} must be a path, got {data[k]!r}")


ENTRY = MetricEntry(
    name="fd_dinov2", summary="Fréchet distance in DINOv2 ViT-L/14 CLS features (EDM2 / dgm-eval protocol)",
    build=make_fd_dinov2, options=fd_dinov2_options, applies=image_shape, files=_files, reads_data=True,
    keys=("dinov2", "dinov2_ref", "dinov2_resize"), check=check_data)
