"""The new metrics in a quickstart-sized grid: every one that applies to an image model, 1 vs 4 shards,
the report's columns, and the refusals at load (exit 2, one line).

The feature networks are stand-ins (a scripted random TF-Inception interface, a random small DINOv2 in
the hub's format) placed where the lookups find them (``$SCOREBENCH_CACHE``); the model is an exact
mixture of 3 × 8 × 8 'images', so ``fd_exact`` runs beside them.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

pytest.importorskip("transformers")

from bench.grid import parse_grid  # noqa: E402
from bench.metrics.assets import INCEPTION_FILE  # noqa: E402
from bench.records import read_records  # noqa: E402
from bench.report import build_report  # noqa: E402
from bench.run import main, run_grid  # noqa: E402
from tests.test_dinov2 import hub_state  # noqa: E402
from tests.test_fid import _StandInInception  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:DeprecationWarning")

METRICS = ["fid", "kid", "prdc", "prdc_dinov2", "inception_score", "fd_dinov2", "fd_exact"]


def _refs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.25 * torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)).clamp(0, 1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from bench.metrics.dinov2 import HUB_FILE, compute_dinov2_reference
    from bench.metrics.fid import compute_reference_stats

    root = tmp_path_factory.mktemp("cache")
    torch.manual_seed(123)
    torch.jit.script(_StandInInception().eval()).save(str(root / INCEPTION_FILE))
    torch.save(hub_state(), root / HUB_FILE)
    stats = root / "stats"
    compute_reference_stats(_refs(50, 1).split(25), "cifar10", 8, "train", inception=root, backend="scorebench",
                            kid=True, out=stats / "cifar10_legacy_tensorflow_train_8.npz")
    compute_dinov2_reference(_refs(50, 1).split(25), stats / "cifar10_dinov2_pil_train_8.npz", weights=root / HUB_FILE,
                             feats=True)
    return root


def _grid(shard_size: int, metrics=METRICS, shape=(3, 8, 8)) -> dict:
    return {"name": "new_metrics", "models": {"img": {"kind": "mixture", "shape": list(shape), "components": 3,
                                                      "scale": 0.5, "std": 0.2, "sde": {"kind": "vp"},
                                                      "data": {"res": 8, "k_pr": 3, "k_dc": 5}}},
            "eval": {"num_samples": 40, "batch_size": 10, "seeds": "0-39", "metrics": metrics, "device": "cpu",
                     "shard_size": shard_size},
            "sweeps": [{"solver": "ddim", "n_steps": [4, 8]}]}


def test_every_new_metric_one_vs_four_shards_and_the_report(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCOREBENCH_CACHE", str(cache))
    runs = {}
    for shards, size in ((1, 40), (4, 10)):
        grid = parse_grid(_grid(size), "new_metrics.yaml")
        assert {"fd_dinov2:weights", "fd_dinov2:reference", "prdc:inception", "inception_score:inception",
                "prdc_dinov2:weights", "prdc_dinov2:reference"} <= set(grid.runs[0].inputs)
        out = tmp_path / f"shards{shards}"
        run_grid(grid, out, report=False, progress=False)
        runs[shards] = read_records(out)
        assert all(r["status"] == "ok" and r["shards"]["count"] == shards for r in runs[shards].values())
    assert set(runs[1]) == set(runs[4]) and len(runs[1]) == 2  # shard size is not part of a run's identity
    columns = ["fid", "kid", "precision", "recall", "density", "coverage", "inception_score", "fd_dinov2", "fd_exact",
               "precision_dinov2", "recall_dinov2", "density_dinov2", "coverage_dinov2"]
    worst = 0.0
    for rid, one in runs[1].items():
        four = runs[4][rid]
        for c in columns:
            a, b = one["metrics"][c], four["metrics"][c]
            worst = max(worst, abs(a["value"] - b["value"]) / max(abs(a["value"]), 1e-300))
            assert a["value"] == pytest.approx(b["value"], rel=1e-9, abs=1e-12), (c, a["value"], b["value"])
            if a["uncertainty"]["stderr"]:
                assert a["uncertainty"]["stderr"] == pytest.approx(b["uncertainty"]["stderr"], rel=1e-6, abs=1e-12)
        for column, metric in (("fid", "fid"), ("kid", "kid"), ("precision", "prdc"), ("fd_dinov2", "fd_dinov2"),
                               ("coverage_dinov2", "prdc_dinov2")):
            # the reference file the metric read is the one hashed into the run's identity
            hashed = one["spec"]["inputs"][f"{metric}:reference"]
            assert one["metrics"][column]["protocol"]["reference_sha256"] == hashed
        assert one["metrics"]["fd_dinov2"]["protocol"]["dinov2_resize"] == "pil"
        assert one["metrics"]["precision"]["protocol"]["k_pr"] == 3
    with capsys.disabled():
        print(f"\nnew metrics, 1 vs 4 shards: largest relative difference {worst:.2g}; values of one run: "
              + ", ".join(f"{c} {next(iter(runs[4].values()))['metrics'][c]['value']:.4g}" for c in columns))
    build_report(tmp_path / "shards4")
    df = pd.read_csv(tmp_path / "shards4" / "runs.csv")
    for c in columns:
        assert {c, f"{c}_stderr", f"{c}_lo", f"{c}_hi"} <= set(df.columns)
    assert df["inception_score"].notna().all() and df["coverage"].between(0, 1).all()


def test_reference_statistics_follow_the_sample_size(cache, tmp_path, monkeypatch, capsys):
    """Without ``data.res`` the metrics read the reference statistics of the samples' size (8 here); the files
    hashed into the run's identity and checked before sampling are those same files, not res 32's. A model
    whose size is known only once loaded must name ``res`` (exit 2, one line)."""
    import yaml

    from bench.hashing import file_sha256
    from bench.run import preflight

    monkeypatch.setenv("SCOREBENCH_CACHE", str(cache))
    stats = cache / "stats"
    raw = _grid(40, ["fid", "kid", "prdc", "fd_dinov2", "prdc_dinov2"])
    del raw["models"]["img"]["data"]["res"]
    grid = parse_grid(raw, "no_res.yaml")
    inputs = grid.runs[0].inputs
    fid_8, dinov2_8 = stats / "cifar10_legacy_tensorflow_train_8.npz", stats / "cifar10_dinov2_pil_train_8.npz"
    kid_8 = stats / "cifar10_legacy_tensorflow_train_8_kid.npz"
    assert not list(stats.glob("*_32*.npz"))  # the default of res 32 would find nothing here
    assert inputs.get("fid:reference") == file_sha256(fid_8)
    assert inputs.get("kid:reference") == inputs.get("prdc:reference") == file_sha256(kid_8)
    assert inputs.get("fd_dinov2:reference") == file_sha256(dinov2_8)
    assert inputs.get("prdc_dinov2:reference") == file_sha256(stats / "cifar10_dinov2_pil_train_8_feats.npz")
    preflight(grid)  # the res-8 files exist: nothing missing

    raw = {**raw, "models": {"img": {"kind": "callable", "target": "tests.test_class_labels:cond_mixture",
                                     "data": raw["models"]["img"]["data"]}}}
    path = tmp_path / "unknown_size.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--grid", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metric 'fid': field 'res' is not set" in err[0] and str(path) in err[0], err


@pytest.mark.parametrize("change, message", [
    ({"shape": (2,), "metrics": ["fd_dinov2"]},
     "metric 'fd_dinov2' cannot apply to model 'img': it needs images of 1 or 3 channels"),
    ({"metrics": ["prdc"], "data": {"k_pr": 0}}, "field 'k_pr' must be a positive integer, got 0"),
    ({"shape": (2,), "metrics": ["prdc_dinov2"]}, "metric 'prdc_dinov2' cannot apply to model 'img'"),
    ({"metrics": ["prdc_dinov2"], "data": {"k_dc": -1}}, "field 'k_dc' must be a positive integer, got -1"),
    ({"metrics": ["prdc_dinov2"], "data": {"dinov2_feats": "STATS/cifar10_dinov2_pil_train_8.npz"}},
     "cifar10_dinov2_pil_train_8.npz: field 'feats' is missing"),
    ({"metrics": ["fd_dinov2"], "data": {"dinov2_resize": "bilinear"}}, "field 'dinov2_resize' must be one of"),
    ({"metrics": ["fd_dinov2"], "data": {"dinov2": "/nowhere/dinov2.pth"}},
     "metric 'fd_dinov2': DINOv2 ViT-L/14 weights not found at /nowhere/dinov2.pth"),
    ({"metrics": ["fd_dinov2"], "data": {"dinov2_resize": "torch"}},
     "cifar10_dinov2_torch_train_8.npz; compute them"),
])
def test_bad_input_exits_2_at_load(cache, tmp_path, monkeypatch, capsys, change, message):
    import yaml

    monkeypatch.setenv("SCOREBENCH_CACHE", str(cache))
    raw = _grid(40, change.get("metrics", METRICS), change.get("shape", (3, 8, 8)))
    raw["models"]["img"]["data"].update({k: v.replace("STATS", str(cache / "stats")) if isinstance(v, str) else v
                                         for k, v in change.get("data", {}).items()})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["--grid", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(path) in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("metric, key, stored", [
    ("fd_dinov2", "dinov2_ref", "cifar10_dinov2_pil_train_8.npz"),
    ("prdc_dinov2", "dinov2_feats", "cifar10_dinov2_pil_train_8_feats.npz")])
def test_statistics_of_another_protocol_exit_2(cache, tmp_path, monkeypatch, capsys, metric, key, stored):
    import shutil

    import yaml

    monkeypatch.setenv("SCOREBENCH_CACHE", str(cache))
    other = tmp_path / "pil_stats_named_torch.npz"
    shutil.copy(cache / "stats" / stored, other)
    raw = _grid(40, [metric])
    raw["models"]["img"]["data"].update({key: str(other), "dinov2_resize": "torch"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--grid", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{other}: field 'dinov2_resize' is 'pil', the run asks for 'torch'" in err[0], err
