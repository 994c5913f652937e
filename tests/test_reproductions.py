"""The grids and the summary helpers behind docs/reproductions.md."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest

from bench.grid import load_grid

ROOT = Path(__file__).resolve().parents[1]
GRIDS = sorted((ROOT / "grids" / "reproductions").glob("*.yaml"))


def _summary():
    path = ROOT / "scripts" / "reproductions_summary.py"
    spec = importlib.util.spec_from_file_location("reproductions_summary", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.stem)
def test_reproduction_grids_load_with_their_files(path):
    spec = load_grid(path)  # checkpoints, datasets and metric assets are checked too
    assert spec.name == f"repro_{path.stem}"
    assert all(r.save_samples == r.num_samples for r in spec.runs if set(r.metrics) != {"bpd"})
    assert all(r.threads == 1 and r.device == "cpu" for r in spec.runs)


def test_the_doc_links_every_grid_and_eight_claims():
    doc = (ROOT / "docs" / "reproductions.md").read_text()
    linked = set(re.findall(r"\(\.\./grids/reproductions/([a-z0-9_]+\.yaml)\)", doc))
    assert linked == {p.name for p in GRIDS}
    rows = re.findall(r"^\| ([1-8]) \|", doc, flags=re.M)
    assert rows == [str(i) for i in range(1, 9)]


def test_jackknife_of_a_mean_is_the_group_means_standard_error():
    m = _summary()
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000)
    groups = x.reshape(m.K, -1)
    leave_out = [np.delete(groups, k, axis=0).mean() for k in range(m.K)]
    expected = groups.mean(1).std(ddof=1) / math.sqrt(m.K)
    assert m.jack_se(leave_out) == pytest.approx(expected, rel=1e-12)


def test_nfe_at_equal_quality_interpolates_in_log_nfe_and_flags_bounds():
    m = _summary()
    curve = [(100, 4.0), (10, 8.0), (1000, 1.0)]
    assert m.curve_nfe_at(curve, 6.0) == (pytest.approx(math.sqrt(1000)), False)
    assert m.curve_nfe_at(curve, 9.0) == (10, False)
    assert m.curve_nfe_at(curve, 0.5) == (1000, True)
