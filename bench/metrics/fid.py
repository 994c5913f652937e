"""FID with clean-fid's numbers: ``legacy_tensorflow`` by default, ``clean`` on request.

Pipeline per batch of samples (see docs/metrics.md):
samples in ``data_range`` → uint8 as an image file holds them (:func:`quantize_uint8`, rounding)
→ clean-fid's resize for the mode → TorchScript Inception pool_3 → float64 streaming mean and
covariance → Fréchet distance to the reference statistics (clean-fid's precomputed npz, a given
npz, or statistics computed here from a dataset with :func:`compute_reference_stats`).

Both the Inception file and the reference statistics are looked up when the metric is built, so
a missing file fails at once, before any sampling.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.metrics.assets import atomic_write, cache_dir, find_inception, find_reference_stats, stats_file_name
from bench.metrics.edm_reference import check_protocol, is_edm_pickle
from bench.metrics.feature_fd import FrechetMetric
from bench.metrics.frechet import frechet_distance
from bench.metrics.inception import InceptionFeatures, quantize_uint8
from bench.metrics.reference import ReferenceStats
from bench.metrics.registry import MetricEntry, RunFacts, image_shape, require_res
from bench.metrics.stats import StreamingStats

__all__ = ["ENTRY", "compute_reference_stats", "make_fid", "inception_options", "inception_files"]


def _scipy_has_disp() -> bool:
    import scipy.linalg

    return "disp" in inspect.signature(scipy.linalg.sqrtm).parameters


def _cleanfid_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    from cleanfid.fid import frechet_distance as cleanfid_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # sqrtm(disp=False), gone in SciPy 1.18
        return float(cleanfid_frechet_distance(mu1, sigma1, mu2, sigma2))


def make_fid(dataset: str = "cifar10", res: int = 32, split: str = "train", mode: str = "legacy_tensorflow", *,
             ref_path: str | Path | None = None, reference: ReferenceStats | None = None,
             inception: str | Path | None = None, device: str | torch.device = "cpu", backend: str = "auto",
             data_range: tuple[float, float] = (0.0, 1.0), rounding: str = "round", batch_size: int = 100,
             seeds: str | None = None) -> FrechetMetric:
    """Build an FID accumulator (``update(samples)``, then ``compute() -> (fid, protocol)``).

    Args:
        dataset, res, split: which clean-fid reference statistics (``cifar10``, 32, ``train`` →
            ``cifar10_legacy_tensorflow_train_32.npz``).
        mode: ``'legacy_tensorflow'`` or ``'clean'``.
        ref_path: an explicit reference npz instead of the lookup.
        reference: reference statistics already in memory (overrides the two above).
        inception: the TorchScript Inception file or folder (default: looked up).
        device: where Inception runs.
        backend: ``'auto'``, ``'cleanfid'`` or ``'scorebench'`` (see :mod:`bench.metrics.inception`).
        data_range: the range of the samples (mapped to 0..255).
        rounding: ``'round'`` (PNG-like, default) or ``'truncate'`` (score_sde).
        batch_size: images per Inception call.
        seeds: the samples' seeds, copied into the protocol.

    Raises:
        MissingAssetError: where the Inception file or the reference statistics are missing.
    """
    weights = find_inception(inception)  # both lookups first: fail fast, before loading anything
    if reference is None:
        path = find_reference_stats(dataset, res, split, mode, path=ref_path)
        given = f"{dataset}/{split}/{res}" if ref_path is None else "given file"
        reference = ReferenceStats.load(path, "fid", {"mode": mode}, reference_dataset=given)
    net = InceptionFeatures(mode, weights, device=device, backend=backend, batch_size=batch_size)
    use_cleanfid_fd = net.backend == "cleanfid" and _scipy_has_disp()
    protocol = {**net.protocol(), "quantization": f"uint8, {rounding}", "data_range": list(data_range),
                "frechet": "cleanfid.fid.frechet_distance" if use_cleanfid_fd else "scorebench eigh (float64)",
                "seeds": seeds}
    return FrechetMetric("fid", net, reference, protocol,
                         prepare=partial(quantize_uint8, data_range=data_range, rounding=rounding),
                         frechet=_cleanfid_frechet if use_cleanfid_fd else frechet_distance)


def compute_reference_stats(images: Iterable[Tensor], dataset: str, res: int | str, split: str,
                            mode: str = "legacy_tensorflow", *, inception: str | Path | None = None,
                            device: str | torch.device = "cpu", backend: str = "auto",
                            data_range: tuple[float, float] = (0.0, 1.0), rounding: str = "round",
                            kid: bool = False, out: str | Path | None = None) -> Path:
    """Compute reference statistics from a dataset and cache them in the project's cache.

    The file is written as ``$SCOREBENCH_CACHE/stats/{dataset}_{mode}_{split}_{res}.npz`` (where the
    FID lookup finds it) unless ``out`` is given; ``kid=True`` also writes the features to the
    ``_kid.npz`` companion that KID reads.

    Args:
        images: batches [B, C, H, W], uint8 or float in ``data_range``.
        dataset, res, split: the names the file is stored under.
        mode, inception, device, backend, data_range, rounding: as for :func:`make_fid`.
        kid: also store the raw features for KID.
        out: an explicit output path.

    Returns:
        The path of the written statistics.
    """
    net = InceptionFeatures(mode, inception, device=device, backend=backend)
    stats, feats = StreamingStats(), []
    for batch in images:
        f = net(quantize_uint8(batch, data_range, rounding))
        stats.update(f)
        if kid:
            feats.append(f.cpu().numpy())
    path = Path(out) if out is not None else cache_dir() / "stats" / stats_file_name(dataset, res, split, mode)
    stats.save(path, source=f"computed by scorebench from {dataset}/{split}", mode=mode, backend=net.backend,
               feature_network_sha256=net.protocol()["feature_network_sha256"])
    if kid:
        kid_path = path.with_name(path.name[: -len(".npz")] + "_kid.npz")
        atomic_write(kid_path, lambda fh: np.savez(fh, feats=np.concatenate(feats)))
    return path


def inception_options(facts: RunFacts) -> dict:
    """Options of ``fid`` and ``kid`` for a run: the data section's ``dataset``, ``res`` (default: the
    samples' size), ``fid_split``, ``mode``, ``ref_path``, ``inception``."""
    data = facts.data
    return {"dataset": data.get("dataset", "cifar10"), "res": data.get("res", facts.shape[-1]),
            "split": data.get("fid_split", "train"), "mode": data.get("mode", "legacy_tensorflow"),
            "ref_path": data.get("ref_path"), "inception": data.get("inception"),
            "data_range": facts.data_range, "device": facts.device, "seeds": facts.seeds}


def inception_files(data: dict, kid: bool = False) -> dict[str, Path]:
    """The Inception file and the reference statistics (KID: features) a run's ``data`` section names (its
    ``res`` filled with the samples' size: :func:`~bench.metrics.registry.with_res`)."""
    res = data.get("res") if data.get("ref_path") else require_res(data)  # res names the file unless ref_path does
    mode = data.get("mode", "legacy_tensorflow")
    reference = find_reference_stats(data.get("dataset", "cifar10"), res, data.get("fid_split", "train"), mode,
                                     path=data.get("ref_path"), kid=kid)
    if is_edm_pickle(reference):  # EDM2's statistics: of FID's protocol, and no features for KID / prdc
        if kid:
            raise ValueError(f"{reference}: field 'feats' is missing (EDM2's statistics hold mu and sigma; KID and "
                             "prdc need reference features)")
        check_protocol(reference, "fid", mode=mode)
    return {"inception": find_inception(data.get("inception")), "reference": reference}


ENTRY = MetricEntry(
    name="fid", summary="clean-fid's FID (TF-Inception pool_3, legacy_tensorflow by default)", build=make_fid,
    options=inception_options, applies=image_shape, files=inception_files, reads_data=True)
