"""bits/dim over a dataset split through the harness: passes, standard error, NFE."""

from __future__ import annotations

import json
from pathlib import Path

from bench.run import main

ROOT = Path(__file__).resolve().parents[1]


def test_bpd_repeats_mean_and_stderr(tmp_path):
    grid = tmp_path / "bpd.yaml"
    grid.write_text(
        f"name: bpd\nmodel: {{kind: checkpoint, path: {ROOT / 'models/weights/digits_vp.pt'}}}\n"
        "data: {dataset: digits, split: test, bpd_samples: 4, bpd_batch_size: 4, bpd_repeats: 2}\n"
        "eval: {num_samples: 4, batch_size: 4, seeds: '0-3', device: cpu, threads: 1, metrics: [bpd]}\n"
        "sweeps:\n  - {solver: pf_euler, n_steps: 3, likelihood: {rtol: 1.0e-2, atol: 1.0e-2, eps: 1.0e-3}}\n")
    assert main(["--grid", str(grid), "--out", str(tmp_path / "out"), "--no-progress", "--no-report"]) == 0
    (path,) = (tmp_path / "out" / "runs").glob("*.json")
    record = json.loads(path.read_text())
    protocol = record["metrics"]["bpd"]["protocol"]
    assert protocol["repeats"] == 2 and len(protocol["nfe_per_batch"]) == 2 and protocol["levels"] == 17
    assert protocol["stderr"] > 0 and 0 < record["bpd"] < 8
