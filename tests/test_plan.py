"""``--plan``: counted NFE on a proxy equals the real runs' NFE for fixed-step samplers; adaptive ones
are labelled estimates; nothing is written."""

from __future__ import annotations

import yaml

from bench.grid import load_grid
from bench.plan import plan_rows
from bench.records import read_records
from bench.run import main

GRID = {"name": "plan", "metrics": ["fd_exact"], "eval": {"num_samples": 6, "batch_size": 3, "device": "cpu"},
        "model": {"kind": "mixture", "sde": {"kind": "vp"}, "means": [[0.0, 0.0], [0.6, 0.6]], "std": 0.1},
        "sweeps": [{"solver": ["pf_euler", "euler_maruyama", "ddim", "edm_heun"], "n_steps": [4, 7]},
                   {"solver": "adaptive_em", "rtol": 0.1, "atol": 0.01}]}


def test_plan_counts_the_runs_nfe_and_labels_estimates(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(GRID))
    out = tmp_path / "out"
    assert main(["--grid", str(path), "--out", str(out), "--plan"]) == 0
    text = capsys.readouterr().out
    assert not out.exists(), "--plan writes nothing"
    assert "9 runs" in text and "network evaluations" in text and "~" in text
    assert main(["--grid", str(path), "--out", str(out), "--no-progress", "--no-report"]) == 0
    records = read_records(out)
    for row in plan_rows(load_grid(path)):
        r = records[row["run"].run_id]
        if row["run"].solver == "adaptive_em":
            assert not row["exact"] and row["nfe"] > 0
        else:  # fixed steps: the proxy's counted NFE is the run's, batch for batch
            assert row["exact"] and row["nfe"] == r["nfe"] == r["nfe_per_batch"][0], row["run"].solver
            assert row["evaluations"] == r["nfe_total"] * 3  # NFE per batch × samples
        assert row["seconds"] is not None and row["seconds"] > 0
