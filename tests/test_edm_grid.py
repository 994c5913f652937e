"""``kind: edm`` and ``kind: diffusers`` in grids: every registered sampler on the EDM fixture network,
grids/cifar10_edm.yaml's dry run and offline error, and a saved diffusers pipeline."""

from __future__ import annotations

import pytest
import torch
import yaml

import bench.models
from bench.grid import GridError, parse_grid
from bench.records import read_records
from bench.run import main
from models.edm import load_edm
from models.sde import VESDE
from solvers import SAMPLERS, sampler_options
from solvers.denoiser import ve_sigma
from solvers.grids import SCHEDULES
from tests.conftest import ROOT, require_fixture

# Cheap options per sampler on the 16×16 fixture network; others get n_steps=4 if they take it.
CHEAP = {
    "pc": {"n_steps": 3, "snr": 0.16},
    "annealed_langevin": {"n_steps": 3, "steps_per_level": 1},
    "torchsde": {"n_steps": 3},
    "scipy_ode": {"rtol": 1e-2, "atol": 1e-2},
    "torchdiffeq_ode": {"rtol": 1e-2, "atol": 1e-2},
    "adaptive_improved_euler": {"rtol": 0.5, "atol": 0.5},
    "adaptive_em": {"rtol": 0.5, "atol": 0.5},
    "dpm_solver_adaptive": {"rtol": 0.5},
    "edm_stochastic": {"n_steps": 4, "S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0},
}


def cheap(name: str) -> dict:
    if name in CHEAP:
        return dict(CHEAP[name])
    return {"n_steps": 4} if "n_steps" in sampler_options(name) else {}


def write_grid(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_registered_sampler_runs_on_the_edm_fixture_network(tmp_path):
    bench.models._CACHE.clear()
    pkl = require_fixture("edm/B_edm_ddpmpp.pkl")
    sweeps = [{"solver": name, **cheap(name)} for name in sorted(SAMPLERS)]
    grid = write_grid(tmp_path / "edm_all.yaml", {
        "name": "edm-fixture", "model": {"kind": "edm", "path": str(pkl)},
        "eval": {"num_samples": 2, "batch_size": 2, "seeds": "0-1", "dtype": "float32", "threads": 1},
        "sweeps": sweeps})
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    records = list(read_records(out).values())
    assert sorted(r["solver"] for r in records) == sorted(SAMPLERS)
    for r in records:
        assert r["status"] == "ok", (r["solver"], r["message"])
        assert r["nfe"] > 0 and r["sde"]["kind"] == "ve"  # EDM preconditioning: the VE SDE with σ(t) on [0.002, 80]
    nfe = {r["solver"]: r["nfe"] for r in records}
    assert nfe["edm_heun"] == nfe["edm_stochastic"] == 2 * 3 + 1  # EDM's 2N − 1 with N = 4 grid points
    print("\nNFE per sampler on the EDM fixture network:", dict(sorted(nfe.items())))


def test_cifar10_edm_grid_dry_run_and_offline_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCOREBENCH_CKPT_DIR", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    grid = ROOT / "grids" / "cifar10_edm.yaml"
    assert main(["--grid", str(grid), "--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " edm_vp " in line]
    assert len(rows) == 107
    assert any(" edm_heun " in r and "n_steps=18 " in r for r in rows)
    for solver in ("dpm_solver_pp", "unipc", "pf_euler", "ddim", "euler_maruyama", "pc", "scipy_ode"):
        assert any(f" {solver} " in r for r in rows), solver
    out = tmp_path / "results"
    assert main(["--grid", str(grid), "--out", str(out)]) == 2
    assert not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "edm-cifar10-32x32-uncond-vp.pkl' not found" in lines[0]
    assert "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl" in lines[0]


def test_edm_section_errors():
    pkl = str(require_fixture("edm/B_edm_ddpmpp.pkl"))
    base = {"name": "bad", "eval": {"num_samples": 2, "batch_size": 2},
            "sweeps": [{"solver": "edm_heun", "n_steps": 3}]}
    for model, match in (({"kind": "edm", "path": pkl, "sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min < sigma_max"),
                         ({"kind": "edm", "path": pkl, "label": "cat"}, "field 'label' must be a class index"),
                         ({"kind": "edm", "path": pkl, "key": 3}, "field 'key' must be a snapshot entry"),
                         ({"kind": "edm", "path": pkl, "ema": True}, "'ema'.*expected one of.*key, label"),
                         ({"kind": "edm", "path": "nowhere/edm-x.pkl"}, "EDM snapshot 'nowhere/edm-x.pkl' not found")):
        with pytest.raises(GridError, match=match):
            parse_grid({**base, "model": model}, "bad.yaml")
    # A label on an unconditional network is refused when the model loads.
    with pytest.raises(ValueError, match="network is unconditional"):
        load_edm(pkl, label=3)


diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")


def tiny_pipeline(path, **scheduler):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, **scheduler)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(path)
    return unet


def test_diffusers_pipeline_in_a_grid(tmp_path):
    bench.models._CACHE.clear()
    tiny_pipeline(tmp_path / "pipe", prediction_type="v_prediction")
    grid = write_grid(tmp_path / "g.yaml", {
        "name": "diffusers-v", "model": {"kind": "diffusers", "path": str(tmp_path / "pipe")},
        "eval": {"num_samples": 2, "batch_size": 2, "seeds": "0-1", "threads": 1},
        "sweeps": [{"solver": ["ddim", "dpm_solver_pp", "euler_maruyama"], "n_steps": 4},
                   {"solver": "euler", "n_steps": 4, "schedule": "leading", "steps_offset": 1}]})
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    records = list(read_records(out).values())
    assert len(records) == 4 and all(r["status"] == "ok" and r["sde"]["kind"] == "tabulated" for r in records)
    assert {r["model_section"]["time_mapping"] for r in records} == {"log_sigma"}  # every record states the mapping
    # A sampler the path cannot carry, and a schedule diffusers does not have, are refused when the grid loads.
    for name, section, sweep, match in (
            ("anc", {"kind": "diffusers", "path": str(tmp_path / "pipe")}, {"solver": "ancestral_sampling"},
             r"AncestralSampling cannot run on the 'tabulated' path.*score_sde's ancestral step"),
            ("sig", {"kind": "diffusers", "path": str(tmp_path / "pipe"), "scheduler": {"beta_schedule": "sigmoid"}},
             {"solver": "ddim"}, r"beta_schedule'\: 'sigmoid' is not supported; expected one of: linear, scaled"),
            ("map", {"kind": "diffusers", "path": str(tmp_path / "pipe"), "time_mapping": "round"},
             {"solver": "ddim"}, r"time_mapping' 'round' is unknown.*expected one of: log_sigma, sigma, quantize")):
        grid = write_grid(tmp_path / f"{name}.yaml", {"name": name, "model": section,
                                                     "eval": {"num_samples": 2, "batch_size": 2},
                                                     "sweeps": [{**sweep, "n_steps": 4}]})
        assert main(["--grid", str(grid), "--out", str(tmp_path / name), "--no-progress"]) == 2
        assert not (tmp_path / name).exists()
        with pytest.raises(GridError, match=match):
            parse_grid(yaml.safe_load(grid.read_text()), str(grid))


def test_cifar10_edm_fast_grid_dry_run_and_plan(tmp_path, monkeypatch, capsys):
    """grids/cifar10_edm_fast.yaml: the 3–25 NFE comparison (issue 27) loads offline, every method on every
    schedule, declared NFE within 3–25; Restart on karras and log_snr at 17–31 NFE (2·n_steps − 1 + 8), each
    run's grid point nearest t_min below t_max."""
    from bench.grid import load_grid
    from solvers import SAMPLERS, make_sampler

    monkeypatch.setenv("SCOREBENCH_CKPT_DIR", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    path = ROOT / "grids" / "cifar10_edm_fast.yaml"
    assert main(["--grid", str(path), "--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " edm_vp " in line]
    assert main(["--grid", str(path), "--plan"]) == 0
    capsys.readouterr()
    grid = load_grid(path, files=False)
    assert len(rows) == len(grid.runs) == 245
    methods = ("euler", "edm_heun", "dpm_solver_pp", "unipc", "deis", "ipndm")
    for solver in methods:
        runs = [r for r in grid.runs if r.solver == solver]
        assert {r.options["schedule"] for r in runs} == {"karras", "log_snr", "table", "gits"}, solver
        nfe = {make_sampler(r.solver, **r.options).expected_nfe for r in runs}
        assert min(nfe) <= 4 and max(nfe) == 25 and all(3 <= n <= 25 for n in nfe), (solver, sorted(nfe))
    assert {r.options.get("solver_order") for r in grid.runs if r.solver in ("dpm_solver_pp", "deis")} == {3}
    assert {r.options.get("basis") for r in grid.runs if r.solver == "deis"} == {"t"}  # tAB3, as the header says
    assert all(r.inputs.get("gits_schedule") for r in grid.runs if r.options["schedule"] == "gits")
    text = path.read_text()
    assert "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl" in text
    assert "restart" in SAMPLERS and "# - {solver: restart" not in text
    row = next(line for line in (ROOT / "docs" / "grids.md").read_text().splitlines()
               if line.startswith("| `cifar10_edm_fast.yaml` |"))
    assert row.endswith(f"| {len(grid.runs)} runs, GPU cluster |"), "docs/grids.md states the run count"
    restart = [r for r in grid.runs if r.solver == "restart"]
    assert {r.options["schedule"] for r in restart} == {"karras", "log_snr"} and len(restart) == 10
    assert {make_sampler(r.solver, **r.options).expected_nfe for r in restart} == {17, 19, 23, 27, 31}
    sde = VESDE(sigma_min=0.002, sigma_max=80.0)  # the checkpoint's σ range, t = σ
    for r in restart:
        sampler = make_sampler(r.solver, **r.options).method
        sigmas = ve_sigma(sde, SCHEDULES[r.options["schedule"]](r.options["n_steps"], sde.T, sde.eps, sde=sde))
        j = int(torch.argmin((sigmas - sampler.t_min).abs()))
        assert 0 < j and sigmas[j] < sampler.t_max, (r.options, sigmas.tolist())
