"""bits/dim over a dataset split through the harness: passes, standard error, NFE."""

from __future__ import annotations

from tests.helpers import DIGITS_VP, run_grid_text


def test_bpd_repeats_mean_and_stderr(tmp_path):
    (record,) = run_grid_text(tmp_path,
        f"name: bpd\nmodel: {{kind: checkpoint, path: {DIGITS_VP}}}\n"
        "data: {dataset: digits, split: test, bpd_samples: 4, bpd_batch_size: 4, bpd_repeats: 2}\n"
        "eval: {num_samples: 4, batch_size: 4, seeds: '0-3', device: cpu, threads: 1, metrics: [bpd]}\n"
        "sweeps:\n  - {solver: pf_euler, n_steps: 3, likelihood: {rtol: 1.0e-2, atol: 1.0e-2, eps: 1.0e-3}}\n")
    protocol = record["metrics"]["bpd"]["protocol"]
    assert protocol["repeats"] == 2 and len(protocol["nfe_per_batch"]) == 2 and protocol["levels"] == 17
    assert protocol["stderr"] > 0 and 0 < record["bpd"] < 8
