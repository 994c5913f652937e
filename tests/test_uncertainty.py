"""Uncertainty of every sample-based metric: a jackknife over seed groups that survives sharding.

The interval must not depend on batch size, shard size or merge order (groups are seed mod 10);
for a mean it must equal the textbook formula; on an exact mixture the stated errors must match the
spread over independent seed sets (the full measurement: scripts/uncertainty_coverage.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.metrics import SAMPLE_METRICS, make_metric
from bench.metrics.uncertainty import GROUPS, jackknife
from bench.records import metric_entry
from tests.test_metric_state import _case, _mixture, _rel, _round_trip, inception, results  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:DeprecationWarning")


def _run(name, opts, x, ids, batch):
    metric = make_metric(name, **opts)
    for i in range(0, len(x), batch):
        metric.update(x[i: i + batch], ids[i: i + batch])
    return metric


# FID is the same FrechetMetric as fd_digits / fd_fashion / fd_exact on 2048-d features, where every
# jackknife replicate is a 2048-d eigenvalue problem (seconds on a CPU): checked once, below.
# clip_score needs prompts with its samples: tested in test_clip_score.py.
@pytest.mark.parametrize("name", sorted(set(SAMPLE_METRICS) - {"fid", "clip_score"}))
def test_uncertainty_independent_of_batches_and_shards(name, inception):  # noqa: F811
    opts, x = _case(name, inception)
    ids = torch.arange(100, 100 + len(x))
    one = results(name, _run(name, opts, x, ids, 16))
    p7 = results(name, _run(name, opts, x, ids, 7))
    merged = make_metric(name, **opts)
    for lo, hi in ((37, 60), (0, 23), (23, 37)):
        merged.merge(_round_trip(_run(name, opts, x[lo:hi], ids[lo:hi], 5).state()))
    pm = results(name, merged)
    blind = make_metric(name, **opts)
    blind.update(x)
    blind = results(name, blind)
    for column, (value, protocol) in one.items():
        u = protocol["uncertainty"]
        assert u["method"].startswith("jackknife") and u["groups"] == GROUPS and sum(u["group_sizes"]) == len(x)
        assert u["stderr"] > 0 and u["interval"][0] < value < u["interval"][1] and u["level"] == 0.95
        # Float32 networks (fd_digits, fd_fashion) give features that move at 1e-7 with the batch size; the
        # standard error, a difference of replicates, magnifies that to ~1e-8. A batch- or shard-dependent
        # grouping would change it at order one.
        tol = 1e-6
        assert _rel(p7[column][1]["uncertainty"]["stderr"], u["stderr"]) <= tol
        assert _rel(pm[column][1]["uncertainty"]["stderr"], u["stderr"]) <= tol
        assert all(_rel(a, b) <= tol for a, b in zip(pm[column][1]["uncertainty"]["interval"], u["interval"]))
        # The record entry carries it beside the value; without seeds there is none, and it says why.
        entry = metric_entry(value, protocol)
        assert entry["uncertainty"] == u and "uncertainty" not in entry["protocol"]
        assert blind[column][1]["uncertainty"]["stderr"] is None
        assert "without seeds" in blind[column][1]["uncertainty"]["reason"]


def test_fid_has_a_jackknife_interval(inception):  # noqa: F811
    opts, x = _case("fid", inception)
    value, protocol = _run("fid", opts, x, torch.arange(len(x)), 30).compute()
    u = protocol["uncertainty"]
    assert u["method"].startswith("jackknife") and len(u["replicates"]) == GROUPS and u["stderr"] > 0
    assert u["interval"][0] < value < u["interval"][1]
    # Each replicate is the Fréchet distance without one seed group: recomputed here from scratch.
    from bench.metrics.frechet import frechet_distance
    from bench.metrics.stats import StreamingStats

    metric = make_metric("fid", **opts)
    keep = torch.arange(len(x)) % GROUPS != 3
    metric.update(x[keep], torch.arange(len(x))[keep])
    s = metric.stats
    again = frechet_distance(s.mean, s.covariance, metric.reference.mu, metric.reference.sigma)
    assert isinstance(s, StreamingStats) and _rel(u["replicates"][3], again) <= 1e-9


def test_jackknife_of_a_mean_is_the_standard_error_of_group_means():
    """For equal groups the delete-one-group jackknife of a mean is sd(group means)/√K."""
    mixture = _mixture()
    x = mixture.sample_data(200, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(200)
    metric = make_metric("loglik_exact", model=mixture)
    metric.update(x, ids)
    value, protocol = metric.compute()
    logp = mixture.log_prob_data(x.double()).double().numpy()
    group_means = np.array([logp[ids.numpy() % GROUPS == g].mean() for g in range(GROUPS)])
    assert value == pytest.approx(logp.mean(), rel=1e-12)
    se = group_means.std(ddof=1) / math.sqrt(GROUPS)
    assert protocol["uncertainty"]["stderr"] == pytest.approx(se, rel=1e-10)
    from scipy.stats import t

    half = t.ppf(0.975, GROUPS - 1) * se
    assert protocol["uncertainty"]["interval"] == pytest.approx([value - half, value + half], rel=1e-10)


def test_jackknife_edge_cases():
    assert jackknife(1.0, [1.0], [5])["stderr"] is None
    u = jackknife(2.0, [1.0, 3.0], [4, 4])
    assert u["stderr"] == pytest.approx(math.sqrt(0.5 * 2.0)) and u["jackknife_bias"] == pytest.approx(0.0)


def test_distance_intervals_stay_above_zero():
    """Issue 28: a distance's interval is the t interval on log θ from the jackknife of log replicates,
    θ·exp(±t·SE_log): above 0 where θ ± t·SE would go below it; SE itself is still the linear jackknife's."""
    from scipy.stats import t

    replicates = [0.2, 0.9, 0.35, 1.6, 0.5, 0.25, 1.1, 0.3, 0.7, 0.45]
    u = jackknife(0.5, replicates, [10] * 10, positive=True)
    k = len(replicates)
    logs = np.log(replicates)
    se_log = math.sqrt((k - 1) / k * ((logs - logs.mean()) ** 2).sum())
    half = t.ppf(0.975, k - 1)
    assert u["log_stderr"] == pytest.approx(se_log, rel=1e-12)
    assert u["interval"] == pytest.approx([0.5 * math.exp(-half * se_log), 0.5 * math.exp(half * se_log)], rel=1e-12)
    linear = jackknife(0.5, replicates, [10] * 10)
    assert linear["interval"][0] < 0 < u["interval"][0] < 0.5 < u["interval"][1]
    assert u["stderr"] == linear["stderr"] and "log(value)" in u["method"]
    # A value or replicate of exactly 0 has no log: the linear interval, cut at 0, and the method says so.
    zero = jackknife(0.5, [0.0, *replicates[1:]], [10] * 10, positive=True)
    assert zero["interval"][0] == 0.0 and "cut at 0" in zero["method"]


