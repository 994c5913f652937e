"""Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020) from
k-nearest-neighbour balls in a feature space.

With real features X (N) and generated features Y (M), and NND_k(z) the distance from a point to its
k-th nearest neighbour in its own set (itself excluded):

* precision = (1/M) Σ_j 1[∃ i: ‖Y_j − X_i‖ < NND_k(X_i)]   (generated samples inside the real manifold)
* recall    = (1/N) Σ_i 1[∃ j: ‖X_i − Y_j‖ < NND_k(Y_j)]   (real samples inside the generated manifold)
* density   = 1/(k M) Σ_j Σ_i 1[‖Y_j − X_i‖ < NND_k(X_i)]
* coverage  = (1/N) Σ_i 1[∃ j: ‖X_i − Y_j‖ < NND_k(X_i)]

Strict inequalities and the k-th neighbour excluding the point itself, as the reference
implementation of Naeem et al. (the ``prdc`` package: ``compute_prdc``) computes them; the papers'
k: 3 for precision/recall (Kynkäänniemi et al.), 5 for density/coverage (Naeem et al.), both options.
Distances are Euclidean, in float64, computed in blocks of rows so that no N × M matrix is ever held:
a block of ``block`` rows against all columns (``block`` · max(N, M) doubles; the default keeps that
at 32 MiB for 50 000 references).

The generated features are kept as mergeable state (:class:`~bench.metrics.feature_store.FeatureStore`:
4·D bytes a sample); the uncertainty is the jackknife over the seed groups (each replicate drops the
generated samples of one group, re-deriving their balls for recall).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.metrics.dinov2 import DINOv2Features, check_data, fd_dinov2_options, find_dinov2, find_dinov2_reference
from bench.metrics.feature_store import FeatureStore, KeepsFeatures
from bench.metrics.fid import inception_files, inception_options
from bench.metrics.inception import InceptionFeatures, file_sha256, quantize_uint8
from bench.metrics.registry import MetricEntry, image_shape, positive_ints
from bench.metrics.uncertainty import GROUPS, seed_groups

__all__ = ["ENTRY", "ENTRY_DINOV2", "PRDC", "VALUES", "knn_radii", "make_prdc", "make_prdc_dinov2", "prdc",
           "radii_without_groups"]

VALUES = ("precision", "recall", "density", "coverage")
BLOCK_ELEMENTS = 2**22  # doubles in one block of the distance matrix (32 MiB)


def _block_rows(n_cols: int, block: int | None) -> int:
    return block or max(1, BLOCK_ELEMENTS // max(n_cols, 1))


def _blocks(n: int, rows: int):
    for lo in range(0, n, rows):
        yield lo, min(lo + rows, n)


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances [len(a), len(b)] through ‖a‖² + ‖b‖² − 2 a·b (one matrix product, as
    scikit-learn's ``euclidean_distances`` that ``prdc`` calls), whatever the block's size."""
    return torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist")


def knn_radii(x: Tensor, ks: tuple[int, ...], block: int | None = None) -> dict[int, Tensor]:
    """Distance from each point of ``x`` [N, D] (float64) to its k-th nearest other point, for every k of
    ``ks`` (each < N), in blocks of ``block`` rows (default: :data:`BLOCK_ELEMENTS` / N)."""
    kmax = max(ks)
    if kmax >= x.shape[0]:
        raise ValueError(f"k = {kmax} needs more than {kmax} points, have {x.shape[0]}")
    out = {k: torch.empty(x.shape[0], dtype=torch.float64) for k in ks}
    for lo, hi in _blocks(x.shape[0], _block_rows(x.shape[0], block)):
        nearest = _distances(x[lo:hi], x).topk(kmax + 1, dim=1, largest=False).values  # column 0: itself
        for k in ks:
            out[k][lo:hi] = nearest[:, k]
    return out


