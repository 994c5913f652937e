"""End-to-end runs: the quickstart grid (reduced), failing models recorded while the sweep goes on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

import bench.models
from bench.grid import load_grid
from bench.kinds.base import CKPT_ENV, resolve_path
from bench.records import read_records
from bench.run import main
from models.gaussian import GaussianMixture
from models.sde import make_sde
from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "grids" / "quickstart.yaml"
QUICK_ARGS = ["--samples", "2", "--batch-size", "2", "--no-progress"]


def quickstart_missing() -> str | None:
    """Why the quickstart grid cannot run here (its shipped digits model is absent), or None."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    for name, section in raw["models"].items():
        if section["kind"] == "checkpoint" and resolve_path(section["path"], CKPT_ENV) is None:
            return f"quickstart model {name!r}: {section['path']} is not shipped in this checkout"
    return None


_QUICKSTART_RUN: dict[str, tuple[int, Path]] = {}  # shared with tests/test_ray.py (same module object)


@pytest.fixture(scope="session")
def quickstart_local(tmp_path_factory):
    """The quickstart grid, reduced to 2 samples in one batch, run once with the local executor."""
    reason = quickstart_missing()
    if reason:
        missing(reason)
    if "local" not in _QUICKSTART_RUN:
        out = tmp_path_factory.mktemp("quickstart") / "local"
        rc = main(["--grid", str(QUICKSTART), "--out", str(out), *QUICK_ARGS])
        _QUICKSTART_RUN["local"] = (rc, out)
    return _QUICKSTART_RUN["local"]


def test_quickstart_end_to_end(quickstart_local):
    rc, out = quickstart_local
    grid = load_grid(QUICKSTART, {"num_samples": 2, "batch_size": 2})
    records = read_records(out)
    assert set(records) == {r.run_id for r in grid.runs}
    bad = {k: (r["solver"], r["message"]) for k, r in records.items() if r["status"] != "ok"}
    assert not bad, bad
    assert rc == 0
    solvers = {r["solver"] for r in records.values()}
    from solvers import SAMPLERS

    assert solvers == set(SAMPLERS), "the quickstart covers every sampler family"
    for r in records.values():
        if r["metrics_requested"] == ["bpd"]:  # a likelihood-only run draws no samples
            assert r["nfe_per_batch"] == [] and r["bpd_nfe"] > 0
        else:
            assert len(r["nfe_per_batch"]) == 1 and r["batch_sizes"] == [2]
            assert r["nfe"] == r["nfe_per_batch"][0] == r["nfe_total"] > 0
            assert (out / "samples" / f"{r['run_id']}.png").is_file()
        assert r["seeds"] == "0-1" and r["num_samples"] == 2
        assert r["metrics"] and all("protocol" in m and m["value"] == m["value"] for m in r["metrics"].values())
        assert r["wall_time_s"] > 0 and r["versions"]["torch"] and r["created"] and "git_revision" in r
        assert r["sampler"]["class"] and r["sde"]["kind"] in ("vp", "ve")
    # NFE is read from the counter: pf_euler with n grid points is n − 1 steps + 1 Tweedie call.
    pf = [r for r in records.values() if r["solver"] == "pf_euler"]
    assert all(r["nfe"] == r["options"]["n_steps"] for r in pf)
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run_id"] for r in rows) == sorted(records)
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == len(records) and "pareto_fd_exact" in summary[0]
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {"fd_exact_vs_nfe_mixture_vp.png", "fd_digits_vs_nfe_digits.png", "wall_vs_nfe_digits.png"} <= plots


# --- failing models --------------------------------------------------------------------------
class FlakyMixture(GaussianMixture):
    """An exact mixture score that turns NaN after ``nan_after`` calls, or raises after ``raise_after``."""

    def __init__(self, nan_after: int | None = None, raise_after: int | None = None) -> None:
        super().__init__(torch.tensor([[-0.5, 0.0], [0.5, 0.0]]), 0.1, make_sde("vp"))
        self.nan_after, self.raise_after, self.calls = nan_after, raise_after, 0

    def __call__(self, x, t):
        self.calls += 1
        if self.raise_after is not None and self.calls > self.raise_after:
            raise RuntimeError("simulated network failure")
        s = super().__call__(x, t)
        return s * float("nan") if self.nan_after is not None and self.calls > self.nan_after else s


def flaky_model(**options) -> FlakyMixture:
    return FlakyMixture(**options)


GOOD = {"kind": "mixture", "sde": {"kind": "vp"}, "means": [[-0.5, 0.0], [0.5, 0.0]], "std": 0.1}


def write_grid(path: Path, models: dict, sweeps: list, **eval_) -> Path:
    raw = {"name": "failing", "models": models, "eval": {"num_samples": 4, "batch_size": 2, **eval_},
           "metrics": ["fd_exact"], "sweeps": sweeps}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_nan_and_exceptions_are_recorded_and_the_sweep_goes_on(tmp_path):
    bench.models._CACHE.clear()
    target = f"{__name__}:flaky_model"
    models = {"good": GOOD,
              "nan": {"kind": "callable", "target": target, "options": {"nan_after": 20}},
              "boom": {"kind": "callable", "target": target, "options": {"raise_after": 3}}}
    sweeps = [{"model": ["nan", "good", "boom"], "solver": "pf_euler", "n_steps": [4, 8]},
              {"model": "good", "solver": "euler_maruyama", "n_steps": 5}]
    path = write_grid(tmp_path / "g.yaml", models, sweeps)
    out = tmp_path / "out"
    assert main(["--grid", str(path), "--out", str(out), "--no-progress"]) == 1
    records = read_records(out)
    assert len(records) == 7
    by_model: dict[str, list] = {}
    for r in records.values():
        by_model.setdefault(r["model"], []).append(r)
    assert all(r["status"] == "ok" for r in by_model["good"])
    for r in by_model["good"]:  # 4 samples in 2 batches; fixed steps: the same NFE in each batch
        assert r["batch_sizes"] == [2, 2] and len(set(r["nfe_per_batch"])) == 1
        assert r["nfe"] == r["nfe_per_batch"][0] and r["nfe_total"] == 2 * r["nfe"]
    # 'nan' turns NaN at its 21st call. Longest work first: the 8-step run (16 calls) runs before the
    # 4-step one, which turns NaN in its second batch (calls 21-24).
    nan = sorted(by_model["nan"], key=lambda r: r["options"]["n_steps"])
    assert nan[1]["status"] == "ok"
    assert nan[0]["status"] == "nonfinite" and "NaN/Inf" in nan[0]["message"] and "batch 1" in nan[0]["message"]
    assert nan[0]["nfe_per_batch"] == [4, 4], "NFE up to the failure is recorded"
    for r in by_model["boom"]:
        assert r["status"] == "error" and "simulated network failure" in r["message"]
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["status"] for r in rows} == {"ok", "nonfinite", "error"}


def test_timeout_is_recorded(tmp_path):
    path = write_grid(tmp_path / "g.yaml", {"good": GOOD}, [{"solver": "pf_euler", "n_steps": 4}], timeout_s=1e-9)
    out = tmp_path / "out"
    assert main(["--grid", str(path), "--out", str(out), "--no-progress"]) == 1
    (r,) = read_records(out).values()
    assert r["status"] == "timeout" and "timeout_s" in r["message"]
    assert json.loads((out / "runs" / f"{r['run_id']}.json").read_text())["status"] == "timeout"
