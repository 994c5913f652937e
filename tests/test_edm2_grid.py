"""``kind: edm2`` in grids: every registered sampler on the EDM2 fixture snapshot (class labels drawn
per seed), its recorded NFE equal to the network's forward calls counted beside the harness; and
grids/imagenet64_edm2.yaml's dry run and one-line offline error."""

from __future__ import annotations

import pickle
import re

import pytest
import yaml

import bench.models
from bench.grid import GridError, parse_grid
from bench.records import read_records
from bench.run import main
from models.edm2.precond import Precond
from solvers import SAMPLERS
from tests.conftest import ROOT, require_fixture
from tests.test_edm_grid import cheap


@pytest.fixture
def counted_forwards(monkeypatch):
    """Every forward call of an EDM2 Precond, counted (a list of batch sizes); each call must carry one
    class label per row (``label: random`` reaches the network, row subsets included)."""
    calls: list[int] = []
    forward = Precond.forward

    def counting(self, x, sigma, class_labels=None):
        assert class_labels is not None and class_labels.shape == (x.shape[0], self.label_dim)
        calls.append(x.shape[0])
        return forward(self, x, sigma, class_labels)

    monkeypatch.setattr(Precond, "forward", counting)
    return calls


def test_every_registered_sampler_runs_on_the_edm2_fixture(tmp_path, counted_forwards):
    bench.models._CACHE.clear()
    pkl = str(require_fixture("edm2/P_img16_cond.pkl"))
    nfe = {}
    for name in sorted(SAMPLERS):
        grid = tmp_path / f"{name}.yaml"
        grid.write_text(yaml.safe_dump({
            "name": f"edm2-{name}", "model": {"kind": "edm2", "path": pkl, "label": "random"},
            "eval": {"num_samples": 2, "batch_size": 2, "seeds": "0-1", "dtype": "float32", "threads": 1},
            "sweeps": [{"solver": name, **cheap(name)}]}))
        out = tmp_path / name
        counted_forwards.clear()
        assert main(["--grid", str(grid), "--out", str(out), "--workers", "1", "--no-progress", "--no-report"]) == 0
        (record,) = read_records(out).values()
        assert record["status"] == "ok", (name, record["message"])
        assert record["sde"]["kind"] == "ve" and record["shape"] == [3, 16, 16]
        assert record["nfe"] == len(counted_forwards) > 0, name  # one batch: every call is one network forward
        nfe[name] = record["nfe"]
    assert nfe["edm_heun"] == nfe["edm_stochastic"] == 2 * 3 + 1  # EDM's 2N − 1 with N = 4 grid points
    print("\nNFE per sampler on the EDM2 fixture snapshot:", dict(sorted(nfe.items())))


def test_imagenet64_edm2_grid_dry_run_and_offline_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCOREBENCH_CKPT_DIR", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    grid = ROOT / "grids" / "imagenet64_edm2.yaml"
    assert main(["--grid", str(grid), "--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " edm2_img64_s " in line]
    assert len(rows) == 75 and all(" random " in r for r in rows)
    assert any(" edm_heun " in r and "n_steps=32 " in r and "schedule=karras_float32" in r for r in rows)
    for solver in ("dpm_solver_pp", "unipc", "ddim", "edm_stochastic"):
        assert any(f" {solver} " in r for r in rows), solver
    out = tmp_path / "results"
    assert main(["--grid", str(grid), "--out", str(out)]) == 2
    assert not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "EDM2 snapshot 'edm2-img64-s-1073741-0.075.pkl' not found" in lines[0]
    assert ("https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img64-s-1073741-0.075.pkl"
            in lines[0])


def test_edm2_section_errors(tmp_path):
    pkl = str(require_fixture("edm2/P_img16_cond.pkl"))
    base = {"name": "bad", "eval": {"num_samples": 2, "batch_size": 2},
            "sweeps": [{"solver": "edm_heun", "n_steps": 3}]}
    for model, match in (({"kind": "edm2", "path": pkl}, r"class-conditional \(4 classes\): field 'label' is required"),
                         ({"kind": "edm2", "path": pkl, "label": 4}, "class index in 0..3"),
                         ({"kind": "edm2", "path": pkl, "label": "cat"}, "field 'label' must be a class index"),
                         ({"kind": "edm2", "path": pkl, "label": 1, "sigma_min": 5.0, "sigma_max": 1.0},
                          "sigma_min < sigma_max"),
                         ({"kind": "edm2", "path": pkl, "label": 1, "scheduler": {}}, "'scheduler'.*expected one of"),
                         ({"kind": "edm2", "path": "nowhere/edm2-x.pkl"},
                          "EDM2 snapshot 'nowhere/edm2-x.pkl' not found")):
        with pytest.raises(GridError, match=match):
            parse_grid({**base, "model": model}, "bad.yaml")
    # An EDM1 pickle is not an EDM2 snapshot: refused at grid load, naming the class and the choice.
    edm1 = str(require_fixture("edm/B_edm_ddpmpp.pkl"))
    with pytest.raises(GridError, match="'EDMPrecond' is not a network the loader builds; expected one of: Precond"):
        parse_grid({**base, "model": {"kind": "edm2", "path": edm1}}, "bad.yaml")


def test_hostile_edm2_snapshot_in_a_grid_exits_2_before_it_runs(tmp_path, monkeypatch, capsys):
    """A grid naming a pickle whose payload would create a file: exit 2 at grid load, one line naming
    the refused global, nothing written, the payload never run."""
    from tests.test_edm2 import MARKER, RunsSystem

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "edm2-img64-s-hostile.pkl"
    path.write_bytes(pickle.dumps({"ema": RunsSystem()}))
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "hostile", "model": {"kind": "edm2", "path": str(path), "label": 1},
        "eval": {"num_samples": 2, "batch_size": 2}, "sweeps": [{"solver": "edm_heun", "n_steps": 3}]}))
    out = tmp_path / "results"
    assert main(["--grid", str(grid), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(r"refused global (posix|os|nt)\.system", lines[0])
    assert not out.exists() and not (tmp_path / MARKER).exists()
