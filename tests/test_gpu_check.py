"""scripts/gpu_check.py (issue 20) keeps working: its ``--smoke`` mode runs every section on CPU at
tiny sizes (one subprocess, as a user runs it), each section's JSON line says what it should, and the
FLOP count it reports agrees with a count from the layers' definitions."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script("gpu_check")
gpu_report = _load_script("gpu_report")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(exit code, {section: its JSON line}, the --out file's lines, stderr) of one ``--smoke`` run."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "smoke.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--workdir", str(tmp / "work")],
                       capture_output=True, text=True, env=env, timeout=900)
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return p.returncode, {line["section"]: line for line in lines}, out.read_text().splitlines(), p.stderr


def _result(smoke, name: str) -> dict:
    _, lines, _, stderr = smoke
    line = lines[name]
    assert line["ok"], f"section {name} failed: {line.get('error') or line['result'].get('failures')}\n{stderr[-2000:]}"
    return line["result"]


def test_smoke_runs_every_section_and_prints_one_json_line_each(smoke):
    code, lines, written, stderr = smoke
    assert list(lines) == [*gpu_check.SECTIONS, "summary"], stderr[-2000:]
    failed = {k: v.get("error") or v.get("result", {}).get("failures") for k, v in lines.items() if not v["ok"]}
    assert not failed, f"{failed}\n{stderr[-2000:]}"
    assert code == 0
    assert [json.loads(line)["section"] for line in written] == list(lines)  # --out holds the same lines
    assert lines["summary"]["sections"] == dict.fromkeys(gpu_check.SECTIONS, True)


def test_forward_section(smoke):
    rows = _result(smoke, "forward")["rows"]
    cfg = gpu_check.SMOKE
    assert {(r["network"], r["batch"], r["variant"]) for r in rows} == {
        (n, b, v) for n in gpu_check.NETWORKS for b in cfg.batches for v in gpu_check.VARIANTS}
    by = {(r["network"], r["batch"], r["variant"]): r for r in rows}
    small, large = cfg.batches
    for r in rows:
        assert r["ms"] > 0 and r["reps"] >= cfg.min_reps and r["fraction_of_bf16_matmul"] > 0
        # FLOPs are linear in the batch (every counted op is per sample).
        assert by[(r["network"], large, r["variant"])]["gflop"] * small == pytest.approx(
            by[(r["network"], small, r["variant"])]["gflop"] * large, rel=1e-12)
        if r["variant"] == "float32":
            assert r["rel_err_vs_float32"] == 0.0  # the same computation again
        elif r["variant"] == "channels_last":
            assert r["rel_err_vs_float32"] < 1e-5  # float32 maths in another memory order
        else:  # bf16 keeps 8 mantissa bits (unit round-off 2^-9 ≈ 2e-3); a few layers deep: ~1e-2
            assert 0 < r["rel_err_vs_float32"] < 0.05
    assert by[("ncsnpp_deep", small, "float32")]["gflop"] > by[("ncsnpp", small, "float32")]["gflop"]


def test_ratio_section_runs_every_family_through_the_harness(smoke):
    rows = {r["solver"]: r for r in _result(smoke, "ratio")["rows"]}
    assert set(rows) == {*gpu_check._families(gpu_check.SMOKE), "likelihood"}
    for solver, r in rows.items():
        assert r["status"] == "ok", (solver, r)
        assert isinstance(r["nfe"], int) and r["nfe"] > 0
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["limit_s"] == pytest.approx(r["nfe"] * r.get("forward_ms", r.get("forward_backward_ms")) / 1e3)
    assert rows["likelihood"]["n_vjp"] == rows["likelihood"]["nfe"]  # one forward and one VJP per evaluation
    assert rows["pc"]["nfe"] > rows["euler_maruyama"]["nfe"]  # a corrector call per step on top


def test_bf16_section(smoke):
    r = _result(smoke, "bf16")
    assert r["nonfinite"] == {"float32": 0, "bf16": 0}
    rerun, bf16 = r["float32_rerun_vs_float32"], r["bf16_vs_float32"]
    assert rerun["max_abs"] == 0.0  # the same seeds give the same float32 samples on CPU
    assert bf16["max_abs"] > 0 and 0 < bf16["rel_rms_median"] <= bf16["rel_rms_max"]
    assert abs(r["fd"]["float32_rerun_vs_float32"]) < 1e-9  # a set against itself
    assert r["fd"]["bf16_vs_float32"] > 0 and r["fd"]["float32_other_seeds_vs_float32"] > 0
    assert r["nfe"] == r["nfe_bf16"] > 0


def test_oom_section_splits_and_completes(smoke):
    r = _result(smoke, "oom")
    assert r["status"] == "ok" and r["oom_splits"] >= 1 and r["split_and_completed"]
    assert r["reference"] == {"status": "ok", "oom_splits": 0}
    assert r["samples_compared"] == gpu_check.SMOKE.batch
    # The split batch gives the unsplit samples (one generator per sample) up to float32 rounding of
    # convolutions blocked by batch size.
    assert r["max_abs_diff_vs_unsplit"] <= 1e-5 * r["max_abs_unsplit"]


def test_workers_section_runs_the_cli(smoke):
    r = _result(smoke, "workers")
    assert r["exit_code"] == 0 and len(r["records"]) == r["runs"] >= 2
    assert all(rec["status"] == "ok" and rec["executor"] == "local" for rec in r["records"])
    assert r["wall_s"] > r["runs_wall_sum_s"] > 0
    if r["cli_flags"]["--plan"]:
        assert r["plan"]["exit_code"] == 0


def test_compile_section(smoke):
    rows = _result(smoke, "compile")["rows"]
    assert {(r["network"], r["batch"]) for r in rows} == {
        (n, b) for n in gpu_check.SMOKE.compile_networks for b in gpu_check.SMOKE.batches}
    assert all(r["first_call_s"] > 0 and r["ms"] > 0 and r["backend"] == "eager" for r in rows)
    assert all(r["rel_err_vs_eager"] < 1e-6 for r in rows)  # the eager backend runs the same kernels


def test_report_renders_every_section(smoke):
    _, lines, _, _ = smoke
    text = gpu_report.render(list(lines.values()))
    for name in gpu_check.SECTIONS:
        assert f"### {name} (" in text
    assert "SMOKE (CPU, tiny sizes: not a measurement)" in text and "All sections ok: yes" in text
    forward_rows = [t for t in text.splitlines() if t.startswith("| ncsnpp_deep | ")]
    assert len(forward_rows) == len(gpu_check.SMOKE.batches) * len(gpu_check.VARIANTS)
    assert "| likelihood | ok |" in text


def test_flop_count_equals_the_layers_formulas():
    """DDPM++ (no FIR): torch's flop counter equals 2·MACs of every convolution, linear and NIN layer
    plus the two attention products (2 · B · (HW)² · C each), counted here from the definitions."""
    from models.configs import get_config
    from models.networks.blocks import AttnBlockpp
    from models.networks.layers import NIN

    arch, batch = {"nf": 8, "num_res_blocks": 1}, 3
    net = get_config(gpu_check.NETWORKS["ddpmpp"]).build(**arch)
    counted = []

    def hook(m, inputs, out):
        x = inputs[0]
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            counted.append(2 * out.numel() * (m.in_channels // m.groups) * kh * kw)
        elif isinstance(m, nn.Linear):
            counted.append(2 * x.shape[0] * m.in_features * m.out_features)
        elif isinstance(m, NIN):
            B, _, H, W = x.shape
            counted.append(2 * B * H * W * m.W.shape[0] * m.W.shape[1])
        elif isinstance(m, AttnBlockpp):
            B, C, H, W = x.shape
            counted.append(2 * 2 * B * (H * W) ** 2 * C)

    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Linear | NIN | AttnBlockpp):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.randn(batch, 3, 32, 32), torch.full((batch,), 500.0))
    assert gpu_check.count_flops("ddpmpp", arch, batch) == sum(counted) > 0


def test_plan_duration_parser():
    parse = gpu_check.parse_total_seconds
    assert parse("run a  12.5 s\ntotal: 3 runs, 1.2e10 evaluations, ≈ 1.5 GPU-hours") == 5400.0
    assert parse("Total 90 s") == 90.0
    assert parse("total 2 min") == 120.0
    assert parse("no estimate here") is None


def test_bad_arguments_exit_2(capsys):
    assert gpu_check.main(["--sections", "env,nope"]) == 2
    assert "unknown section(s) nope" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu_check.main([]) == 2  # full sizes want a GPU
        assert "--smoke" in capsys.readouterr().err
