"""Step schedules as a grid axis (issue 27): Karras' and the polyexponential ρ against k-diffusion, σ
tables interpolated as the AYS authors do, GITS' dynamic programming against brute force, its cache
under the output folder, and every record stating its schedule and σ grid."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE
from solvers import FixedSteps, Problem, SeededNoise, make_sampler
from solvers.denoiser import ve_sigma
from solvers.gits import dp_path, gits_sigmas, path_cost
from solvers.grids import SIGMA_TABLES, loglinear_interp
from tests.test_kdiffusion_side_by_side import kdiffusion


def grid_sigmas(sde, **options) -> torch.Tensor:
    steps = FixedSteps(**options)
    return ve_sigma(sde, steps.grid(Problem(GaussianMixture(torch.zeros(1, 2), torch.tensor([0.5]), sde))))


# --- parametrised schedules against k-diffusion (side by side) -------------------------------------------
def _float64(fn, *args, **kwargs):
    """k-diffusion builds its ramp with torch.linspace in the default dtype: run it in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("rho", [3.0, 5.0, 7.0])
def test_karras_rho_matches_kdiffusion(rho):
    sampling, _ = kdiffusion()
    sde = VPSDE()
    ours = grid_sigmas(sde, n_steps=12, schedule="karras", rho=rho)
    ref = _float64(sampling.get_sigmas_karras, 12, float(ours[-1]), float(ours[0]), rho=rho)[:-1]  # without its 0
    assert torch.allclose(ours, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("rho", [0.5, 1.0, 2.0])
def test_polyexponential_matches_kdiffusion(rho):
    sampling, _ = kdiffusion()
    sde = VPSDE()
    ours = grid_sigmas(sde, n_steps=9, schedule="polyexponential", rho=rho)
    ref = _float64(sampling.get_sigmas_polyexponential, 9, float(ours[-1]), float(ours[0]), rho=rho)[:-1]
    assert torch.allclose(ours, ref, rtol=1e-12, atol=0)


def test_polyexponential_rho_one_is_the_log_snr_grid():
    sde = VPSDE()
    assert torch.allclose(grid_sigmas(sde, n_steps=7, schedule="polyexponential"),
                          grid_sigmas(sde, n_steps=7, schedule="log_snr"), rtol=1e-12)


def test_rho_changes_the_grid_and_the_run_identity():
    sde = VPSDE()
    a, b = (grid_sigmas(sde, n_steps=8, schedule="karras", rho=r) for r in (3.0, 7.0))
    assert a[0] == b[0] and a[-1] == b[-1] and not torch.allclose(a[1:-1], b[1:-1])
    assert torch.equal(grid_sigmas(sde, n_steps=8, schedule="karras"), b)  # ρ = 7 is the default


# --- σ tables ---------------------------------------------------------------------------------------------
def _ays_reference(table, n):
    """The AYS notes' log-linear interpolation, with numpy's interp (an independent implementation)."""
    xs = np.linspace(0, 1, len(table))
    ys = np.log(np.asarray(table, dtype=np.float64)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1]


@pytest.mark.parametrize("name", list(SIGMA_TABLES))
@pytest.mark.parametrize("n", [4, 7, 11, 16, 31])
def test_loglinear_interp_is_the_ays_one(name, n):
    ours = loglinear_interp(torch.tensor(SIGMA_TABLES[name], dtype=torch.float64), n).numpy()
    np.testing.assert_allclose(ours, _ays_reference(SIGMA_TABLES[name], n), rtol=1e-13)


def test_an_ays_table_on_a_model_of_its_sigma_range():
    """SD1.5's table (σ 14.615 … 0.029) on a VE path from σ = 14.615: at 11 points the grid is the table,
    at other lengths the log-linear interpolation; the grid ends at 0.029 (the final denoise then)."""
    sde = VESDE(sigma_min=0.02, sigma_max=14.615)
    table = torch.tensor(SIGMA_TABLES["ays_sd15"], dtype=torch.float64)
    assert torch.allclose(grid_sigmas(sde, n_steps=11, schedule="table", sigmas="ays_sd15"), table, rtol=1e-12)
    assert torch.allclose(grid_sigmas(sde, n_steps=6, schedule="table", sigmas="ays_sd15"),
                          torch.from_numpy(_ays_reference(table.tolist(), 6).copy()), rtol=1e-12)
    with pytest.raises(ValueError, match="field 'sigmas' has 11 values but n_steps is 6"):
        FixedSteps(n_steps=6, schedule="table", sigmas="ays_sd15", table_interp="none")


def test_a_table_out_of_range_is_refused_before_any_score_call():
    sde = VPSDE()  # σ_ve from 0.0105 to 152.2
    problem = Problem(GaussianMixture(torch.zeros(1, 2), torch.tensor([0.5]), sde))
    sampler = make_sampler("ipndm", n_steps=5, schedule="table", sigmas=[152.167, 10.0, 1e-3])
    noise = SeededNoise([0])
    with pytest.raises(ValueError, match="leaves the model's σ range"):
        sampler.sample(problem, problem.prior_sample(1, noise), noise)
    assert problem.counter.nfe == 0


# --- GITS: the dynamic programming -----------------------------------------------------------------------
def _brute_force(cost, k, coeff):
    M = cost.shape[0]
    paths = ([0, *inner, M - 1] for inner in itertools.combinations(range(1, M - 1), k - 1))
    return min(path_cost(cost, p, coeff) for p in paths)


@pytest.mark.parametrize("coeff", [1.0, 1.15, 0.8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_finds_the_optimal_path(seed, coeff):
    M = 10
    cost = torch.rand(M, M, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for k in range(1, M):
        path = dp_path(cost, k, coeff)
        assert len(path) == k + 1 and path[0] == 0 and path[-1] == M - 1 and path == sorted(set(path))
        assert path_cost(cost, path, coeff) == pytest.approx(_brute_force(cost, k, coeff), rel=1e-12)


def test_dp_known_answer():
    """Steps cost (j − i)²: the cheapest 3 steps over 0..9 are the most even split, (3, 3, 3); with coeff
    > 1 the later steps weigh more, so the first step is the longest of an uneven split."""
    idx = torch.arange(10, dtype=torch.float64)
    cost = (idx[None] - idx[:, None]) ** 2
    assert dp_path(cost, 3, 1.0) == [0, 3, 6, 9]
    uneven = dp_path(cost, 3, 2.0)  # minimises a² + 2b² + 4c² with a + b + c = 9: (5, 3, 1) at cost 47
    assert uneven == [0, 5, 8, 9] and path_cost(cost, uneven, 2.0) == _brute_force(cost, 3, 2.0) == 47
    with pytest.raises(ValueError, match="n_steps must be in"):
        dp_path(cost, 10, 1.0)


# --- GITS on an exact mixture: lower error than uniform-in-t at 6 and 10 NFE -------------------------------
def mixture_problem() -> Problem:
    g = torch.Generator().manual_seed(0)
    means = 0.7 * torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    return Problem(GaussianMixture(means, torch.full((4,), 0.15, dtype=torch.float64), VPSDE()))


def solve_error(problem, sampler, x_T, noise, ref) -> tuple[float, int]:
    sol = sampler.sample(problem, x_T, noise)
    return float((sol.x - ref).flatten(1).norm(dim=1).mean()), problem.counter.nfe


@pytest.mark.parametrize("nfe", [6, 10])
def test_gits_beats_uniform_on_an_exact_mixture(nfe):
    """iPNDM with n_steps = NFE points and no final denoise (NFE = n_steps − 1 … the reference's
    ``num_steps``): GITS' schedule (64 warm-up samples, the reference's defaults otherwise) against the
    uniform-in-t grid, mean distance to a 1000-step Heun solution of the same 64 held-out x_T."""
    problem = mixture_problem()
    sigmas, info = gits_sigmas(problem, range(1000, 1064), nfe + 1, dtype=torch.float64)
    assert info["indices"][0] == 0 and info["indices"][-1] == 60 and len(sigmas) == nfe + 1
    noise = SeededNoise(range(64))
    x_T = problem.prior_sample(64, noise, dtype=torch.float64)
    ref = make_sampler("edm_heun", n_steps=1000, denoise="none").sample(mixture_problem(), x_T, noise).x
    errors = {}
    for name, opts in (("uniform", {}), ("gits", {"sigmas": tuple(sigmas.tolist())})):
        sampler = make_sampler("ipndm", n_steps=nfe + 1, schedule=name, denoise="none", **opts)
        errors[name], counted = solve_error(mixture_problem(), sampler, x_T, noise, ref)
        assert counted == nfe
    assert errors["gits"] < 0.5 * errors["uniform"], errors


# --- the harness: cache, identity, records ----------------------------------------------------------------
MIX = {"kind": "mixture", "sde": {"kind": "vp"}, "means": [[-0.6, -0.6], [-0.6, 0.6], [0.6, -0.6], [0.6, 0.6]],
       "std": 0.1, "metrics": ["sw2_exact"]}


def write_grid(path: Path, sweeps: list, models: dict | None = None) -> Path:
    doc = {"name": "gits_cache", "models": models or {"mix": MIX},
           "eval": {"num_samples": 16, "batch_size": 16, "device": "cpu", "dtype": "float64"}, "sweeps": sweeps}
    path.write_text(yaml.safe_dump(doc))
    return path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_gits_is_cached_under_out_and_keyed_by_its_inputs(tmp_path, monkeypatch):
    import bench.gits_cache as gits_cache
    from bench.grid import load_grid
    from bench.records import read_records
    from bench.run import main

    calls = []
    real = gits_cache.compute
    monkeypatch.setattr(gits_cache, "compute", lambda run, key: calls.append(key) or real(run, key))
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path / "g.yaml", [{"solver": "ipndm", "schedule": "gits", "n_steps": 5,
                                             "gits_warmup": 8, "gits_teacher_steps": 21}])
    out = tmp_path / "out"
    before = files_under(tmp_path)
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report", "--workers", "1"]) == 0
    assert len(calls) == 1
    assert {f for f in files_under(tmp_path) - before if not f.startswith("out")} == set()  # nothing outside out
    (entry,) = (out / "gits").glob("*.json")
    cached = json.loads(entry.read_text())
    assert entry.stem == calls[0] == cached["key"] and len(cached["sigmas"]) == 5 and cached["warmup_nfe"] > 0
    (record,) = read_records(out).values()
    assert record["spec"]["inputs"]["gits_schedule"] == cached["key"]
    assert record["schedule"]["name"] == "gits" and record["schedule"]["params"]["sigmas"] == cached["sigmas"]
    assert record["schedule"]["sigmas"] == pytest.approx(cached["sigmas"], rel=1e-9)

    # The records gone, the cache kept: the schedule is read, not recomputed, and the run is the same.
    for p in (out / "runs").glob("*"):
        p.unlink()
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report", "--workers", "1"]) == 0
    assert len(calls) == 1
    assert next(iter(read_records(out).values()))["run_id"] == record["run_id"]

    # A changed input (the warm-up count; the model) is another key, another run, a new computation.
    grid2 = write_grid(tmp_path / "g2.yaml", [{"solver": "ipndm", "schedule": "gits", "n_steps": 5,
                                               "gits_warmup": 9, "gits_teacher_steps": 21}])
    assert main(["--grid", str(grid2), "--out", str(out), "--no-progress", "--no-report", "--workers", "1"]) == 0
    assert len(calls) == 2 and calls[1] != calls[0]
    run_ids = {r.run_id for r in load_grid(grid).runs} | {r.run_id for r in load_grid(grid2).runs}
    assert len(run_ids) == 2
    other = write_grid(tmp_path / "g3.yaml", [{"solver": "ipndm", "schedule": "gits", "n_steps": 5,
                                               "gits_warmup": 8, "gits_teacher_steps": 21}],
                       models={"mix": {**MIX, "std": 0.2}})
    assert load_grid(other).runs[0].inputs["gits_schedule"] != calls[0]


def test_every_record_states_its_schedule(tmp_path):
    from bench.records import read_records
    from bench.run import main

    grid = write_grid(tmp_path / "g.yaml", [
        {"solver": "ipndm", "schedule": "karras", "rho": [3, 7], "n_steps": 5},
        {"solver": "ipndm", "schedule": "table", "sigmas": [152.167, 10.0, 1.0, 0.05], "n_steps": 6},
        {"solver": "pf_euler", "schedule": ["uniform", "quadratic", "log_snr", "polyexponential"], "n_steps": 5},
        {"solver": "adaptive_improved_euler", "rtol": 0.05, "atol": 0.01}])
    assert main(["--grid", str(grid), "--out", str(tmp_path / "out"), "--no-progress", "--no-report",
                 "--workers", "1"]) == 0
    records = list(read_records(tmp_path / "out").values())
    assert len(records) == 8
    for r in records:
        s = r["schedule"]
        if r["solver"] == "adaptive_improved_euler":
            assert s is None  # no fixed grid
            continue
        assert s["name"] == r["options"]["schedule"] and len(s["sigmas"]) == len(s["t"]) == s["n_points"]
        assert all(isinstance(v, float) for v in s["sigmas"]) and s["sigmas"] == sorted(s["sigmas"], reverse=True)
        if s["name"] == "karras":
            assert s["params"] == {"rho": float(r["options"]["rho"])}
        if s["name"] == "table":
            assert s["params"]["sigmas"] == [152.167, 10.0, 1.0, 0.05] and s["n_points"] == 6
            assert s["sigmas"][-1] == pytest.approx(0.05, rel=1e-9) and math.isclose(s["sigmas"][0], 152.167,
                                                                                    rel_tol=1e-3)
