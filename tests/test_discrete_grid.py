"""Every registered sampler on the diffusers model kinds, in small grids: a discrete-time ε-model on its
tabulated path (fixture U) and a flow-matching velocity model (fixture F); grids/ddpm_cifar10_diffusers.yaml's
dry run and offline error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import bench.models
from bench.records import read_records
from bench.run import main
from solvers import SAMPLERS, declared, make_sampler
from tests.conftest import require_fixture

pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.fixtures

# score_sde's discrete tables and NCSNv2's VE levels exist on VE/VP/sub-VP only: refused on these paths
TABLE_SAMPLERS = {"reverse_diffusion", "ancestral_sampling", "pc", "annealed_langevin"}
OPTIONS = {  # a few steps each; adaptive ones with loose tolerances
    "adaptive_improved_euler": {"rtol": 0.5, "atol": 0.5}, "adaptive_em": {"rtol": 0.5, "atol": 0.5},
    "dpm_solver_adaptive": {"rtol": 0.5, "atol": 0.5}, "scipy_ode": {"rtol": 0.1, "atol": 0.1},
    "torchdiffeq_ode": {"rtol": 0.1, "atol": 0.1}, "dpm_solver_fast": {"nfe_budget": 6},
}


def run_every_sampler(tmp_path, folder: str, T: float | None):
    bench.models._CACHE.clear()
    sweeps = []
    for name in sorted(set(SAMPLERS) - TABLE_SAMPLERS):
        options = OPTIONS.get(name, {"n_steps": 4})
        sweeps.append({"solver": name, **options, **({"T": T} if T is not None else {})})
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "every", "model": {"kind": "diffusers", "path": str(require_fixture(f"diffusers/{folder}"))},
        "eval": {"num_samples": 2, "batch_size": 2, "seeds": "0-1", "threads": 1}, "sweeps": sweeps}))
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    records = {r["solver"]: r for r in read_records(out).values()}
    assert set(records) == set(SAMPLERS) - TABLE_SAMPLERS
    for name, r in records.items():
        assert r["status"] == "ok", (name, r["message"])
        spec = declared(make_sampler(name, **r["options"]))
        if not spec["adaptive"]:  # a fixed step count: the counted NFE of each batch is the declared one
            assert r["nfe_per_batch"] == [spec["expected_nfe"]], (name, r["nfe_per_batch"])
    # the table samplers are refused when the grid loads, naming what the path lacks
    for name in sorted(TABLE_SAMPLERS):
        bad = tmp_path / f"{name}.yaml"
        bad.write_text(yaml.safe_dump({
            "name": name, "model": {"kind": "diffusers", "path": str(require_fixture(f"diffusers/{folder}"))},
            "eval": {"num_samples": 2, "batch_size": 2}, "sweeps": [{"solver": name, "n_steps": 4}]}))
        assert main(["--grid", str(bad), "--out", str(tmp_path / name), "--no-progress"]) == 2
        assert not (tmp_path / name).exists()
    return records


def test_every_sampler_on_a_discrete_time_model(tmp_path):
    records = run_every_sampler(tmp_path, "U", None)
    assert {r["model_section"]["time_mapping"] for r in records.values()} == {"log_sigma"}
    assert {r["sde"]["kind"] for r in records.values()} == {"tabulated"}


def test_every_sampler_on_a_flow_matching_model(tmp_path):
    """The flow model at T = 0.99: the samplers in σ_ve or λ need α_T > 0 (docs/paths.md)."""
    records = run_every_sampler(tmp_path, "F", 0.99)
    assert {r["model_section"]["time_mapping"] for r in records.values()} == {"flow"}
    assert {r["sde"]["kind"] for r in records.values()} == {"flow"}


def test_ddpm_cifar10_diffusers_grid_dry_run_and_offline_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCOREBENCH_CKPT_DIR", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    grid = ROOT / "grids" / "ddpm_cifar10_diffusers.yaml"
    assert main(["--grid", str(grid), "--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " ddpm" in line]
    assert len(rows) == 52
    assert any(" ddim " in r and "schedule=leading" in r and "steps_offset=1" in r for r in rows)
    out = tmp_path / "results"
    assert main(["--grid", str(grid), "--out", str(out)]) == 2
    assert not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "diffusers folder 'ddpm-cifar10-32' not found" in lines[0]
    assert "DDPMPipeline.from_pretrained('google/ddpm-cifar10-32')" in lines[0]
