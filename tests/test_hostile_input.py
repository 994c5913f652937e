"""Hostile and careless input through the CLI (issue 14): every case gives its exit code and one line
naming file, entry and field, and writes nothing — or, for exit status and signals, exactly what it says.

Most cases call ``bench.run.main`` (the CLI entry point) in this process; the path-escape case and the
signal cases run ``python -m bench.run`` as a real subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bench.grid import load_grid
from bench.records import read_records, write_record
from bench.report import build_report
from bench.run import main

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "weights"
MIXTURE = {"kind": "mixture", "means": [[-0.5, 0.0], [0.5, 0.0]], "std": 0.1, "sde": {"kind": "vp"}}


# A 2-D exact mixture score that sleeps `delay` s per call, or returns NaN (`nan`): tests/test_resume.py's.
SLOW_OR_NAN = "tests.test_resume:slow_model"


def write_grid(path: Path, models: dict | None = None, sweeps: list | None = None, **top) -> Path:
    doc = {"name": "hostile", "models": models or {"m": MIXTURE},
           "eval": {"num_samples": 4, "batch_size": 4, "device": "cpu"},
           "sweeps": sweeps or [{"solver": "pf_euler", "n_steps": 3}], **top}
    path.write_text(yaml.safe_dump(doc))
    return path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_cli(capsys, grid: Path, out: Path, *extra: str) -> tuple[int, list[str]]:
    code = main(["--grid", str(grid), "--out", str(out), "--no-progress", *extra])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def assert_refused(capsys, tmp_path, grid: Path, entry: str, *needles: str) -> str:
    """Exit 2, one line 'error: <grid> <entry>: ...' holding every needle, nothing written anywhere."""
    before = files_under(tmp_path)
    code, lines = run_cli(capsys, grid, tmp_path / "out")
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {grid} {entry}:" if entry else f"error: {grid}:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert files_under(tmp_path) == before  # no output folder, no record, no plot
    return lines[0]


# --- 1. nothing written outside --out --------------------------------------------------------------
def test_model_key_with_path_escape_refused_by_the_real_cli(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", models={"x/../../../PWNED": MIXTURE})
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--grid", str(grid), "--out", "A/B/C", "--no-progress"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {grid} models.x/../../../PWNED: field 'model name'")
    assert "without '/' or '..'" in lines[0]
    assert files_under(tmp_path) == {"g.yaml"}  # no A/, no PWNED.png anywhere


@pytest.mark.parametrize("top, entry, field", [
    ({"name": "../up"}, "", "field 'name'"),
    ({"data": {"split": "../../x"}}, "data", "field 'split'"),
    ({"data": {"fid_split": "a/b"}}, "data", "field 'fid_split'"),
])
def test_other_names_that_reach_paths(capsys, tmp_path, top, entry, field):
    grid = write_grid(tmp_path / "g.yaml", **top)
    assert_refused(capsys, tmp_path, grid, entry, field)


def test_report_keeps_hostile_record_names_inside_out(tmp_path):
    """Records are data: one written by hand with a hostile model key still plots inside out/plots."""
    out = tmp_path / "A" / "B" / "C"
    write_record(out, {"run_id": "0123456789", "grid": "g", "model": "x/../../../PWNED", "solver": "pf_euler",
                       "options": {"n_steps": 3}, "status": "ok", "message": "", "nfe": 3, "wall_time_s": 1.0,
                       "sampling_time_s": 1.0, "num_samples": 4, "device": "cpu",
                       "metrics": {"fd_exact": {"value": 0.5, "protocol": {}}}})
    made = build_report(out)
    assert made["plots"] and all(p.resolve().is_relative_to(out.resolve()) for p in made["plots"])
    assert not list(tmp_path.rglob("PWNED*"))
    pwned = [p for p in made["plots"] if "PWNED" in p.name]  # the cleaned key, e.g. fd_exact_..._x_PWNED-<hash>
    assert pwned and all(p.is_file() and p.parent.resolve() == (out / "plots").resolve() for p in pwned)


# --- 2. stale results: content hashes in the run identity ---------------------------------------
def test_replaced_checkpoint_is_a_new_run(capsys, tmp_path):
    ck = tmp_path / "ck.pt"
    shutil.copy(WEIGHTS / "digits_vp.pt", ck)
    grid = write_grid(tmp_path / "g.yaml", models={"m": {"kind": "checkpoint", "path": str(ck)}})
    out = tmp_path / "out"
    code, lines = run_cli(capsys, grid, out, "--no-report")
    assert code == 0 and "1 ran (1 ok" in lines[-1], lines
    (first,) = read_records(out).values()
    assert first["spec"]["inputs"] == {"checkpoint": hashlib.sha256(ck.read_bytes()).hexdigest()}
    shutil.copy(WEIGHTS / "digits_subvp.pt", ck)  # same path, another model
    code, lines = run_cli(capsys, grid, out, "--no-report")
    assert code == 0 and "1 ran (1 ok" in lines[-1] and "0 already ok" in lines[-1], lines
    records = read_records(out)
    assert len(records) == 2 and first["run_id"] in records
    (second,) = [r for r in records.values() if r["run_id"] != first["run_id"]]
    assert second["spec"]["inputs"]["checkpoint"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    assert second["sde"]["kind"] == "subvp"  # the new model's samples, not the old ones kept


def test_every_input_file_hashed(tmp_path):
    """Checkpoint, prior file, classifier weights and statistics, and the dataset split bpd reads."""
    from bench.hashing import dataset_sha256, file_sha256
    from models.fitted_priors import MomentPrior, save_prior

    prior = save_prior(MomentPrior.fit(torch.randn(64, 1, 8, 8, dtype=torch.float64), T=1.0), tmp_path / "p.pt")
    grid = write_grid(tmp_path / "g.yaml", models={"m": {"kind": "checkpoint", "path": str(WEIGHTS / "digits_vp.pt"),
                                                         "data": {"dataset": "digits"}}},
                      sweeps=[{"solver": "pf_euler", "n_steps": 3, "metrics": ["fd_digits", "bpd"],
                               "prior": {"kind": "file", "path": str(prior)}}])
    (run,) = load_grid(grid).runs
    assert run.inputs == {"checkpoint": file_sha256(WEIGHTS / "digits_vp.pt"), "prior_file": file_sha256(prior),
                          "fd_digits:classifier": file_sha256(WEIGHTS.parent.parent / "bench/metrics/weights/"
                                                              "digits_cnn.pt"),
                          "fd_digits:train_stats": file_sha256(WEIGHTS.parent.parent / "bench/metrics/weights/"
                                                               "digits_cnn_train_stats.npz"),
                          "dataset:digits/test": dataset_sha256("digits", "test")}
    assert run.inputs["prior_file"] == hashlib.sha256(prior.read_bytes()).hexdigest()
    assert run.identity()["inputs"] == run.inputs
    save_prior(MomentPrior.fit(torch.randn(64, 1, 8, 8, dtype=torch.float64) + 1, T=1.0), prior)  # replaced
    (again,) = load_grid(grid).runs
    assert again.run_id != run.run_id and again.inputs["prior_file"] != run.inputs["prior_file"]


# --- 3. batch-coupled samplers are declared in identity, record and dry-run -------------------------
def test_batch_dependence_declared(capsys, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", sweeps=[{"solver": "scipy_ode", "rtol": 1.0e-3, "atol": 1.0e-3},
                                                   {"solver": "scipy_ode", "per_sample": True},
                                                   {"solver": "torchsde", "n_steps": 4}])
    coupled, per_sample, sde = load_grid(grid).runs
    assert coupled.identity()["batch_invariant"] is False and coupled.identity()["batch_size"] == 4
    assert "batch_invariant" not in per_sample.identity() and "batch_invariant" not in sde.identity()
    assert main(["--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-2:] == ["batch_invariant", "status"]
    assert [row.split()[-2] for row in table[1:4]] == ["false", "true", "true"]
    assert "(1 batch-dependent" in table[-1]
    code, _ = run_cli(capsys, grid, tmp_path / "out", "--no-report")
    assert code == 0
    records = read_records(tmp_path / "out")
    assert records[coupled.run_id]["spec"]["batch_invariant"] is False
    assert records[sde.run_id]["spec"]["batch_invariant"] is True


# --- 4. everything checkable at load: exit 2, one line, nothing written -------------------------------
def _official_like(path: Path) -> Path:
    torch.save({"model": {"module.x": torch.zeros(1)}, "ema": {}, "optimizer": {}, "step": 0}, path)
    return path


CASES = {
    "T below the SDE's eps": (dict(sweeps=[{"solver": "pf_euler", "n_steps": 3, "T": 0.0005}]), "sweeps[0]",
                              ["field 'T' must be above the SDE's default eps=0.001 (model 'm')"]),
    "eps >= T": (dict(sweeps=[{"solver": "pf_euler", "n_steps": 3, "eps": 1.0}]), "sweeps[0]",
                 ["field 'eps' must be below T=1 (model 'm')"]),
    "eps >= given T": (dict(sweeps=[{"solver": "pf_euler", "n_steps": 3, "T": 0.5, "eps": 0.6}]), "sweeps[0]",
                       ["field 'T' must be in (eps=0.6, 1]"]),
    "weights: foo": (dict(models={"m": {"kind": "checkpoint", "path": str(WEIGHTS / "digits_vp.pt"),
                                        "weights": "foo"}}), "models.m", ["field 'weights' must be one of: ema, raw"]),
    "negative seed range": (dict(eval={"num_samples": 4, "batch_size": 4, "seeds": "-5-3"}), "eval",
                            ["field 'seeds' must be non-negative"]),
    "negative seed in a list": (dict(eval={"num_samples": 2, "batch_size": 2, "seeds": [3, -1]}), "eval",
                                ["field 'seeds' must be non-negative", "-1"]),
    "10^12 seeds": (dict(eval={"num_samples": 4, "batch_size": 4, "seeds": "0-999999999999"}), "eval",
                    ["field 'seeds' gives 1e+12 seeds; at most 1e+08"]),
    "10^12 samples": (dict(eval={"num_samples": 10**12, "batch_size": 4}), "eval",
                      ["field 'num_samples' 1000000000000 makes", "network evaluations"]),
    "negative seed after a comma": (dict(eval={"num_samples": 2, "batch_size": 2, "seeds": "0,-3"}), "eval",
                                    ["field 'seeds' must be non-negative"]),
    "duplicate seeds": (dict(eval={"num_samples": 3, "batch_size": 3, "seeds": [0, 1, 1]}), "eval",
                        ["field 'seeds' repeats seed 1"]),
    "torchsde seed 'abc'": (dict(sweeps=[{"solver": "torchsde", "n_steps": 4, "seed": "abc"}]), "sweeps[0]",
                            ["solver 'torchsde'", "seed must be a non-negative integer", "'abc'"]),
    "n_steps 10^12": (dict(sweeps=[{"solver": "pf_euler", "n_steps": 10**12}]), "sweeps[0]",
                      ["field 'n_steps' must be at most 1e+06"]),
    "fd_digits on a 2-D model": (dict(sweeps=[{"solver": "pf_euler", "n_steps": 3, "metrics": ["fd_digits"]}]),
                                 "sweeps[0]", ["metric 'fd_digits' cannot apply to model 'm'", "1x8x8", "are 2"]),
    "fd_digits on Fashion-MNIST": (dict(models={"m": {"kind": "checkpoint",
                                                      "path": str(WEIGHTS / "fashion_mnist_vp.pt")}},
                                        sweeps=[{"solver": "pf_euler", "n_steps": 3, "metrics": ["fd_digits"]}]),
                                   "sweeps[0]", ["metric 'fd_digits' cannot apply", "1x28x28"]),
    "fid on a 2-D model": (dict(sweeps=[{"solver": "pf_euler", "n_steps": 3, "metrics": ["fid"]}]),
                           "sweeps[0]", ["metric 'fid' cannot apply", "CxHxW"]),
    "steps_offset on a Karras grid": (dict(sweeps=[{"solver": "ddim", "n_steps": 5, "schedule": "karras",
                                                    "steps_offset": 1}]), "sweeps[0]",
                                      ["steps_offset and final_sigma apply to diffusers' spacings"]),
    "a diffusers spacing on a continuous path": (dict(sweeps=[{"solver": "ddim", "n_steps": 5, "schedule": "leading"}]),
                                                 "sweeps[0]", ["DDIM cannot run on the 'vp' path",
                                                               "a discrete-time model's trained timesteps"]),
    "final_sigma zero without the final denoise": (dict(sweeps=[{"solver": "ddim", "n_steps": 5, "schedule": "leading",
                                                                 "denoise": "none"}]), "sweeps[0]",
                                                   ["final_sigma 'zero' ends with the step to σ = 0"]),
    "SD3 shift on a VE path": (dict(models={"m": {**MIXTURE, "sde": {"kind": "ve"}}},
                                    sweeps=[{"solver": "pf_euler", "n_steps": 5, "shift": 3.0}]), "sweeps[0]",
                               ["a path whose time runs in [0, 1]"]),
    "lower_order_final_below 0": (dict(sweeps=[{"solver": "dpm_solver_pp", "n_steps": 5,
                                                "lower_order_final_below": 0}]),
                                  "sweeps[0]", ["lower_order_final_below must be"]),
    "Restart interval outside the path's σ range": (dict(models={"m": {**MIXTURE, "sde": {"kind": "ve",
                                                                                         "sigma_max": 5.0}}},
                                                         sweeps=[{"solver": "restart", "n_steps": 5, "t_min": 2.0,
                                                                  "t_max": 8.0}]), "sweeps[0]",
                                                    ["solver 'restart' cannot run on model 'm'",
                                                     "must lie inside (σ_min, σ_max)"]),
    "Restart t_min >= t_max": (dict(sweeps=[{"solver": "restart", "n_steps": 5, "t_min": 0.5, "t_max": 0.3}]),
                               "sweeps[0]", ["solver 'restart'", "need t_min < t_max"]),
    "Restart K < 1": (dict(sweeps=[{"solver": "restart", "n_steps": 5, "K": 0}]), "sweeps[0]",
                      ["solver 'restart'", "K (restarts) must be an integer >= 1"]),
    "dpm_solver_fast order 4": (dict(sweeps=[{"solver": "dpm_solver_fast", "solver_order": 4}]), "sweeps[0]",
                                ["solver 'dpm_solver_fast'", "invalid solver_order=4; expected one of: 1, 2, 3"]),
    "dpm_solver_fast budget below one step": (dict(sweeps=[{"solver": "dpm_solver_fast", "nfe_budget": 2,
                                                            "method": "singlestep_fixed"}]), "sweeps[0]",
                                              ["nfe_budget=2 is below one step of order 3"]),
    "nfe_budget 10^12": (dict(sweeps=[{"solver": "dpm_solver_fast", "nfe_budget": 10**12}]), "sweeps[0]",
                         ["field 'nfe_budget' must be at most 1e+06"]),
    # σ tables and schedule parameters (issue 27): the field named, the valid choices or the range.
    "σ table not strictly decreasing": (dict(sweeps=[{"solver": "ipndm", "n_steps": 4, "schedule": "table",
                                                       "sigmas": [152.167, 10.0, 10.0, 1.0]}]), "sweeps[0]",
                                         ["field 'sigmas' must be strictly decreasing", "entry 2"]),
    "σ table of the wrong length": (dict(sweeps=[{"solver": "ipndm", "n_steps": 5, "schedule": "table",
                                                   "table_interp": "none", "sigmas": [152.167, 10.0, 1.0, 0.1]}]),
                                     "sweeps[0]", ["field 'sigmas' has 4 values but n_steps is 5"]),
    "σ table below the model's σ range": (dict(sweeps=[{"solver": "ipndm", "n_steps": 4, "schedule": "table",
                                                         "sigmas": [152.167, 1.0, 0.001]}]), "sweeps[0]",
                                           ["field 'sigmas' leaves the model's σ range", "0.001"]),
    "σ table not starting at σ_ve(T)": (dict(sweeps=[{"solver": "ipndm", "n_steps": 4, "schedule": "table",
                                                       "sigmas": "ays_sd15"}]), "sweeps[0]",
                                         ["field 'sigmas' starts at σ=14.615", "σ_ve(T)=152.167"]),
    "unknown σ table": (dict(sweeps=[{"solver": "ipndm", "n_steps": 4, "schedule": "table", "sigmas": "ays_sd3"}]),
                        "sweeps[0]", ["field 'sigmas': unknown table 'ays_sd3'", "ays_sd15"]),
    "rho on a uniform grid": (dict(sweeps=[{"solver": "ipndm", "n_steps": 4, "schedule": "uniform", "rho": 3.0}]),
                              "sweeps[0]", ["field 'rho' applies to schedules karras"]),
    "sigmas given to gits": (dict(sweeps=[{"solver": "ipndm", "n_steps": 3, "schedule": "gits",
                                           "sigmas": [152.167, 1.0, 0.02]}]), "sweeps[0]",
                             ["field 'sigmas' cannot be given with schedule 'gits'"]),
    "gits option on karras": (dict(sweeps=[{"solver": "ipndm", "n_steps": 4, "schedule": "karras",
                                            "gits_warmup": 8}]), "sweeps[0]",
                              ["field 'gits_warmup' applies to schedule 'gits'"]),
    "unknown gits metric": (dict(sweeps=[{"solver": "ipndm", "n_steps": 4, "schedule": "gits",
                                          "gits_metric": "l3"}]), "sweeps[0]",
                            ["gits_metric", "'l3'", "dev, l1, l2"]),
    "exact metric on a network": (dict(models={"m": {"kind": "checkpoint", "path": str(WEIGHTS / "digits_vp.pt")}},
                                       sweeps=[{"solver": "pf_euler", "n_steps": 3, "metrics": ["fd_exact"]}]),
                                  "sweeps[0]", ["metric 'fd_exact' cannot apply", "kind: mixture"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_checkable_at_load(capsys, tmp_path, case):
    top, entry, needles = CASES[case]
    grid = write_grid(tmp_path / "g.yaml", **top)
    assert_refused(capsys, tmp_path, grid, entry, *needles)


COND = {**MIXTURE, "conditional": True, "label": "random"}  # class k = component k (models.guidance's ground truth)
GUIDANCE_CASES = {
    "cfg on an unconditional model": (dict(), {"kind": "cfg", "scale": 2.0},
                                      ["guidance kind 'cfg' needs a conditional model; model 'm' is unconditional"]),
    "interval on an unconditional model": (dict(), {"kind": "interval", "scale": 2.0, "sigma_lo": 0.1, "sigma_hi": 1.0},
                                           ["guidance kind 'interval' needs a conditional model"]),
    "unknown guidance kind": (dict(m=COND), {"kind": "cgf", "scale": 2.0},
                              ["invalid guidance kind 'cgf'",
                               "expected one of: cfg, interval, autoguidance, classifier"]),
    "unknown guidance key": (dict(m=COND), {"kind": "cfg", "scale": 2.0, "w": 3},
                             ["unknown key 'w' in guidance; expected one of: kind, scale, sigma_lo, sigma_hi, guide"]),
    "negative scale": (dict(m=COND), {"kind": "cfg", "scale": [1.0, -2.0]},
                       ["field 'guidance.scale' must be a number >= 0, got -2.0"]),
    "interval without sigma_hi": (dict(m=COND), {"kind": "interval", "scale": 2.0, "sigma_lo": 0.1},
                                  ["field 'guidance.sigma_hi' must be a number >= 0"]),
    "empty interval": (dict(m=COND), {"kind": "interval", "scale": 2.0, "sigma_lo": 1.0, "sigma_hi": 0.5},
                       ["sigma_lo (1.0) must be below sigma_hi (0.5)"]),
    "autoguidance without a guide": (dict(m=COND), {"kind": "autoguidance", "scale": 2.0},
                                     ["guidance kind 'autoguidance' needs 'guide'"]),
    "guide not in the grid": (dict(m=COND), {"kind": "autoguidance", "scale": 2.0, "guide": "xs"},
                              ["field 'guidance.guide' must name another model", "got 'xs'"]),
    "guide of another shape": (dict(m=COND, g={**COND, "means": [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]}),
                               {"kind": "autoguidance", "scale": 2.0, "guide": "g"},
                               ["guide 'g' draws samples of shape [3], model 'm' of [2]"]),
    "guide on another path": (dict(m=COND, g={**COND, "sde": {"kind": "ve"}}),
                              {"kind": "autoguidance", "scale": 2.0, "guide": "g"},
                              ["guide 'g' is on another path than model 'm'"]),
    "conditional guide for cfg": (dict(m=COND, g=COND), {"kind": "cfg", "scale": 2.0, "guide": "g"},
                                  ["guide 'g' stands for the unconditional branch and must be unconditional"]),
    "classifier guidance without a classifier": (dict(m=COND), {"kind": "classifier", "scale": 1.0},
                                                 ["needs an adm model with a 'classifier' section"]),
}


@pytest.mark.parametrize("case", list(GUIDANCE_CASES))
def test_guidance_refused_at_load(capsys, tmp_path, case):
    """Guidance (models.guidance) that cannot run: exit 2 at load, one line naming the field, nothing written."""
    models, guidance, needles = GUIDANCE_CASES[case]
    grid = write_grid(tmp_path / "g.yaml", models=models or None,
                      sweeps=[{"model": "m", "solver": "euler", "n_steps": 3, "guidance": guidance}])
    assert_refused(capsys, tmp_path, grid, "sweeps[0]", *needles)


@pytest.mark.parametrize("content, kind, needle", [
    (b"", "checkpoint", "cannot read as a torch checkpoint"),
    (b"\x00garbage\xff" * 100, "checkpoint", "cannot read as a torch checkpoint"),
    (b"", "official", "cannot read as a torch checkpoint"),
    (b"PK\x03\x04 not really a zip", "official", "cannot read as a torch checkpoint"),
    ("official-file", "checkpoint", "looks like an official score_sde checkpoint"),
    ("project-file", "official", "is a scorebench checkpoint, not an official score_sde one; use kind: checkpoint"),
])
def test_bad_checkpoint_files(capsys, tmp_path, content, kind, needle):
    ck = tmp_path / "ck.pt"
    if content == "official-file":
        _official_like(ck)
    elif content == "project-file":
        shutil.copy(WEIGHTS / "digits_vp.pt", ck)
    else:
        ck.write_bytes(content)
    section = {"kind": "checkpoint", "path": str(ck)} if kind == "checkpoint" else \
        {"kind": "official", "checkpoint": str(ck), "config": "vp/cifar10_ddpmpp_continuous"}
    grid = write_grid(tmp_path / "g.yaml", models={"m": section})
    field = "field 'path'" if kind == "checkpoint" else "field 'checkpoint'"
    line = assert_refused(capsys, tmp_path, grid, "models.m", f"{field}: {ck}", needle)
    if kind == "checkpoint" and content == "official-file":
        assert "use kind: official" in line


def test_bad_prior_file(capsys, tmp_path):
    (tmp_path / "p.pt").write_bytes(b"")
    grid = write_grid(tmp_path / "g.yaml", sweeps=[{"solver": "pf_euler", "n_steps": 3,
                                                    "prior": {"kind": "file", "path": str(tmp_path / "p.pt")}}])
    assert_refused(capsys, tmp_path, grid, "sweeps[0]", "field 'prior.path'", "is not a readable prior file")


def test_non_utf8_grid_names_the_file(capsys, tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    line = assert_refused(capsys, tmp_path, grid, "", "not a UTF-8 text file", "byte 0xe9")
    assert line.startswith(f"error: {grid}: ")


# Duplicate mapping keys (issue 28): YAML keeps the last silently; refused at every level, with the line.
DUPLICATES = {
    "top level": ("name: dup\n"
                  "models:\n"
                  "  m: {kind: mixture, means: [[-0.5, 0.0], [0.5, 0.0]], std: 0.1, sde: {kind: vp}}\n"
                  "eval: {num_samples: 4, batch_size: 4, device: cpu}\n"
                  "sweeps:\n"
                  "  - {solver: pf_euler, n_steps: 3}\n"
                  "name: dup2\n", "'name' at line 7, column 1 (first at line 1, column 1)"),
    "sweep entry": ("name: dup\n"
                    "models:\n"
                    "  m: {kind: mixture, means: [[-0.5, 0.0], [0.5, 0.0]], std: 0.1, sde: {kind: vp}}\n"
                    "eval: {num_samples: 4, batch_size: 4, device: cpu}\n"
                    "sweeps:\n"
                    "  - {solver: pf_euler, n_steps: 3}\n"
                    "  - {solver: euler_maruyama, n_steps: 5, n_steps: 7}\n",
                    "'n_steps' at line 7, column 42 (first at line 7, column 30)"),
    "model's sde, block style": ("name: dup\n"
                                 "models:\n"
                                 "  m:\n"
                                 "    kind: mixture\n"
                                 "    means: [[-0.5, 0.0], [0.5, 0.0]]\n"
                                 "    std: 0.1\n"
                                 "    sde:\n"
                                 "      kind: vp\n"
                                 "      beta_max: 20.0\n"
                                 "      beta_max: 10.0\n"
                                 "eval: {num_samples: 4, batch_size: 4, device: cpu}\n"
                                 "sweeps:\n"
                                 "  - {solver: pf_euler, n_steps: 3}\n",
                                 "'beta_max' at line 10, column 7 (first at line 9, column 7)"),
}


@pytest.mark.parametrize("level", list(DUPLICATES))
def test_duplicate_keys_refused_at_every_level(capsys, tmp_path, level):
    text, needle = DUPLICATES[level]
    grid = tmp_path / "g.yaml"
    grid.write_text(text)
    line = assert_refused(capsys, tmp_path, grid, "", f"duplicate key {needle}", "remove one")
    assert "YAML would keep only the last value" in line


def test_merge_keys_may_still_be_overridden(tmp_path):
    """``<<: *base`` then the same key is YAML's override, not a duplicate."""
    grid = tmp_path / "g.yaml"
    grid.write_text("name: merge\n"
                    "models: {m: {kind: mixture, means: [[-0.5, 0.0], [0.5, 0.0]], std: 0.1, sde: {kind: vp}}}\n"
                    "eval: {num_samples: 4, batch_size: 4, device: cpu}\n"
                    "sweeps:\n"
                    "  - &base {solver: pf_euler, n_steps: 3}\n"
                    "  - {<<: *base, n_steps: 5}\n")
    assert sorted(r.options["n_steps"] for r in load_grid(grid).runs) == [3, 5]


