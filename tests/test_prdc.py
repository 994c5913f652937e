"""Precision, recall, density and coverage: known answers, the reference package, blocks, the grid.

Known answers follow from the definitions (strict ``<``, k-th neighbour excluding the point itself):

* identical sets: every point lies in its own ball → precision = recall = coverage = 1, and exactly k
  points (itself and its k − 1 nearer neighbours) lie strictly inside each real ball → density = 1;
* disjoint sets far apart: 0, 0, 0, 0;
* the even points {0, 2, 4, 6, 8} of the real line points {0, …, 9} with k = 1: real balls have radius
  1 (strict: a ball holds only its centre), generated balls radius 2 → precision 1, recall 1 (9 is
  at distance 1 < 2 from 8), density 1, coverage 1/2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.metrics.prdc import PRDC, knn_radii, prdc


def test_identical_sets():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert prdc(x, x) == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_disjoint_sets():
    x = np.random.default_rng(1).normal(size=(120, 8))
    assert prdc(x, x + 100.0) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_a_subset_on_a_line():
    real = np.arange(10.0)[:, None]
    assert prdc(real, real[::2], k_pr=1, k_dc=1) == {"precision": 1.0, "recall": 1.0, "density": 1.0,
                                                      "coverage": 0.5}


def test_radii_in_blocks_equal_the_full_matrix():
    x = torch.as_tensor(np.random.default_rng(2).normal(size=(157, 5)))
    full = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").sort(1).values  # direct differences
    for block in (1, 10, 157, None):
        r = knn_radii(x, (3, 5), block)
        torch.testing.assert_close(r[3], full[:, 3], rtol=1e-13, atol=0)
        torch.testing.assert_close(r[5], full[:, 5], rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="k = 5 needs more than 5 points"):
        knn_radii(x[:5], (5,))


@pytest.mark.parametrize("extra", [0, 2, 16])
def test_radii_without_each_group_equal_the_radii_of_the_rest(extra):
    """One pass gives, for every seed group g, knn_radii of the points outside g (the jackknife's recall balls),
    also where a point's short list holds too few points outside g (extra = 0: direct computation)."""
    from bench.metrics.prdc import radii_without_groups

    x = torch.as_tensor(np.random.default_rng(5).normal(size=(83, 4)))
    groups = torch.as_tensor(np.random.default_rng(6).integers(0, 9, size=83))  # group 9 empty
    out = radii_without_groups(x, groups, 3, block=10, extra=extra)
    for g in range(10):
        keep = groups != g
        torch.testing.assert_close(out[g, keep], knn_radii(x[keep], (3,))[3], rtol=1e-13, atol=0)
        assert torch.isneginf(out[g, ~keep]).all()


@pytest.mark.parametrize("block", [None, 13])
def test_against_the_prdc_package(block):
    """``prdc.compute_prdc`` (Naeem et al.'s code, PyPI) with nearest_k = 3 (P/R) and 5 (D/C)."""
    compute_prdc = pytest.importorskip("prdc").compute_prdc
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(400, 16)), rng.normal(size=(350, 16)) * 1.2 + 0.2
    ours = prdc(real, fake, k_pr=3, k_dc=5, block=block)
    p3, p5 = compute_prdc(real, fake, nearest_k=3), compute_prdc(real, fake, nearest_k=5)
    expected = {"precision": p3["precision"], "recall": p3["recall"], "density": p5["density"],
                "coverage": p5["coverage"]}
    assert ours == pytest.approx(expected, abs=0, rel=1e-15), (ours, expected)
    assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1 and 0 < ours["coverage"] < 1


def test_accumulator_values_and_jackknife():
    """The accumulator gives prdc() on the features, and each jackknife replicate is the value without
    one seed group, recomputed from scratch (recall re-derives the generated balls)."""
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(90, 6)), rng.normal(size=(70, 6)) + 0.3
    metric = PRDC(lambda x: x, None, real, {}, k_pr=3, k_dc=5, block=11)
    ids = torch.arange(1000, 1070)
    for lo in range(0, 70, 16):
        metric.update(torch.as_tensor(fake[lo: lo + 16]), ids[lo: lo + 16])
    out = metric.compute()
    direct = prdc(real, fake.astype(np.float32).astype(np.float64))  # the store keeps float32 features
    assert {k: v for k, (v, _) in out.items()} == pytest.approx(direct, rel=1e-15)
    for g in range(10):  # every replicate: the values without group g, from scratch
        keep = (ids % 10 != g).numpy()
        without = prdc(real, fake.astype(np.float32).astype(np.float64)[keep])
        for name, (_, protocol) in out.items():
            assert protocol["uncertainty"]["replicates"][g] == pytest.approx(without[name], rel=1e-15), (g, name)
    for _, protocol in out.values():
        assert protocol["k_pr"] == 3 and protocol["k_dc"] == 5 and protocol["num_generated"] == 70


