"""What a shard does around its sampler for text-conditional and latent models
(:class:`models.diffusers_pipelines.PipelineModel`, EDM2 latent models with a VAE):

* :func:`encode_shard_prompts` — the shard's prompts (:mod:`bench.prompts`), encoded once at its start
  by the model's own text encoder(s), in chunks of the run's batch size, kept on the CPU; each batch
  takes its rows (:func:`models.conditions.take_rows`);
* :func:`decode` — a batch's latents decoded by the model's VAE (:class:`models.latent.VAEDecoder`)
  before metrics and saved images, timed apart from sampling, with its peak memory on CUDA.

Text encoder and VAE decoder calls are counted in the model's own tally (``model.tally``); the
executor adds what they did during the shard to the record's ``networks``, never to NFE.
"""

from __future__ import annotations

import time

import torch

from bench.prompts import prompt_indices, read_prompts

__all__ = ["encode_shard_prompts", "decode", "image_view"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def encode_shard_prompts(spec: dict, model, positions: range, seeds: list[int], batch_size: int,
                         device: str) -> tuple[dict, list[int], float]:
    """(condition rows of the shard's samples on the CPU, their prompt indices, seconds spent encoding)."""
    prompts = read_prompts(spec)
    idx = prompt_indices(spec, positions, seeds, len(prompts)).tolist()
    _sync(device)
    t0 = time.perf_counter()
    parts = []
    for lo in range(0, len(idx), batch_size):
        cond = model.encode_prompts([prompts[i] for i in idx[lo:lo + batch_size]])
        parts.append({k: v.detach().cpu() for k, v in cond.items()})
    _sync(device)
    rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return rows, idx, time.perf_counter() - t0


def decode(model, x: torch.Tensor, device: str) -> tuple[torch.Tensor, float, float | None]:
    """(images [B, C, H, W] float32, seconds, peak CUDA memory of the decode in MiB or None) of latents x."""
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    images = model.decoder(x).float()
    _sync(device)
    seconds = time.perf_counter() - t0
    return images, seconds, torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None


def image_view(model):
    """What the metrics see of a latent model: its decoded images' shape and range."""
    from types import SimpleNamespace

    return SimpleNamespace(shape=tuple(model.image_shape), data_range=(-1.0, 1.0))
