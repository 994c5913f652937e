"""The metric registry: one entry per metric is all the harness reads, and bench/metrics is a leaf.

* No module of bench/metrics imports from the rest of bench (read from the sources' imports).
* Every entry is consistent: its key is its name, its columns have a direction in the report, its
  applicability answers for images, points and conditional models.
* Adding a metric is one entry: a toy metric registered in a test (no other file touched) is
  validated by the grid loader, hashed into the run's identity with the files it declares, computed,
  merged across shards and recorded with its uncertainty, and ranked in the report by its direction.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import bench.metrics
from bench.metrics import METRICS, SAMPLE_METRICS, MetricEntry
from bench.metrics.feature_fd import check_state
from bench.metrics.uncertainty import GROUPS, jackknife, leave_one_out, seed_groups

METRICS_DIR = Path(bench.metrics.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_metrics_import_nothing_from_the_rest_of_bench():
    offending = {f"{p.name}: {m}" for p in sorted(METRICS_DIR.glob("*.py")) for m in _imports(p)
                 if (m == "bench" or m.startswith("bench.")) and not m.startswith("bench.metrics")}
    assert not offending, offending


def test_every_entry_is_complete():
    from bench.grid import METRIC_NAMES
    from bench.report_tables import LOWER_IS_BETTER

    assert set(METRIC_NAMES) == set(METRICS)
    assert set(SAMPLE_METRICS) == set(METRICS) - {"bpd"}
    for name, entry in METRICS.items():
        assert isinstance(entry, MetricEntry) and entry.name == name and entry.summary
        for column, lower in entry.columns().items():
            assert LOWER_IS_BETTER[column] is lower
        for kind, shape, conditional in (("mixture", (2,), False), ("checkpoint", (3, 32, 32), False),
                                          ("edm", (3, 8, 8), True), ("checkpoint", None, False)):
            why = entry.applies(kind, shape, conditional)
            assert why is None or (isinstance(why, str) and why)
    assert METRICS["loglik_exact"].columns() == {"loglik_exact": False}
    assert METRICS["prdc"].columns() == {"precision": False, "recall": False, "density": False, "coverage": False}
    assert METRICS["fid"].applies("mixture", (2,), False) is not None
    assert METRICS["fd_exact"].applies("checkpoint", (1, 8, 8), False) is not None
    assert METRICS["bpd"].applies("edm", (3, 8, 8), True) is not None


class MeanNorm:
    """A toy metric: mean ‖x‖ of the samples, as sums, with the jackknife over seed groups."""

    name = "mean_norm"

    def __init__(self, offset: float = 0.0, seeds: str | None = None) -> None:
        self.offset, self.seeds = offset, seeds
        self.n, self.sum = torch.zeros(GROUPS, dtype=torch.int64), torch.zeros(GROUPS, dtype=torch.float64)

    def update(self, samples, ids=None):
        norms = samples.reshape(len(samples), -1).double().norm(dim=1)
        g = seed_groups(ids)
        self.n += torch.bincount(g, minlength=GROUPS)
        self.sum.index_add_(0, g, norms)

    def state(self):
        return {"metric": self.name, "n": self.n.clone(), "sum": self.sum.clone()}

    def merge(self, state):
        check_state(self.name, state)
        self.n += state["n"]
        self.sum += state["sum"]

    def compute(self):
        n, s = int(self.n.sum()), float(self.sum.sum())
        value = s / n + self.offset
        reps, used = leave_one_out(self.n.tolist(), lambda g: (s - float(self.sum[g])) / (n - int(self.n[g])) +
                                   self.offset)
        return value, {"metric": self.name, "num_generated": n, "seeds": self.seeds,
                       "uncertainty": jackknife(value, reps, used)}


def test_a_metric_is_one_entry(tmp_path, monkeypatch):
    from bench.grid import GridError, parse_grid
    from bench.records import read_records
    from bench.report import build_report
    from bench.report_tables import LOWER_IS_BETTER
    from bench.run import run_grid

    table = tmp_path / "offset.txt"
    table.write_text("0.5")
    entry = MetricEntry(
        name="mean_norm", summary="mean norm of the samples", build=MeanNorm,
        options=lambda facts: {"offset": float(Path(facts.data["offset_file"]).read_text()), "seeds": facts.seeds},
        applies=lambda kind, shape, cond: None if kind == "mixture" else "it needs a mixture",
        files=lambda data: {"offset": Path(data["offset_file"])}, reads_data=True, lower_is_better=False,
        keys=("offset_file",))
    monkeypatch.setitem(METRICS, "mean_norm", entry)
    monkeypatch.setitem(LOWER_IS_BETTER, "mean_norm", False)
    raw = {"name": "toy", "models": {"m": {"kind": "mixture", "means": [[-1.0, 0.0], [1.0, 0.0]], "std": 0.2,
                                           "sde": {"kind": "vp"}, "data": {"offset_file": str(table)}}},
           "eval": {"num_samples": 40, "batch_size": 8, "seeds": "0-39", "metrics": ["mean_norm"],
                    "device": "cpu", "shard_size": 16},
           "sweeps": [{"solver": "pf_euler", "n_steps": [4, 8]}]}
    grid = parse_grid(raw, "toy.yaml")
    run = grid.runs[0]
    assert set(run.inputs) == {"mean_norm:offset"}  # its declared file, hashed into the identity
    table.write_text("0.25")
    assert parse_grid(raw, "toy.yaml").runs[0].run_id != run.run_id
    run_grid(grid, tmp_path / "out", report=False, progress=False)
    records = read_records(tmp_path / "out")
    assert len(records) == 2
    for r in records.values():
        assert r["status"] == "ok" and r["shards"]["count"] == 3
        entry_ = r["metrics"]["mean_norm"]
        assert entry_["uncertainty"]["groups"] == GROUPS and entry_["protocol"]["num_generated"] == 40
        assert r["mean_norm"] == entry_["value"] > 0.25
    build_report(tmp_path / "out")
    assert "mean_norm" in (tmp_path / "out" / "summary.csv").read_text()
    bad = {**raw, "models": {"m": {"kind": "checkpoint", "path": "models/weights/digits_vp.pt"}}}
    with pytest.raises(GridError, match="metric 'mean_norm' cannot apply to model 'm': it needs a mixture"):
        parse_grid(bad, "toy.yaml")
