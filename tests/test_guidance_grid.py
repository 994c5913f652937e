"""``guidance`` as swept grid keys, per-network counts in records and both NFE conventions in the report:
grids/guidance_mixture.yaml (a CFG-scale sweep, a guidance interval, CFG by an unconditional network and
autoguidance on an exact class-conditional mixture) run end to end through the CLI."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import yaml

from bench.grid import parse_grid
from bench.records import read_records
from bench.report import build_report
from bench.report import main as report_main
from bench.run import main
from tests.conftest import ROOT

GRID = ROOT / "grids" / "guidance_mixture.yaml"


def test_scale_is_an_axis_and_guidance_is_part_of_the_identity():
    raw = yaml.safe_load(GRID.read_text())
    spec = parse_grid(raw, str(GRID), files=False)
    cfg = [r for r in spec.runs if r.guidance.get("kind") == "cfg" and "guide" not in r.guidance]
    assert sorted({r.guidance["scale"] for r in cfg}) == [1.0, 2.0, 4.0]
    assert len(cfg) == 2 * 3 * 3  # two solvers × three step counts × three scales
    assert len({r.run_id for r in spec.runs}) == len(spec.runs) == 30
    assert all(r.identity()["guidance"] == r.guidance for r in spec.runs)
    auto = next(r for r in spec.runs if r.guidance["kind"] == "autoguidance")
    assert auto.guidance["guide_model"]["std"] == 0.3  # the guide's section (its files: inputs 'guide:*')
    unguided = dict(raw, sweeps=[{"model": "mixture_cond", "solver": "euler", "n_steps": 5}])
    (plain,) = parse_grid(unguided, "g.yaml", files=False).runs
    assert "guidance" not in plain.identity()  # unguided runs keep their run ids


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("guided") / "out"
    assert main(["--grid", str(GRID), "--out", str(out), "--samples", "200", "--batch-size", "100",
                 "--workers", "1", "--no-progress", "--no-report"]) == 0
    return out


def test_records_count_every_network_in_both_conventions(results):
    records = list(read_records(results).values())
    assert len(records) == 30 and all(r["status"] == "ok" for r in records)
    for r in records:
        g, nets, n = r["guidance"], r["networks"], r["nfe"]
        assert nets["denoiser"]["calls"] == 2 * n  # two batches, one call per guided evaluation
        if g["kind"] == "cfg" and "guide" not in g:  # one forward of 2B rows per step
            assert nets["denoiser"]["forwards_per_sample"] == r["forwards_per_sample"] == 2 * n
        elif g["kind"] == "interval":  # 2B rows inside (0.1, 2], B outside
            assert n < r["forwards_per_sample"] < 2 * n
        else:  # a second network: main and guide one B-row forward each
            assert nets["denoiser"]["forwards_per_sample"] == nets["guide"]["forwards_per_sample"] == n
            assert r["forwards_per_sample"] == 2 * n
    # The exact model: w = 1 samples the data, so fd_exact grows with the CFG scale at every step count.
    fd = {(r["solver"], r["options"]["n_steps"], r["guidance"]["scale"]): r["metrics"]["fd_exact"]["value"]
          for r in records if r["guidance"]["kind"] == "cfg" and "guide" not in r["guidance"]}
    for (solver, steps, w), value in fd.items():
        if w > 1:
            assert value > fd[(solver, steps, 1.0)], (solver, steps, w)
    # CFG by the unconditional mixture as its own network equals CFG with the null class (one forward).
    by_uncond = {r["options"]["n_steps"]: r["metrics"]["fd_exact"]["value"] for r in records
                 if r["guidance"].get("guide") == "mixture_uncond"}
    for steps, value in by_uncond.items():
        assert value == pytest.approx(fd[("euler", steps, 2.0)], rel=1e-9)


def test_report_shows_both_nfe_conventions_never_on_one_axis(results):
    made = build_report(results)
    names = {p.name for p in made["plots"]}
    assert {"fd_exact_vs_nfe_mixture_cond.png", "fd_exact_vs_forwards_mixture_cond.png",
            "loglik_exact_vs_forwards_mixture_cond.png"} <= names
    html = (results / "report.html").read_text()
    assert "NFE (guided denoiser evaluations per batch)" in html
    assert "network forwards per sample (denoiser + guide)" in html
    assert "Every network counted apart" in html and "guide: forwards per sample" in html
    runs = pd.read_csv(results / "runs.csv")
    assert {"forwards_per_sample", "guidance", "denoiser_calls", "guide_forwards_per_sample"} <= set(runs.columns)
    guided = pd.read_csv(results / "summary.csv")
    assert report_main([str(results), "--nfe-axis", "forwards"]) == 0
    forwards = pd.read_csv(results / "summary.csv")
    key = ["run_id"]
    both = guided[key + ["nfe"]].merge(forwards[key + ["nfe"]], on=key, suffixes=("_guided", "_forwards"))
    by_id = runs.set_index("run_id")
    assert (both["nfe_guided"] == by_id.loc[both["run_id"], "nfe"].to_numpy()).all()
    assert (both["nfe_forwards"] == by_id.loc[both["run_id"], "forwards_per_sample"].to_numpy()).all()
    assert (both["nfe_forwards"] > both["nfe_guided"]).all()  # every run here forwards more than it evaluates
    assert re.search(r"tables above read NFE as network forwards per sample", (results / "report.html").read_text())
