"""eval.seed_sets: each cell on disjoint seed sets, reported as mean ± std and minimum columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.grid import GridError, parse_grid
from bench.seeds import SeedRanges


def _raw(seed_sets=None, metrics=("fd_exact", "loglik_exact")) -> dict:
    ev = {"num_samples": 20, "batch_size": 10, "seeds": "0-19", "metrics": list(metrics), "device": "cpu"}
    if seed_sets is not None:
        ev["seed_sets"] = seed_sets
    return {"name": "sets", "models": {"m": {"kind": "mixture", "means": [[-0.5, 0.0], [0.5, 0.0]], "std": 0.2,
                                             "sde": {"kind": "vp"}}},
            "eval": ev, "sweeps": [{"solver": "pf_euler", "n_steps": [4, 8]}]}


def test_edm_seed_sets():
    assert [str(s) for s in SeedRanges.parse("0-49999").seed_sets(3)] == ["0-49999", "50000-99999", "100000-149999"]
    assert [str(s) for s in SeedRanges.parse("5-9,20-24").seed_sets(2)] == ["5-9,20-24", "25-29,40-44"]


def test_expansion_keeps_set_zero_identical():
    plain = parse_grid(_raw(), "sets.yaml").runs
    three = parse_grid(_raw(3), "sets.yaml").runs
    assert len(three) == 3 * len(plain)
    assert [r.run_id for r in three if r.seed_set == 0] == [r.run_id for r in plain]
    assert [(r.seeds, r.seed_set) for r in three[:3]] == [("0-19", 0), ("20-39", 1), ("40-59", 2)]
    assert len({r.run_id for r in three}) == len(three)
    bpd_only = {**_raw(3), "models": {"m": {"kind": "checkpoint", "path": "models/weights/digits_vp.pt",
                                            "data": {"dataset": "digits", "split": "test", "bpd_samples": 8}}}}
    bpd_only["eval"]["metrics"] = ["bpd"]
    assert len(parse_grid(bpd_only, "sets.yaml", files=False).runs) == 2  # bits/dim draws no samples: not repeated


@pytest.mark.parametrize("bad, message", [(0, "field 'seed_sets' must be a positive integer, got 0"),
                                          ("3", "field 'seed_sets' must be a positive integer"),
                                          (101, "field 'seed_sets' must be at most")])
def test_bad_seed_sets(bad, message):
    with pytest.raises(GridError, match=message):
        parse_grid(_raw(bad), "sets.yaml")


def test_beyond_the_largest_seed_is_refused():
    raw = _raw(3)
    raw["eval"]["seeds"] = f"{2**62}-{2**62 + 19}"
    with pytest.raises(GridError, match="beyond 2\\^63 - 1"):
        parse_grid({**raw, "eval": {**raw["eval"], "seeds": f"{2**63 - 50}-{2**63 - 31}"}}, "sets.yaml")
    parse_grid(raw, "sets.yaml")


def test_report_columns(tmp_path):
    from bench.records import read_records
    from bench.report import build_report
    from bench.run import run_grid

    grid = parse_grid(_raw(3), "sets.yaml")
    run_grid(grid, tmp_path, report=False, progress=False)
    build_report(tmp_path)
    sets = pd.read_csv(tmp_path / "seed_sets.csv")
    assert len(sets) == 2 and (sets["sets"] == 3).all()
    records = list(read_records(tmp_path).values())
    for row in sets.itertuples():
        values = [r["fd_exact"] for r in records if r["nfe"] == row.nfe]
        assert len(values) == 3
        assert row.fd_exact_mean == pytest.approx(np.mean(values), rel=1e-12)
        assert row.fd_exact_std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        assert row.fd_exact_min == pytest.approx(min(values), rel=1e-12)
        assert row.seeds == "0-19 | 20-39 | 40-59"
    assert "Repeated seed sets" in (tmp_path / "report.html").read_text()