# --- 5. exit status of a rerun that skips failed records -------------------------------------------
def test_failed_earlier_exits_1_and_says_how_to_retry(capsys, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", models={
        "good": MIXTURE, "bad": {"kind": "callable", "target": SLOW_OR_NAN, "options": {"nan": True}}})
    out = tmp_path / "out"
    code, lines = run_cli(capsys, grid, out, "--no-report")
    assert code == 1 and "2 ran (1 ok, 1 failed;" in lines[-1], lines
    before = {k: r["created"] for k, r in read_records(out).items()}
    code, lines = run_cli(capsys, grid, out, "--no-report")
    assert code == 1, lines
    assert len(lines) == 1 and "0 ran" in lines[0] and "1 already ok, 1 failed earlier" in lines[0]
    assert "1 not ok: rerun with --retry-failed to retry them" in lines[0]
    assert {k: r["created"] for k, r in read_records(out).items()} == before  # nothing rewritten


# --- 6. SIGINT / SIGTERM: one line, report rebuilt from what finished, 130 / 143 ---------------------
def _disposition(sig: signal.Signals, handler):
    """preexec_fn: the child's disposition of ``sig`` set here, not inherited from whoever started pytest
    (a background job of a non-interactive shell, nohup and many CI runners start it with SIGINT ignored)."""
    def set_it() -> None:
        signal.signal(sig, handler)
    return set_it