def _ball_counts(real: Tensor, real_radius: Tensor, fake: Tensor, block: int | None,
                 groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """For each fake point: how many real balls hold it [M]; for each real point: the distance to its nearest
    fake point [N] — or, with the fake points' seed ``groups`` [M], to its nearest fake point of each group
    [N, GROUPS] (inf for an empty group)."""
    count = torch.zeros(fake.shape[0], dtype=torch.int64)
    members = None if groups is None else [torch.nonzero(groups == g).flatten() for g in range(GROUPS)]
    nearest = torch.full((real.shape[0],) if groups is None else (real.shape[0], GROUPS), math.inf,
                         dtype=torch.float64)
    for lo, hi in _blocks(real.shape[0], _block_rows(fake.shape[0], block)):
        d = _distances(real[lo:hi], fake)  # [b, M]
        count += (d < real_radius[lo:hi, None]).sum(0)
        if members is None:
            nearest[lo:hi] = d.min(1).values
        else:
            for g, idx in enumerate(members):
                if len(idx):
                    nearest[lo:hi, g] = d[:, idx].min(1).values
    return count, nearest


def _recall(real: Tensor, fake: Tensor, fake_radius: Tensor, block: int | None) -> Tensor:
    """bool [N]: real point i lies in some fake ball (‖X_i − Y_j‖ < r_j), for radii ``fake_radius`` [M]; or
    bool [R, N] for R sets of radii [R, M] at once (−inf: no ball)."""
    radii = fake_radius if fake_radius.dim() == 2 else fake_radius[None]
    inside = torch.zeros(radii.shape[0], real.shape[0], dtype=torch.bool)
    for lo, hi in _blocks(real.shape[0], _block_rows(fake.shape[0], block)):
        d = _distances(real[lo:hi], fake)
        for r in range(radii.shape[0]):
            inside[r, lo:hi] = (d < radii[r][None, :]).any(1)
    return inside if fake_radius.dim() == 2 else inside[0]


def radii_without_groups(x: Tensor, groups: Tensor, k: int, block: int | None = None, extra: int = 16) -> Tensor:
    """[GROUPS, N]: for every seed group g, the distance from each point of ``x`` [N, D] outside g to its k-th
    nearest other point outside g (−inf for the points of g), as :func:`knn_radii` on ``x[groups != g]``
    would give — from one pass: each point's k + 1 + ``extra`` nearest (itself included) with their groups,
    and a direct computation for the rare point whose list holds too few points outside some group."""
    n = x.shape[0]
    out = torch.full((GROUPS, n), -math.inf, dtype=torch.float64)
    width = min(k + 1 + extra, n)
    for lo, hi in _blocks(n, _block_rows(n, block)):
        near = _distances(x[lo:hi], x).topk(width, dim=1, largest=False)  # sorted; itself among the first
        near_groups = groups[near.indices]  # [b, width]
        for g in range(GROUPS):
            rows = torch.nonzero(groups[lo:hi] != g).flatten()
            if not len(rows):
                continue
            outside = near_groups[rows] != g
            rank = outside.cumsum(1)  # how many points outside g up to each position (itself counted)
            found = rank[:, -1] >= k + 1
            pos = (rank >= k + 1).to(torch.int8).argmax(1)  # the position of the (k + 1)-th, itself included
            vals = near.values[rows].gather(1, pos[:, None])[:, 0]
            out[g, lo + rows[found]] = vals[found]
            for r in rows[~found].tolist():  # too few in the list: the distances to every point outside g
                keep = groups != g
                if int(keep.sum()) <= k:
                    continue  # g's complement has no k-th neighbour (that replicate is not computed)
                out[g, lo + r] = _distances(x[lo + r: lo + r + 1], x[keep]).sort(1).values[0, k]
    return out


def prdc(real, fake, k_pr: int = 3, k_dc: int = 5, block: int | None = None) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` [M, D] against ``real`` [N, D] (module docstring)."""
    real, fake = (torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (real, fake))
    real_r = knn_radii(real, (k_pr, k_dc), block)
    fake_r = knn_radii(fake, (k_pr,), block)[k_pr]
    count_pr, _ = _ball_counts(real, real_r[k_pr], fake, block)
    count_dc, nearest = _ball_counts(real, real_r[k_dc], fake, block)
    return {"precision": float((count_pr > 0).double().mean()),
            "recall": float(_recall(real, fake, fake_r, block).double().mean()),
            "density": float(count_dc.double().mean() / k_dc),
            "coverage": float((nearest < real_r[k_dc]).double().mean())}


class PRDC(KeepsFeatures):
    """Accumulator of the four values: ``update(samples, ids)``, ``state()``, ``merge()``, and ``compute()``
    returning ``{value name: (value, protocol)}`` (a metric with several values: its registry entry's
    ``values``).

    Args:
        features: maps a prepared batch to features [B, D].
        prepare: maps a raw batch of samples to the feature network's input.
        reference: real features [N, D].
        protocol: fixed protocol fields (feature network, reference file, ...).
        name: the metric's name; the values are recorded as ``<value><suffix>``.
        suffix: appended to each value's name (``''`` for Inception features).
        k_pr, k_dc: neighbour ranks of precision/recall and of density/coverage.
        block: rows per distance block (default: 32 MiB blocks).
        max_generated: most generated samples accepted.
    """

    def __init__(self, features, prepare, reference: np.ndarray, protocol: dict, *, name: str = "prdc",
                 suffix: str = "", k_pr: int = 3, k_dc: int = 5, block: int | None = None,
                 max_generated: int = 100_000) -> None:
        for k_name, k in (("k_pr", k_pr), ("k_dc", k_dc)):
            if not isinstance(k, int) or k < 1:
                raise ValueError(f"{k_name} must be a positive integer, got {k!r}")
        self.name, self.suffix = name, suffix
        self.features, self.prepare = features, prepare
        self.reference = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
        self.k_pr, self.k_dc, self.block = k_pr, k_dc, block
        self.store = FeatureStore(name, max_generated)
        self._protocol = {**protocol, "k_pr": k_pr, "k_dc": k_dc,
                          "formulas": "Kynkaanniemi et al. 2019 (P/R), Naeem et al. 2020 (D/C); strict <, "
                                      "k-th neighbour excluding self, as prdc.compute_prdc",
                          "distances": "Euclidean, float64, in row blocks"}

    def update(self, samples: Tensor, ids: Tensor | None = None) -> None:
        """Add a batch of generated samples with their seeds ``ids`` [B] (for the order and the uncertainty)."""
        x = self.prepare(samples) if self.prepare is not None else samples
        with torch.no_grad():
            self.store.add(self.features(x), ids)

    def compute(self) -> dict[str, tuple[float, dict]]:
        """The four values and their jackknife over seed groups: each replicate drops one group of generated
        samples (precision, density: their ball counts; coverage: each real point's nearest generated point
        of every group; recall: the generated balls re-derived without the group), from one pass."""
        fake, ids = self.store.ordered()
        fake = fake.double()
        real, k_pr, k_dc = self.reference, self.k_pr, self.k_dc
        groups = None if ids is None else seed_groups(ids)
        real_r = knn_radii(real, (k_pr, k_dc), self.block)
        fake_r = knn_radii(fake, (k_pr,), self.block)[k_pr]
        count_pr, _ = _ball_counts(real, real_r[k_pr], fake, self.block)
        count_dc, nearest = _ball_counts(real, real_r[k_dc], fake, self.block, groups)
        if groups is None:
            radii, nearest_all = fake_r[None], nearest
        else:
            radii = torch.cat([fake_r[None], radii_without_groups(fake, groups, k_pr, self.block)])
            nearest_all = nearest.min(1).values
        inside = _recall(real, fake, radii, self.block)  # [1 + GROUPS, N]: all samples, then without each group

        values = {"precision": float((count_pr > 0).double().mean()),
                  "recall": float(inside[0].double().mean()),
                  "density": float(count_dc.double().mean() / k_dc),
                  "coverage": float((nearest_all < real_r[k_dc]).double().mean())}

        def without(value_name: str, g: int) -> float:
            keep = groups != g
            if value_name == "precision":
                return float((count_pr[keep] > 0).double().mean())
            if value_name == "density":
                return float(count_dc[keep].double().mean() / k_dc)
            if value_name == "recall":
                return float(inside[1 + g].double().mean())
            others = [h for h in range(GROUPS) if h != g]
            return float((nearest[:, others].min(1).values < real_r[k_dc]).double().mean())

        common = {"metric": self.name, **self._protocol, "num_generated": int(fake.shape[0]),
                  "num_reference": int(real.shape[0])}
        out = {}
        for value_name, value in values.items():
            unc = self.jackknife_by_group(value, ids, partial(without, value_name), min_size=k_pr + 1)
            out[f"{value_name}{self.suffix}"] = (value, {**common, "value": value_name, "uncertainty": unc})
        return out


def make_prdc(dataset: str = "cifar10", res: int = 32, split: str = "train", mode: str = "legacy_tensorflow", *,
              ref_path: str | Path | None = None, inception: str | Path | None = None,
              device: str | torch.device = "cpu", backend: str = "auto", data_range: tuple[float, float] = (0.0, 1.0),
              rounding: str = "round", batch_size: int = 100, k_pr: int = 3, k_dc: int = 5, block: int | None = None,
              seeds: str | None = None, max_generated: int = 100_000) -> PRDC:
    """``prdc`` in TF-Inception pool_3 features (FID's network and quantisation), against the reference
    features clean-fid stores for KID (``{dataset}_{mode}_{split}_{res}_kid.npz``, ``feats``).

    Raises:
        MissingAssetError: where the Inception file or the reference features are missing.
    """
    from bench.metrics.assets import find_inception, find_reference_stats

    weights = find_inception(inception)
    path = find_reference_stats(dataset, res, split, mode, path=ref_path, kid=True)
    with np.load(path) as f:
        reference = f["feats"]
    net = InceptionFeatures(mode, weights, device=device, backend=backend, batch_size=batch_size)
    protocol = {**net.protocol(), "quantization": f"uint8, {rounding}", "data_range": list(data_range),
                "reference_file": path.name, "reference_path": str(path), "reference_sha256": file_sha256(path),
                "reference_dataset": f"{dataset}/{split}/{res}", "seeds": seeds}
    return PRDC(net, partial(quantize_uint8, data_range=data_range, rounding=rounding), reference, protocol,
                k_pr=k_pr, k_dc=k_dc, block=block, max_generated=max_generated)


def make_prdc_dinov2(dataset: str = "cifar10", res: int = 32, split: str = "train", *,
                     dinov2: str | Path | None = None, dinov2_feats: str | Path | None = None,
                     dinov2_resize: str = "pil", device: str | torch.device = "cpu",
                     data_range: tuple[float, float] = (0.0, 1.0), rounding: str = "round", batch_size: int = 64,
                     k_pr: int = 3, k_dc: int = 5, block: int | None = None, seeds: str | None = None,
                     max_generated: int = 100_000) -> PRDC:
    """``prdc_dinov2``: the four values in DINOv2 ViT-L/14 CLS features (FD_DINOv2's network, resize and
    quantisation), against reference features of the same protocol (``dinov2_feats``, else
    ``stats/{dataset}_dinov2_{resize}_{split}_{res}_feats.npz``: :func:`~bench.metrics.dinov2.compute_dinov2_reference`
    with ``feats=True``); record columns ``precision_dinov2``, ``recall_dinov2``, ``density_dinov2``,
    ``coverage_dinov2``.

    Raises:
        MissingAssetError: the weights or the reference features are missing.
        ValueError: the features were computed with another resize.
    """
    weights = find_dinov2(dinov2)
    path = find_dinov2_reference({"dataset": dataset, "res": res, "fid_split": split, "dinov2_feats": dinov2_feats},
                                 dinov2_resize, feats=True)
    with np.load(path) as f:
        reference = f["feats"]
    net = DINOv2Features(weights, device, dinov2_resize, batch_size)
    protocol = {**net.protocol(), "quantization": f"uint8, {rounding}", "data_range": list(data_range),
                "reference_file": path.name, "reference_path": str(path), "reference_sha256": file_sha256(path),
                "reference_dataset": f"{dataset}/{split}/{res}" if dinov2_feats is None else "given file",
                "seeds": seeds}
    return PRDC(net, partial(quantize_uint8, data_range=data_range, rounding=rounding), reference, protocol,
                name="prdc_dinov2", suffix="_dinov2", k_pr=k_pr, k_dc=k_dc, block=block, max_generated=max_generated)


def _k_options(data: dict) -> dict:
    return {k: data[k] for k in ("k_pr", "k_dc") if k in data}


def _options(facts) -> dict:
    return {**inception_options(facts), **_k_options(facts.data)}


def _dinov2_options(facts) -> dict:
    opts = fd_dinov2_options(facts)
    del opts["dinov2_ref"]
    return {**opts, "dinov2_feats": facts.data.get("dinov2_feats"), **_k_options(facts.data)}


def _dinov2_files(data: dict) -> dict[str, Path]:
    return {"weights": find_dinov2(data.get("dinov2")),
            "reference": find_dinov2_reference(data, data.get("dinov2_resize", "pil"), feats=True)}


def _dinov2_check(data: dict) -> None:
    check_data(data)
    positive_ints("k_pr", "k_dc")(data)


ENTRY = MetricEntry(
    name="prdc", summary="precision, recall (k=3), density, coverage (k=5) in TF-Inception features",
    build=make_prdc, options=_options, applies=image_shape, files=partial(inception_files, kid=True),
    reads_data=True, state_bytes=4 * 2048, max_generated=100_000,
    values={v: False for v in VALUES}, keys=("k_pr", "k_dc"), check=positive_ints("k_pr", "k_dc"))

ENTRY_DINOV2 = MetricEntry(
    name="prdc_dinov2", summary="precision, recall (k=3), density, coverage (k=5) in DINOv2 ViT-L/14 features",
    build=make_prdc_dinov2, options=_dinov2_options, applies=image_shape, files=_dinov2_files, reads_data=True,
    state_bytes=4 * 1024, max_generated=100_000, values={f"{v}_dinov2": False for v in VALUES},
    keys=("dinov2", "dinov2_feats", "dinov2_resize", "k_pr", "k_dc"), check=_dinov2_check)
