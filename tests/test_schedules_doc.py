"""docs/schedules.md's claims against a recomputation: the method × schedule table on the exact mixture
(scripts/schedule_errors.py, about 10 s), its summary and prose, and the GITS-against-uniform table;
the digits measurement's grid loads and plans."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "schedules.md"


def _script():
    spec = importlib.util.spec_from_file_location("schedule_errors", ROOT / "scripts" / "schedule_errors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("schedule_errors", module)
    spec.loader.exec_module(module)
    return module


se = _script()


def _generated() -> str:
    text = DOC.read_text()
    return text.split(se.BEGIN, 1)[1].split(se.END, 1)[0]


def _doc_cells() -> dict[str, tuple[float, int] | None]:
    cells = {}
    for line in _generated().splitlines():
        m = re.match(r"^\| `([a-z_0-9]+)` \| (.+?) \| (.+) \|$", line)
        if m is None:
            continue
        name, schedule, rest = m.groups()
        for budget, cell in zip(se.BUDGETS, rest.split(" | "), strict=True):
            value = re.match(r"^([0-9.e+-]+) \((\d+)\)$", cell)
            cells[f"{name}|{schedule}|{budget}"] = None if value is None else (float(value[1]), int(value[2]))
    return cells


@pytest.fixture(scope="module")
def recomputed():
    import torch

    threads = torch.get_num_threads()
    try:
        return se.table()
    finally:
        torch.set_num_threads(threads)


def test_the_doc_lists_every_deterministic_method(recomputed):
    documented = {key.split("|")[0] for key in _doc_cells()}
    assert documented == set(se.deterministic_methods()), (
        "docs/schedules.md is stale: rerun python scripts/schedule_errors.py --doc docs/schedules.md")
    assert {key.split("|")[1] for key in _doc_cells()} == set(se.SCHEDULES)


def test_every_cell_is_reproduced(recomputed):
    _, numbers = recomputed
    doc = _doc_cells()
    assert len(doc) >= 30 * len(se.BUDGETS)
    for key, cell in doc.items():
        got = numbers[key]
        if cell is None:
            assert got is None, key
            continue
        assert got[1] == cell[1], key  # counted NFE
        assert got[0] == pytest.approx(cell[0], rel=1e-3), key  # printed to 4 significant digits


def test_summary_and_prose(recomputed):
    text, numbers = recomputed
    assert se.summary(numbers) in _generated()
    best = se.best_schedules(numbers)
    counts = {s: sum(v == s for v in best.values()) for s in se.SCHEDULES}
    assert max(counts, key=counts.get) == "quadratic"
    assert best["ipndm", 5] == "gits" and best["unipc", 20] == "gits"
    assert best["euler", 5] == best["euler", 10] == "quadratic"

    def worst(name, budget):
        cells = {s: numbers[f"{name}|{s}|{budget}"] for s in se.SCHEDULES}
        return max((v[0], s) for s, v in cells.items() if v is not None)[1]

    assert worst("deis", 10) == "gits" and worst("lms", 10) == "gits"
    worst_rho3 = sum(worst(n, b) == "karras ρ=3" for n, b in best)
    assert worst_rho3 > len(best) / 2
    assert "0.2508" in DOC.read_text() and "0.01695" in DOC.read_text()


def test_gits_against_uniform_table():
    rows = {}
    for line in DOC.read_text().split("**GITS against uniform-in-t**", 1)[1].splitlines():
        m = re.match(r"^\| (\d+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$", line)
        if m:
            rows[int(m[1])] = [float(v) for v in m.groups()[1:]]
        elif rows:
            break
    assert set(rows) == {6, 10}
    for nfe, values in rows.items():
        got = [se.error("ipndm", s, nfe) for s in ("uniform", "karras ρ=7", "log_snr", "gits")]
        assert [g[1] for g in got] == [nfe] * 4
        assert [g[0] for g in got] == pytest.approx(values, rel=1e-3)
        assert got[3][0] < got[0][0]  # GITS below uniform-in-t


def test_digits_grid_plans():
    from bench.grid import load_grid

    grid = load_grid(ROOT / "grids" / "digits_schedules.yaml", files=False)
    cells = {(r.options["schedule"], r.options.get("gits_metric", "dev"), r.options["n_steps"]) for r in grid.runs}
    assert cells == {(s, "dev", n) for s in ("karras", "log_snr", "gits") for n in (6, 10)} | {
        ("gits", "l2", 6), ("gits", "l2", 10)}
    assert all(r.metrics == ("fd_digits",) and r.num_samples == 1000 for r in grid.runs)