def test_prdc_in_dinov2_features(tmp_path, capsys):
    """``prdc_dinov2`` on images (a random small DINOv2 in the hub's format): the generated images equal to the
    reference images give 1/1/1/1, and other images give ``prdc.compute_prdc`` on the same network's features
    (k = 3 for P/R, 5 for D/C), with the values in between 0 and 1."""
    pytest.importorskip("transformers")
    compute_prdc = pytest.importorskip("prdc").compute_prdc
    from bench.metrics import make_metric
    from bench.metrics.dinov2 import DINOv2Features, compute_dinov2_reference
    from bench.metrics.inception import quantize_uint8
    from tests.test_dinov2 import hub_state
    from tests.test_fid import _images

    weights = tmp_path / "dinov2_tiny.pth"
    torch.save(hub_state(), weights)
    real, fake = _images(48, 20), _images(40, 21, shift=0.15)
    compute_dinov2_reference(real.split(16), tmp_path / "ref.npz", weights=weights, feats=True)
    opts = {"dinov2": str(weights), "dinov2_feats": str(tmp_path / "ref_feats.npz"), "block": 9}

    def values(images: torch.Tensor) -> dict:
        metric = make_metric("prdc_dinov2", **opts)
        for lo in range(0, len(images), 16):
            metric.update(images[lo: lo + 16], torch.arange(lo, min(lo + 16, len(images))))
        return {k: v for k, (v, _) in metric.compute().items()}, metric.compute()["precision_dinov2"][1]

    same, protocol = values(real)
    assert same == {"precision_dinov2": 1.0, "recall_dinov2": 1.0, "density_dinov2": 1.0, "coverage_dinov2": 1.0}
    assert protocol["dinov2_resize"] == "pil" and protocol["k_pr"] == 3 and protocol["k_dc"] == 5
    assert protocol["num_reference"] == 48 and protocol["reference_file"] == "ref_feats.npz"

    ours, _ = values(fake)
    net = DINOv2Features(weights)
    real_f, fake_f = (net(quantize_uint8(x, (0.0, 1.0))).numpy().astype(np.float64) for x in (real, fake))
    p3, p5 = compute_prdc(real_f, fake_f, nearest_k=3), compute_prdc(real_f, fake_f, nearest_k=5)
    expected = {"precision_dinov2": p3["precision"], "recall_dinov2": p3["recall"],
                "density_dinov2": p5["density"], "coverage_dinov2": p5["coverage"]}
    assert ours == pytest.approx(expected, abs=1e-12), (ours, expected)
    assert 0 < ours["precision_dinov2"] < 1 and 0 < ours["coverage_dinov2"] < 1
    with capsys.disabled():
        print(f"\nprdc_dinov2 vs prdc.compute_prdc (48 reference, 40 generated images): ours {ours}, "
              f"prdc {expected}")


MEMORY_SCRIPT = """
import resource, sys
import torch
torch.set_num_threads(1)
from bench.metrics.prdc import prdc
n = int(sys.argv[1])
g = torch.Generator().manual_seed(0)
real = torch.randn(n, 16, generator=g, dtype=torch.float64)
fake = torch.randn(n, 16, generator=g, dtype=torch.float64) + 0.1
prdc(real[:300], fake[:300])  # torch's lazily loaded pieces, before the measurement
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prdc(real, fake)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_distances_in_blocks_bound_the_memory():
    """prdc of 12 000 vs 12 000 points: the peak memory grows by a few 32 MiB blocks (measured 98–197 MiB on
    2026-12-07, as glibc's allocator happens to reuse them), not by the 12 000 × 12 000 distance matrix
    (1.1 GiB) that one matrix would take."""
    import os
    import subprocess
    import sys

    n = 12_000
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n)], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    growth_mib = float(out.stdout.strip().splitlines()[-1])
    full_mib = n * n * 8 / 2**20
    assert growth_mib < 8 * 32, (growth_mib, full_mib)  # at most eight blocks of 32 MiB; the full matrix: 1099 MiB
