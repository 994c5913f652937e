"""Inception Score (Salimans et al. 2016) from the same TorchScript TF-Inception file as FID.

IS = exp(E_x KL(p(y|x) ‖ p(y))), computed as the reference implementations do (improved-GAN's
``inception_score``, StyleGAN2-ADA's ``metrics/inception_score.py``): the N samples, in seed order,
are cut into 10 consecutive splits (split i: positions ⌊iN/10⌋ .. ⌊(i+1)N/10⌋ − 1); in each, p(y) is
the mean of the softmax rows and the score exp(mean_x Σ_y p(y|x) (log p(y|x) − log p(y))); the value is
the mean over splits (their standard deviation is recorded too, as the papers report it).

p(y|x) is the network's softmax over its 1008 outputs, called as StyleGAN does for IS:
``net(uint8 images, no_output_bias=True)`` (the original TF graph's softmax had no bias; the file's
forward resizes to 299 inside, as FID's ``legacy_tensorflow`` mode). The state keeps every sample's
probabilities (float32, 1008 × 4 bytes a sample) with its id, because the splits are by position.
Uncertainty: the jackknife over seed groups (each replicate: the same 10-split estimator without one
group's samples).
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.metrics.assets import find_inception
from bench.metrics.feature_store import FeatureStore, KeepsFeatures
from bench.metrics.inception import file_sha256, quantize_uint8
from bench.metrics.registry import MetricEntry, RunFacts, image_shape

__all__ = ["ENTRY", "InceptionScore", "inception_score"]

SPLITS = 10
CLASSES = 1008


def inception_score(probs: np.ndarray, splits: int = SPLITS) -> tuple[float, float]:
    """(mean, std) over ``splits`` consecutive splits of exp(mean KL(p(y|x) ‖ p(y))), float64."""
    p = np.asarray(probs, np.float64)
    n = p.shape[0]
    if n < splits:
        raise ValueError(f"the Inception Score needs at least {splits} samples (one per split), got {n}")
    scores = []
    for i in range(splits):
        part = p[i * n // splits: (i + 1) * n // splits]
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 · log 0 = 0
            kl = np.where(part > 0, part * (np.log(part) - np.log(part.mean(0, keepdims=True))), 0.0)
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


class InceptionScore(KeepsFeatures):
    """The ``inception_score`` accumulator (state: every sample's probabilities, float32 [N, 1008], and ids).

    Args:
        inception: the TorchScript Inception file or its folder (default: looked up).
        device: where it runs.
        data_range, rounding: the samples' range and their quantisation to uint8 (as FID).
        splits: number of splits (10 as the references).
        batch_size: images per network call.
        seeds: the samples' seeds, copied into the protocol.
        max_generated: most samples accepted (the probabilities are kept).
    """

    name = "inception_score"

    def __init__(self, *, inception: str | Path | None = None, device: str | torch.device = "cpu",
                 data_range: tuple[float, float] = (0.0, 1.0), rounding: str = "round", splits: int = SPLITS,
                 batch_size: int = 100, seeds: str | None = None, max_generated: int = 200_000) -> None:
        self.path = find_inception(inception)
        with warnings.catch_warnings():  # TorchScript: there is no other way to load it
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
            self.net = torch.jit.load(str(self.path), map_location=device).eval()
        self.device, self.splits, self.batch_size = device, splits, batch_size
        self.prepare = partial(quantize_uint8, data_range=data_range, rounding=rounding)
        self.store = FeatureStore(self.name, max_generated)
        self._protocol = {
            "feature_network": f"TorchScript Inception-v3 ({self.path.name}, softmax over {CLASSES} outputs, "
                               f"no output bias)", "feature_network_sha256": file_sha256(self.path),
            "resize": "inside the network (299, TF bilinear)", "quantization": f"uint8, {rounding}",
            "data_range": list(data_range), "splits": splits, "split_order": "by seed", "seeds": seeds}

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """uint8 images [B, 1|3, H, W] → p(y|x) [B, 1008], float32."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        out = [self.net(images[i: i + self.batch_size].to(self.device, torch.float32), no_output_bias=True)
               for i in range(0, images.shape[0], self.batch_size)]
        return torch.cat(out).float()

    def update(self, samples: Tensor, ids: Tensor | None = None) -> None:
        self.store.add(self.probabilities(self.prepare(samples)), ids)

    def compute(self) -> tuple[float, dict]:
        probs, ids = self.store.ordered()
        probs = probs.double().numpy()
        value, spread = inception_score(probs, self.splits)
        unc = self.group_jackknife(value, ids, lambda keep: inception_score(probs[keep.numpy()], self.splits)[0],
                                   min_size=self.splits)
        return value, {"metric": self.name, **self._protocol, "split_std": spread, "num_generated": len(probs),
                       "uncertainty": unc}


def _options(facts: RunFacts) -> dict:
    return {"inception": facts.data.get("inception"), "data_range": facts.data_range, "device": facts.device,
            "seeds": facts.seeds}


ENTRY = MetricEntry(
    name="inception_score", summary="Inception Score (TF-Inception softmax, 10 splits in seed order)",
    build=InceptionScore, options=_options, lower_is_better=False, applies=image_shape,
    files=lambda data: {"inception": find_inception(data.get("inception"))}, state_bytes=4 * CLASSES,
    max_generated=200_000)