@pytest.mark.parametrize("name", ["fd_exact", "sw2_exact", "fd_digits"])
def test_distances_near_their_floor_have_positive_intervals(name):
    """Exact mixture samples (fd_exact, sw2_exact near 0) and digits-like images: every 95 % interval of
    these distances lies above 0 (for fd_exact the symmetric one, value ± t·stderr, reaches below it)."""
    from scipy.stats import t

    mixture = _mixture()
    below = 0
    for s in range(12):
        g = torch.Generator().manual_seed(2000 + s)
        if name == "fd_digits":
            opts, x = {}, torch.rand(60, 1, 8, 8, generator=g)
        else:
            opts, x = {"model": mixture}, mixture.sample_data(60, generator=g)
        value, protocol = _run(name, opts, x, torch.arange(60 * s, 60 * (s + 1)), 60).compute()
        u = protocol["uncertainty"]
        assert 0 < u["interval"][0] < value < u["interval"][1], (name, value, u["interval"])
        below += value - t.ppf(0.975, GROUPS - 1) * u["stderr"] < 0
    if name == "fd_exact":
        assert below > 0, "no set whose symmetric interval crosses 0: the case is not tested"


def test_execute_run_records_the_intervals():
    """``execute_run`` (a whole run in this process: scripts/uncertainty_coverage.py's path) merges its
    shards into an ok record whose distances have intervals above 0."""
    import dataclasses

    from bench.execute import execute_run
    from bench.grid import load_grid
    from tests.conftest import ROOT

    grid = load_grid(ROOT / "grids" / "quickstart.yaml", {"device": "cpu"})
    run = next(r for r in grid.runs if r.model_name == "mixture_vp" and r.solver == "pf_heun")
    run = dataclasses.replace(run, seeds="0-39", num_samples=40, batch_size=20, shard_size=20, save_samples=0)
    record, _ = execute_run(run, progress=False)
    assert record["status"] == "ok", record["message"]
    assert record["shards"]["merged"] == [0, 1]
    for m in ("fd_exact", "sw2_exact"):
        lo, hi = record["metrics"][m]["uncertainty"]["interval"]
        assert 0 < lo < record["metrics"][m]["value"] < hi


def test_stated_errors_match_the_spread_over_seed_sets():
    """Exact mixture samples, distorted as a biased sampler would (scaled by 1.15, shifted by 0.05), on 60
    disjoint seed sets of 200: the mean stated standard error of each exact metric is within 30 % of the
    standard deviation of its values over the sets, and ≥ 85 % of the 95 % intervals contain their mean
    (the full measurement, 200 sets of real sampler runs, is in docs/metrics.md)."""
    mixture = _mixture()
    sets, n = 60, 200
    rows: dict[str, list] = {m: [] for m in ("fd_exact", "sw2_exact", "loglik_exact")}
    for s in range(sets):
        x = mixture.sample_data(n, generator=torch.Generator().manual_seed(1000 + s)) * 1.15 + 0.05
        ids = torch.arange(s * n, (s + 1) * n)
        for m in rows:
            metric = make_metric(m, model=mixture, **({"n_projections": 64} if m == "sw2_exact" else {}))
            metric.update(x, ids)
            value, protocol = metric.compute()
            u = protocol["uncertainty"]
            rows[m].append((value, u["stderr"], *u["interval"]))
    for m, r in rows.items():
        value, se, lo, hi = np.array(r).T
        ratio = se.mean() / value.std(ddof=1)
        cover = ((lo <= value.mean()) & (value.mean() <= hi)).mean()
        assert 0.7 < ratio < 1.3 and cover >= 0.85, (m, ratio, cover)
