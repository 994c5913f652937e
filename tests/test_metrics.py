"""Streaming statistics, the Fréchet distance, the classifier FDs and the exact mixture metrics."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy.linalg
import torch

from bench.metrics import METRICS, compute_metric, make_metric
from bench.metrics.classifier import load_classifier
from bench.metrics.exact import wasserstein2_1d
from bench.metrics.frechet import frechet_distance
from bench.metrics.stats import StreamingStats
from models.gaussian import GaussianMixture
from models.sde import VPSDE
from tests.conftest import missing

# ---- streaming statistics ------------------------------------------------------------------------------


def test_streaming_stats_match_numpy_and_merge():
    rng = np.random.default_rng(0)
    x = rng.normal(1e3, 1.0, size=(500, 7)) + rng.normal(size=(1, 7))  # large mean, unit spread
    s = StreamingStats()
    for chunk in np.array_split(x, 9):
        s.update(chunk)
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(s.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    a, b = StreamingStats().update(x[:123]), StreamingStats().update(x[123:] + 0.0)
    a.merge(b)
    np.testing.assert_allclose(a.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    assert a.n == 500
    with pytest.raises(ValueError, match="dimension"):
        s.update(np.zeros((2, 3)))


def test_streaming_stats_round_trip(tmp_path):
    x = np.random.default_rng(1).normal(size=(20, 4))
    s = StreamingStats().update(x)
    s.save(tmp_path / "s.npz", source="test")
    mu, sigma, n = StreamingStats.load_moments(tmp_path / "s.npz")
    np.testing.assert_array_equal(mu, s.mean)
    np.testing.assert_array_equal(sigma, s.covariance)
    assert n == 20 and not list(tmp_path.glob("*.part"))


# ---- Fréchet distance ----------------------------------------------------------------------------------


def _random_cov(rng: np.random.Generator, d: int, eigenvalues: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * eigenvalues) @ q.T


def _frechet_mp(mu1, s1, mu2, s2, digits: int = 50) -> float:
    """High-precision reference: ‖Δμ‖² + Tr Σ₁ + Tr Σ₂ − 2 Σ √λ(Σ₁Σ₂), eigenvalues in 50 digits."""
    with mpmath.workdps(digits):
        a, b = mpmath.matrix(s1.tolist()), mpmath.matrix(s2.tolist())
        lam = mpmath.eig(a * b, left=False, right=False)
        tr = sum(mpmath.sqrt(mpmath.re(v)) if mpmath.re(v) > 0 else 0 for v in lam)
        diff = mpmath.matrix((mu1 - mu2).tolist())
        d2 = sum(v**2 for v in diff) + sum(a[i, i] + b[i, i] for i in range(a.rows)) - 2 * tr
        return float(d2)


@pytest.mark.parametrize("case", ["well_conditioned", "nearly_singular", "rank_deficient"])
def test_frechet_distance_matches_float64_reference(case):
    rng = np.random.default_rng({"well_conditioned": 0, "nearly_singular": 1, "rank_deficient": 2}[case])
    d = 12
    if case == "well_conditioned":
        e1, e2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    elif case == "nearly_singular":
        e1, e2 = np.logspace(0, -12, d), np.logspace(1, -10, d)
    else:
        e1, e2 = np.r_[rng.uniform(0.5, 2, 8), np.zeros(4)], np.r_[np.zeros(3), rng.uniform(0.5, 2, 9)]
    s1, s2 = _random_cov(rng, d, e1), _random_cov(rng, d, e2)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    expected = _frechet_mp(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    if case == "well_conditioned":  # clean-fid's own evaluation, the trace of sqrtm(Σ₁Σ₂)
        sqrtm = scipy.linalg.sqrtm(s1 @ s2)
        cleanfid = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrtm).real
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(cleanfid, rel=1e-10)


def test_frechet_distance_basic_properties():
    rng = np.random.default_rng(3)
    s = _random_cov(rng, 6, rng.uniform(0.1, 1, 6))
    mu = rng.normal(size=6)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-12)
    assert frechet_distance(mu, s, mu + 1, s) == pytest.approx(6.0, rel=1e-12)  # mean shift only
    # Scalar case: (μ₁−μ₂)² + (σ₁−σ₂)².
    assert frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu, s, mu[:3], s)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(mu * np.nan, s, mu, s)


# ---- classifier FDs ------------------------------------------------------------------------------------


def _split(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from models.datasets import DatasetNotFoundError, load_dataset

    try:
        ds = load_dataset({"digits": "digits", "fashion": "fashion_mnist"}[name], split)
    except DatasetNotFoundError as err:
        missing(str(err))
    return ds.to_model_range(data_range=(0.0, 1.0)), ds.labels


@pytest.mark.parametrize("name, minimum", [("digits", 0.97), ("fashion", 0.90)])
def test_shipped_classifier_accuracy(name, minimum):
    net, meta = load_classifier(name)
    x, y = _split(name, "test")
    with torch.no_grad():
        acc = sum((net(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(2000), y.split(2000))) / len(y)
    assert acc >= minimum
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-9)


def test_fd_digits_sanity_curve():
    """FD of the train set against its own statistics ≈ 0, growing monotonically with added noise."""
    x, _ = _split("digits", "train")
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    fds = [compute_metric("fd_digits", (x + s * noise).split(500))[0] for s in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert abs(fds[0]) < 1e-8
    assert all(a < b for a, b in zip(fds, fds[1:]))
    test_fd, protocol = compute_metric("fd_digits", _split("digits", "test")[0] * 2 - 1, data_range=(-1, 1))
    assert fds[2] < test_fd < fds[3]  # held-out digits sit between noise 0.1 and 0.2 (train features overfit)
    assert protocol["num_reference"] == len(x) and protocol["num_generated"] == 359
    assert protocol["feature_network"].startswith("digits_cnn.pt") and protocol["feature_network_sha256"]


# ---- exact mixture metrics -----------------------------------------------------------------------------


@pytest.fixture
def mixture() -> GaussianMixture:
    means = torch.tensor([[[0.5, -0.5], [0.2, 0.0]], [[-0.5, 0.5], [0.0, -0.3]]]).unsqueeze(1)  # [2, 1, 2, 2]
    return GaussianMixture(means, torch.tensor([0.2, 0.3]), VPSDE(), weights=torch.tensor([0.3, 0.7]))


def test_exact_metrics_on_exact_samples(mixture):
    x = mixture.sample_data(8000, generator=torch.Generator().manual_seed(5))
    fd, p_fd = compute_metric("fd_exact", x.split(3000), model=mixture)
    sw, p_sw = compute_metric("sw2_exact", x.split(3000), model=mixture, n_projections=64)
    ll, p_ll = compute_metric("loglik_exact", x.split(3000), model=mixture)
    assert 0 <= fd < 5e-3 and sw < 0.03
    assert ll == pytest.approx(mixture.log_prob_data(x).mean().item(), rel=1e-12)
    assert p_fd["num_generated"] == p_sw["num_reference"] == p_ll["num_generated"] == 8000
    assert p_sw["projection_seed"] == 0 and p_fd["reference"] == "exact mixture mean and covariance"
    shifted = [compute_metric(m, x + 0.3, model=mixture)[0] for m in ("fd_exact", "sw2_exact", "loglik_exact")]
    assert shifted[0] > 10 * fd and shifted[1] > 5 * sw and shifted[2] < ll


def test_fd_exact_of_a_gaussian_is_closed_form():
    g = GaussianMixture.isotropic(VPSDE(), mean=0.3, std=0.5, shape=(1, 2, 2))
    z = torch.randn(50000, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fd, _ = compute_metric("fd_exact", 0.4 + 0.6 * z, model=g)
    # N(0.4, 0.6²I) vs N(0.3, 0.5²I) in 4 dims: d² = 4·(0.1² + 0.1²), up to sampling error.
    assert fd == pytest.approx(0.08, abs=0.005)


def test_wasserstein2_1d_unequal_sizes():
    a = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    b = torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64)
    # Quantiles: a = 0 on (0, ½], 1 on (½, 1]; b = 0, ½, 1 on thirds → ∫ = (1/6)(½)² + (1/6)(½)².
    assert float(wasserstein2_1d(a, b)) == pytest.approx(1 / 12)
    assert float(wasserstein2_1d(a, a.flip(0))) == 0.0


def test_sw2_does_not_depend_on_batching(mixture):
    x = mixture.sample_data(1000, generator=torch.Generator().manual_seed(6))
    one = compute_metric("sw2_exact", x, model=mixture)[0]
    many = compute_metric("sw2_exact", x.split(77), model=mixture)[0]
    assert one == pytest.approx(many, rel=1e-12) and math.isfinite(one)


def test_sw2_jackknife_replicates_equal_a_fresh_sort_of_each_subset(mixture):
    """The replicates reuse one sort per direction (removing a group keeps each column sorted): each must
    equal W₂ computed from scratch on the samples without that group."""
    from bench.metrics.exact import SlicedW2
    from bench.metrics.uncertainty import GROUPS, seed_groups

    x = mixture.sample_data(300, generator=torch.Generator().manual_seed(7))
    ids = torch.arange(1000, 1300)
    m = SlicedW2(mixture, n_projections=32)
    m.update(x[:110], ids[:110])
    m.update(x[110:], ids[110:])
    value, protocol = m.compute()
    proj = x.reshape(300, -1).double() @ m.directions
    ref = m._reference(300)
    groups = seed_groups(ids)
    brute = [math.sqrt(float(wasserstein2_1d(proj[groups != g], ref).mean())) for g in range(GROUPS)]
    assert value == pytest.approx(math.sqrt(float(wasserstein2_1d(proj, ref).mean())), rel=1e-13)
    assert protocol["uncertainty"]["replicates"] == pytest.approx(brute, rel=1e-12)
    assert len(set(brute)) == GROUPS  # the groups differ: a replicate that ignored its group would fail


def test_registry_errors():
    assert {"fid", "kid", "fd_digits", "fd_fashion", "fd_exact", "sw2_exact", "loglik_exact"} <= set(METRICS)
    with pytest.raises(ValueError, match="unknown metric 'fdi'.*fid"):
        make_metric("fdi")
