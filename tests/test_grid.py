"""Grid loading: expansion, stable run ids, and the bad-input battery (one-line error, exit 2, nothing written)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from bench.grid import GridError, expand, load_grid, parse_grid
from bench.run import main

ROOT = Path(__file__).resolve().parents[1]

MIXTURE = {"kind": "mixture", "sde": {"kind": "vp"}, "means": [[-0.5, 0.0], [0.5, 0.0]], "std": 0.1,
           "metrics": ["fd_exact"]}
BASE = {"name": "tiny", "model": MIXTURE, "eval": {"num_samples": 8, "batch_size": 4},
        "sweeps": [{"solver": "euler_maruyama", "n_steps": [5, 10]},
                   {"solver": "pc", "snr": [0.1, 0.2], "n_steps": [5, 10], "T": [1.0, 0.8]}]}


def grid(**changes) -> dict:
    g = copy.deepcopy(BASE)
    g.update(changes)
    return g


def test_expansion_is_the_cartesian_product():
    spec = parse_grid(grid(), "tiny.yaml")
    assert len(spec.runs) == 2 + 2 * 2 * 2
    pcs = [r for r in spec.runs if r.solver == "pc"]
    assert {(r.options["snr"], r.options["n_steps"], r.T) for r in pcs} == \
        {(s, n, T) for s in (0.1, 0.2) for n in (5, 10) for T in (1.0, 0.8)}
    assert all(r.metrics == ("fd_exact",) for r in spec.runs)
    assert all(r.seeds == "0-7" for r in spec.runs)


def test_run_id_is_stable_and_depends_on_what_matters():
    a = parse_grid(grid(), "a.yaml")
    b = parse_grid(grid(), "b.yaml", overrides={"device": "cpu"})  # file name and device: same runs
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]
    assert len({r.run_id for r in a.runs}) == len(a.runs)
    c = parse_grid(grid(), "a.yaml", overrides={"num_samples": 4})
    assert not {r.run_id for r in a.runs} & {r.run_id for r in c.runs}
    assert all(len(r.run_id) == 10 for r in a.runs)


def test_duplicate_cells_are_run_once():
    g = grid(sweeps=[{"solver": "pf_euler", "n_steps": [5, 5, 6]}, {"solver": "pf_euler", "n_steps": 6}])
    assert len(parse_grid(g).runs) == 2


@pytest.mark.parametrize("name", ["quickstart", "cifar10", "digits", "fashion_mnist"])
def test_shipped_grids_load(name):
    spec = load_grid(ROOT / "grids" / f"{name}.yaml", files=False)
    assert spec.name == name and len(spec.runs) >= 20
    assert len({r.run_id for r in spec.runs}) == len(spec.runs)


def test_cifar10_grid_covers_the_study(monkeypatch, tmp_path):
    spec = load_grid(ROOT / "grids" / "cifar10.yaml", files=False)
    from solvers import SAMPLERS

    assert {r.solver for r in spec.runs} == set(SAMPLERS)
    steps = {r.options["n_steps"] for r in spec.runs if "n_steps" in r.options}
    assert {100, 2000} <= steps and max(steps) == 2000
    rtols = {r.options["rtol"] for r in spec.runs if "rtol" in r.options}
    assert {1e-1, 1e-5} <= rtols
    assert spec.eval.num_samples == 50000 and all("fid" in r.metrics or r.metrics == ("bpd",) for r in spec.runs)
    assert any("bpd" in r.metrics for r in spec.runs) and {r.T for r in spec.runs} >= {0.4, 1.0}
    # Missing checkpoints: one line saying where to get them; found under $SCOREBENCH_CKPT_DIR.
    monkeypatch.delenv("SCOREBENCH_CKPT_DIR", raising=False)
    with pytest.raises(GridError, match="Google Drive"):
        load_grid(ROOT / "grids" / "cifar10.yaml")
    for section in spec.models.values():
        (tmp_path / section["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / section["checkpoint"]).write_bytes(b"")
    monkeypatch.setenv("SCOREBENCH_CKPT_DIR", str(tmp_path))
    with pytest.raises(GridError, match="cannot read as a torch checkpoint"):  # empty files are refused at load
        load_grid(ROOT / "grids" / "cifar10.yaml")
    for section in spec.models.values():  # the official layout (network keys are checked when it loads)
        torch.save({"model": {}, "ema": {}, "optimizer": {}, "step": 0}, tmp_path / section["checkpoint"])
    assert len(load_grid(ROOT / "grids" / "cifar10.yaml").runs) == len(spec.runs)


@pytest.mark.parametrize("changes, needle", [
    ({"colour": 1}, "unknown key 'colour' in the grid; expected one of"),
    ({"eval": {"num_samples": 8, "batchsize": 4}}, "eval: unknown key 'batchsize'"),
    ({"sweeps": [{"solver": "rk4", "n_steps": 5}]}, "sweeps[0]: invalid solver 'rk4'; expected one of: euler_maruyama"),
    ({"sweeps": [{"solver": "pc", "tol": 0.1}]}, "sweeps[0]: unknown option 'tol' for solver 'pc'; expected one of:"),
    ({"sweeps": [{"solver": "pc", "n_steps": "ten"}]}, "field 'n_steps' must be a positive integer, got 'ten'"),
    ({"sweeps": [{"solver": "pc", "n_steps": -3}]}, "field 'n_steps' must be a positive integer, got -3"),
    ({"sweeps": [{"solver": "pc", "n_steps": [10, 0]}]}, "field 'n_steps' must be a positive integer, got 0"),
    ({"sweeps": [{"solver": "pc", "snr": 0}]}, "field 'snr' must be a positive number, got 0"),
    ({"sweeps": [{"solver": "pc", "T": 1.5}]}, "field 'T' must be in (eps=0, 1], got 1.5"),
    ({"sweeps": [{"solver": "pc", "T": 0.01, "eps": 0.1}]}, "field 'T' must be in (eps=0.1, 1], got 0.01"),
    ({"sweeps": [{"solver": "pc", "T": "one"}]}, "field 'T' must be a number"),
    ({"eval": {"num_samples": 0}}, "field 'num_samples' must be a positive integer, got 0"),
    ({"eval": {"num_samples": 8, "dtype": "float8"}}, "invalid dtype 'float8'; expected one of: float32"),
    ({"eval": {"num_samples": 8, "metrics": ["fdi"]}}, "invalid metric 'fdi'; expected one of:"),
    ({"model": {**MIXTURE, "kind": "gan"}}, "model: invalid model kind 'gan'; expected one of: mixture"),
    ({"model": {**MIXTURE, "colour": 2}}, "model: unknown key 'colour' in model section (kind 'mixture')"),
    ({"sweeps": [{"solver": "pc", "model": "other"}]}, "unknown model 'other'; expected one of: model"),
    ({"sweeps": []}, "sweeps: must be a non-empty list"),
    ({"name": 3}, "field 'name' must be a non-empty string"),
])
def test_bad_grids_name_file_entry_and_field(changes, needle):
    with pytest.raises(GridError) as err:
        parse_grid(grid(**changes), "grids/bad.yaml")
    msg = str(err.value)
    assert msg.startswith("grids/bad.yaml"), msg
    assert needle in msg, msg
    assert "\n" not in msg


OFFICIAL = {"kind": "official", "checkpoint": "no/such/checkpoint_8.pth", "config": "vp/cifar10_ddpmpp_continuous"}
BAD_FILES = {
    "malformed": ("name: x\nsweeps: [ {solver: pc\n", "malformed YAML at line"),
    "unknown_key": (grid(extra=1), "unknown key 'extra'"),
    "unknown_solver": (grid(sweeps=[{"solver": "rk4_magic"}]), "invalid solver 'rk4_magic'"),
    "wrong_type": (grid(eval={"num_samples": "many"}), "field 'num_samples' must be a positive integer"),
    "negative_steps": (grid(sweeps=[{"solver": "pf_heun", "n_steps": -10}]), "must be a positive integer, got -10"),
    "zero_tolerance": (grid(sweeps=[{"solver": "pc", "snr": 0.0}]), "field 'snr' must be a positive number"),
    "T_outside": (grid(sweeps=[{"solver": "pc", "T": 2.0}]), "field 'T' must be in (eps=0, 1], got 2.0"),
    "missing_checkpoint": (grid(model=OFFICIAL), "official checkpoint 'no/such/checkpoint_8.pth' not found"),
    "missing_dataset": (grid(model={**MIXTURE, "metrics": ["bpd"], "data": {"dataset": "cifar10",
                                                                             "root": "/nonexistent/cifar"}}),
                        "CIFAR-10"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SCOREBENCH_CKPT_DIR", raising=False)
    content, needle = BAD_FILES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    out = tmp_path / "out"
    assert main(["--grid", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert needle in err, err
    assert str(path) in err, err
    assert not out.exists()
    if case == "missing_checkpoint":
        assert "Google Drive" in err and "SCOREBENCH_CKPT_DIR" in err


def test_missing_grid_file(tmp_path, capsys):
    assert main(["--grid", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "grid file not found" in capsys.readouterr().err


def test_dry_run_prints_the_table(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid()))
    assert main(["--grid", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    spec = load_grid(path)
    assert all(r.run_id in out for r in spec.runs)
    assert f"{len(spec.runs)} runs of grid 'tiny'" in out
    assert not (tmp_path / "o").exists()


def test_eval_accel_is_validated_and_only_autocast_changes_identity(tmp_path):
    """GPU-path options in eval.accel: validated at load; autocast is part of a run's identity."""
    from bench.grid import load_grid

    base = ("name: acc\nmodel: {kind: mixture, sde: {kind: vp}, means: [[0.0, 0.0]], std: 0.5}\n"
            "eval: {num_samples: 4, batch_size: 4, seeds: '0-3', accel: %s}\n"
            "sweeps:\n  - {solver: euler_maruyama, n_steps: 10}\n")
    ids = {}
    for name, accel in [("plain", "{}"), ("cl", "{channels_last: true, max_batch: 2}"), ("bf16", "{autocast: bf16}")]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(base % accel)
        ids[name] = expand(load_grid(path))[0].run_id
    assert ids["plain"] == ids["cl"] != ids["bf16"]
    for bad, msg in [("{autocast: int8}", "expected one of: none, bf16, fp16"),
                     ("{compile: 1}", "must be true or false"), ("{max_batch: 0}", "positive integer"),
                     ("{fast: true}", "unknown key 'fast'")]:
        path = tmp_path / "bad.yaml"
        path.write_text(base % bad)
        with pytest.raises(GridError, match=msg):
            load_grid(path)
