"""KID (kernel Inception distance) with clean-fid's estimator.

clean-fid's ``kernel_distance(feats1, feats2)``: the unbiased MMD² with the cubic polynomial
kernel k(x, y) = (xᵀy / D + 1)³, averaged over ``num_subsets`` = 100 random subsets of size
m = min(N_ref, N_gen, 1000) drawn without replacement, generated subset first, from NumPy's
legacy global RNG. Here the subsets come from ``np.random.RandomState(seed)`` (the same stream as
``np.random.seed(seed)`` before clean-fid's call) and the sums are float64; clean-fid sums in the
features' float32, which moves KID in about the 6th significant digit.

KID needs the features themselves, not just their moments: generated features are kept (float32,
N × 2048, as clean-fid keeps them: 8 KiB a sample, so a shard's :meth:`KID.state` is that big and
at most ``max_generated`` samples, default 100 000 = 0.8 GB, are accepted). With sample ids (the
run's seeds), the subsets are drawn over the features ordered by id, so merged shards give the same
value as one pass in any order; without ids, in the order they were added. The reference features
come from clean-fid's ``{dataset}_{mode}_{split}_{res}_kid.npz`` (``feats``) or from
:func:`~bench.metrics.fid.compute_reference_stats` with ``kid=True``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.metrics.assets import find_inception, find_reference_stats
from bench.metrics.feature_store import FeatureStore, KeepsFeatures
from bench.metrics.fid import inception_files, inception_options
from bench.metrics.inception import InceptionFeatures, file_sha256, quantize_uint8
from bench.metrics.registry import MetricEntry, image_shape

__all__ = ["ENTRY", "KID", "kernel_distance"]


def kernel_distance(feats_ref: np.ndarray, feats_gen: np.ndarray, num_subsets: int = 100,
                    max_subset_size: int = 1000, seed: int = 0) -> float:
    """clean-fid's KID estimator (argument order as ``cleanfid.fid.kernel_distance``), float64 sums.

    Args:
        feats_ref: [N₁, D] reference features.
        feats_gen: [N₂, D] generated features.
        num_subsets: number of random subsets averaged.
        max_subset_size: largest subset size m.
        seed: seed of the ``RandomState`` that draws the subsets.
    """
    feats_ref, feats_gen = np.asarray(feats_ref, np.float64), np.asarray(feats_gen, np.float64)
    d = feats_ref.shape[1]
    m = min(feats_ref.shape[0], feats_gen.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {feats_ref.shape[0]} and {feats_gen.shape[0]}")
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = feats_gen[rng.choice(feats_gen.shape[0], m, replace=False)]
        y = feats_ref[rng.choice(feats_ref.shape[0], m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        total += (a.sum() - np.trace(a)) / (m - 1) - b.sum() * 2 / m
    return float(total / num_subsets / m)


def _cleanfid_kernel_distance(feats_ref: np.ndarray, feats_gen: np.ndarray, num_subsets: int,
                              max_subset_size: int, seed: int) -> float:
    from cleanfid.fid import kernel_distance as cleanfid_kernel_distance

    state = np.random.get_state()  # clean-fid draws from the global RNG: seed it, then restore it
    try:
        np.random.seed(seed)
        return float(cleanfid_kernel_distance(feats_ref, feats_gen, num_subsets, max_subset_size))
    finally:
        np.random.set_state(state)


class KID(KeepsFeatures):
    """KID accumulator: ``update(samples)``, then ``compute() -> (kid, protocol)``.

    Args:
        dataset, res, split, mode: which clean-fid KID features (``..._kid.npz``) to compare with.
        ref_path: an explicit reference npz with ``feats``.
        inception, device, backend, data_range, rounding, batch_size, seeds: as for
            :func:`~bench.metrics.fid.make_fid`.
        num_subsets, max_subset_size, subset_seed: the estimator's settings.
        max_generated: most generated samples accepted (the features are kept: 8 KiB each).

    Raises:
        MissingAssetError: where the Inception file or the reference features are missing.
    """

    name = "kid"

    def __init__(self, dataset: str = "cifar10", res: int = 32, split: str = "train",
                 mode: str = "legacy_tensorflow", *, ref_path: str | Path | None = None,
                 inception: str | Path | None = None, device: str | torch.device = "cpu", backend: str = "auto",
                 data_range: tuple[float, float] = (0.0, 1.0), rounding: str = "round", batch_size: int = 100,
                 num_subsets: int = 100, max_subset_size: int = 1000, subset_seed: int = 0,
                 seeds: str | None = None, max_generated: int = 100_000) -> None:
        weights = find_inception(inception)
        path = find_reference_stats(dataset, res, split, mode, path=ref_path, kid=True)
        with np.load(path) as f:
            self.ref_feats = f["feats"]
        self.net = InceptionFeatures(mode, weights, device=device, backend=backend, batch_size=batch_size)
        self.prepare = partial(quantize_uint8, data_range=data_range, rounding=rounding)
        self.settings = (num_subsets, max_subset_size, subset_seed)
        self.store = FeatureStore(self.name, max_generated)
        self._protocol = {
            **self.net.protocol(), "quantization": f"uint8, {rounding}", "data_range": list(data_range),
            "reference_file": path.name, "reference_path": str(path), "reference_sha256": file_sha256(path),
            "reference_dataset": f"{dataset}/{split}/{res}", "num_subsets": num_subsets,
            "max_subset_size": max_subset_size, "subset_seed": subset_seed, "seeds": seeds,
            "kernel_distance": ("cleanfid.fid.kernel_distance" if self.net.backend == "cleanfid"
                                else "scorebench (float64)"),
        }

    def update(self, samples: Tensor, ids: Tensor | None = None) -> None:
        """Add a batch of generated samples [B, C, H, W] with their ids (seeds) [B], if known."""
        self.store.add(self.net(self.prepare(samples)), ids)

    def compute(self) -> tuple[float, dict]:
        gen, ids = self.store.ordered()  # one order for any sharding: by sample id
        gen = gen.numpy()
        fn = _cleanfid_kernel_distance if self.net.backend == "cleanfid" else kernel_distance
        value = fn(self.ref_feats, gen, *self.settings)
        # jackknife: the same estimator (same subset seed) without each seed group in turn
        unc = self.group_jackknife(value, ids, lambda keep: fn(self.ref_feats, gen[keep.numpy()], *self.settings))
        return value, {"metric": self.name, **self._protocol, "num_generated": gen.shape[0],
                       "num_reference": int(self.ref_feats.shape[0]), "uncertainty": unc}


ENTRY = MetricEntry(
    name="kid", summary="clean-fid's KID (cubic-kernel MMD² in TF-Inception features, 100 subsets)", build=KID,
    options=inception_options, applies=image_shape, files=partial(inception_files, kid=True), reads_data=True,
    state_bytes=4 * 2048, max_generated=100_000)
