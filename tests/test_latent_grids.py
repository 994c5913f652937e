"""grids/sd15_coco.yaml and grids/dit_imagenet256.yaml: their dry runs (no files needed), the run counts
docs/grids.md states, the CFG scale as a swept axis, and the one-line offline error naming where to get
the pipeline."""

from __future__ import annotations

import re

import pytest

from bench.run import main
from tests.conftest import ROOT

GRIDS = {  # grid -> (runs, model, a row that must be there, the offline error's needles)
    "sd15_coco.yaml": (70, "sd15", (" cfg w=7.5 ", " dpm_solver_pp ", "n_steps=5 "),
                       ["'sd15' not found", "save one with internet"]),
    "dit_imagenet256.yaml": (41, "dit_xl2", (" cfg w=1.5 ", " ddim ", "n_steps=50 "), ["'dit-xl-2-256' not found"]),
}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_latent_grid_dry_run_and_offline_error(name, tmp_path, monkeypatch, capsys):
    runs, model, needles, error = GRIDS[name]
    monkeypatch.setenv("SCOREBENCH_CKPT_DIR", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    grid = ROOT / "grids" / name
    assert main(["--grid", str(grid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if f" {model} " in line]
    assert len(rows) == runs and f"{runs} runs of grid" in out
    assert any(all(n in r for n in needles) for r in rows)
    text = (ROOT / "docs" / "grids.md").read_text()
    assert re.search(rf"\| `{re.escape(name)}` \|[^\n]*\| {runs} runs", text), "docs/grids.md states the run count"
    assert main(["--grid", str(grid), "--out", str(tmp_path / "results")]) == 2
    assert not (tmp_path / "results").exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in error), lines