def _start_slow_sweep(tmp_path, sig, handler, *extra: str) -> tuple[subprocess.Popen, Path]:
    """``python -m bench.run`` on 12 slow runs (``extra`` arguments), with ``sig``'s disposition ``handler``;
    returns once 2 records are written."""
    model = {"kind": "callable", "target": SLOW_OR_NAN, "options": {"delay": 0.02}}
    grid = write_grid(tmp_path / "g.yaml", models={"m": model}, sweeps=[{"solver": "pf_euler",
                                                                          "n_steps": list(range(10, 22))}])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", "--grid", str(grid), "--out", str(out),
                             "--no-progress", *extra], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_disposition(sig, handler))
    deadline = time.monotonic() + 180
    try:
        while len(list((out / "runs").glob("*.json"))) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no records after 180 s"
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        raise
    return proc, out


def _signal_and_wait(proc: subprocess.Popen, sig: signal.Signals) -> tuple[str, list[str]]:
    """Send ``sig``, wait for the exit; (stderr, its non-blank lines)."""
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("workers", ["1", "2"], ids=["in-process", "2-workers"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly(tmp_path, sig, workers):
    """One line on stderr (no traceback, no leaked-semaphore warning from the workers' queues), exit 128 + sig."""
    proc, out = _start_slow_sweep(tmp_path, sig, signal.SIG_DFL, "--workers", workers)
    err, lines = _signal_and_wait(proc, sig)
    assert proc.returncode == 128 + sig, err
    assert len(lines) == 1, err  # no traceback
    assert f"stopped by {signal.Signals(sig).name}" in lines[0] and "report rebuilt" in lines[0]
    records = read_records(out)
    assert 2 <= len(records) < 12 and all(r["status"] == "ok" for r in records.values())
    assert f"{len(records)} of 12 runs have a record" in lines[0]
    with open(out / "runs.csv") as f:
        assert sum(1 for _ in f) == len(records) + 1  # the report is rebuilt from exactly what finished
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".tmp-")]
    assert json.loads((out / "runs" / f"{next(iter(records))}.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("sig, stops", [(signal.SIGINT, False), (signal.SIGTERM, True)], ids=["SIGINT", "SIGTERM"])
def test_inherited_ignored_signal(tmp_path, sig, stops):
    """Started with ``sig`` ignored (docs/harness.md): SIGINT stays ignored, as Python leaves it (the caller's
    wish: the sweep finishes, exit 0); SIGTERM is handled by the CLI whatever it inherited (exit 143)."""
    proc, out = _start_slow_sweep(tmp_path, sig, signal.SIG_IGN)
    err, lines = _signal_and_wait(proc, sig)
    assert len(lines) == 1, err
    if stops:
        assert proc.returncode == 143 and "stopped by SIGTERM" in lines[0], err
        assert len(read_records(out)) < 12
    else:
        assert proc.returncode == 0 and "12 ran (12 ok" in lines[0], err
        assert len(read_records(out)) == 12


# --- text-to-image pipelines: prompts files (issue 26) ----------------------------------------------
@pytest.fixture(scope="module")
def tiny_pipes(tmp_path_factory):
    """A tiny Stable-Diffusion-like text pipeline, a DiT (class) pipeline and a DDPM (UNet2DModel, pixel space)
    pipeline, saved outside each test's tmp_path."""
    diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")
    pytest.importorskip("transformers", reason="optional extra scorebench[diffusers] not installed")
    from tests.test_diffusers_adapter import small_unet
    from tests.tiny_pipelines import dit_pipeline, sd_pipeline

    root = tmp_path_factory.mktemp("pipes")
    diffusers.DDPMPipeline(unet=small_unet(), scheduler=diffusers.DDPMScheduler()).save_pretrained(root / "ddpm")
    return {"sd": sd_pipeline(root / "sd"), "dit": dit_pipeline(root / "dit"), "ddpm": root / "ddpm"}


PROMPT_CASES = {
    # case: (prompts file content or None (absent), prompts section beyond 'file', model, needles)
    "prompts file missing": (None, {}, "sd", ["prompts file", "p.txt", "not found"]),
    "prompts file empty": ("\n  \n", {}, "sd", ["prompts file", "holds no prompts"]),
    "prompts file not UTF-8": (b"a cat\n\xff\xfe dog\n", {}, "sd", ["prompts file", "not UTF-8", "0xff"]),
    "fewer prompts than samples": ("a cat\ntwo dog\n", {}, "sd", ["has 2 prompts, fewer than num_samples 4",
                                                                  "prompts.pick: seed"]),
    "csv without the column": ("id,text\n1,a cat\n", {"column": "caption"}, "sd",
                               ["no column 'caption'", "expected one of: id, text"]),
    "unknown pick": ("a cat\n", {"pick": "random"}, "sd", ["field 'prompts.pick' must be one of: index, seed"]),
    "text pipeline without prompts": (None, None, "sd", ["text-to-image pipeline", "field 'prompts' is required"]),
    "prompts for a class-conditional DiT": ("a cat\n", {}, "dit", ["field 'prompts' given", "no text encoder"]),
}


@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_prompts_refused_at_load(capsys, tmp_path, tiny_pipes, case):
    """Exit 2 at load, one line naming the file and the field, nothing written."""
    content, extra, pipe, needles = PROMPT_CASES[case]
    prompts = tmp_path / ("p.csv" if "column" in (extra or {}) else "p.txt")
    if content is not None:
        prompts.write_bytes(content if isinstance(content, bytes) else content.encode())
    model = {"kind": "diffusers", "path": str(tiny_pipes[pipe]), **({"label": 1} if pipe == "dit" else {})}
    if extra is not None:
        model["prompts"] = {"file": str(prompts), **extra}
    grid = write_grid(tmp_path / "g.yaml", models={"m": model},
                      sweeps=[{"solver": "ddim", "n_steps": 3, "schedule": "leading"}])
    assert_refused(capsys, tmp_path, grid, "models.m", *needles)


SIZE_CASES = {
    # case: (model, size, needles)
    "size not integers": ("sd", [16.0, 16], ["field 'size' must be [height, width]", "two positive integers"]),
    "size a string": ("sd", "16x16", ["field 'size' must be [height, width]", "two positive integers"]),
    "size of one side": ("sd", [16], ["field 'size'", "two positive integers"]),
    "size zero": ("sd", [0, 16], ["field 'size'", "two positive integers"]),
    "size not divisible": ("sd", [16, 20], ["field 'size' must be [height, width] divisible by 8",
                                            "StableDiffusionPipeline.check_inputs: 8, and the VAE scale factor 2"]),
    "size not square for DiT": ("dit", [16, 32], ["field 'size' must be square for a DiT pipeline"]),
    "size on a UNet2DModel": ("ddpm", [16, 16], ["field 'size' given", "holds a UNet2DModel", "remove it"]),
}


@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_size_refused_at_load(capsys, tmp_path, tiny_pipes, case):
    """A model section's ``size`` that is not two positive integers, not divisible as the pipeline's
    check_inputs asks, or on a pixel-space UNet2DModel folder: exit 2 at load, one line naming the field,
    nothing written."""
    pipe, size, needles = SIZE_CASES[case]
    (tmp_path / "p.txt").write_text("a cat\ntwo dog\na red car\nthe blue table\n")
    model = {"kind": "diffusers", "path": str(tiny_pipes[pipe]), "size": size,
             **({"label": 1} if pipe == "dit" else {}), **({"prompts": {"file": str(tmp_path / "p.txt")}}
                                                          if pipe == "sd" else {})}
    grid = write_grid(tmp_path / "g.yaml", models={"m": model},
                      sweeps=[{"solver": "ddim", "n_steps": 3, "schedule": "leading"}])
    assert_refused(capsys, tmp_path, grid, "models.m", *needles)
