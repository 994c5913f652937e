"""Reports are rebuilt from the records alone: CSV tables, Pareto fronts, plots, sample grids."""

from __future__ import annotations

import csv

import torch

from bench.records import write_record, write_samples
from bench.report import build_report, family, main, pareto_front


def record(run_id, solver, nfe, fd, wall, status="ok", **extra):
    return {"run_id": run_id, "grid": "g", "model": "m", "solver": solver, "options": extra.pop("options", {}),
            "status": status, "message": "" if status == "ok" else "boom", "nfe": nfe, "nfe_per_batch": [nfe],
            "metrics": {} if fd is None else {"fd_exact": {"value": fd, "protocol": {"metric": "fd_exact"}}},
            "wall_time_s": wall, "sampling_time_s": wall, "num_samples": 8, "batch_size": 8, "device": "cpu",
            "data_range": [-1, 1], "T": None, "prior": {"kind": "gaussian"}, **extra}


def test_pareto_front():
    pts = [(10, 5.0), (20, 3.0), (30, 4.0), (40, 1.0), (5, 9.0), (40, 2.0)]
    assert sorted(pareto_front(pts)) == [0, 1, 3, 4]
    assert sorted(pareto_front([(1, 1.0), (2, 2.0)], lower_is_better=False)) == [0, 1]


def test_family_labels():
    assert family(record("a", "pc", 1, 1, 1, options={"snr": 0.1, "predictor": "rd"})) == "pc(predictor=rd)"
    assert family(record("a", "pf_euler", 1, 1, 1, T=0.5)) == "pf_euler(T=0.5)"


def test_report_from_records_alone(tmp_path):
    rows = [record("a000000001", "euler_maruyama", 10, 0.5, 1.0, options={"n_steps": 10}),
            record("a000000002", "euler_maruyama", 100, 0.1, 9.0, options={"n_steps": 100}),
            record("a000000003", "pf_heun", 19, 0.2, 2.0, options={"n_steps": 10}),
            record("a000000004", "pf_heun", 39, 0.3, 4.0, options={"n_steps": 20}),
            record("a000000005", "pc", None, None, 0.1, status="nonfinite")]
    for r in rows:
        write_record(tmp_path, r)
    write_samples(tmp_path, "a000000001", torch.rand(16, 1, 8, 8) * 2 - 1)
    write_samples(tmp_path, "a000000003", torch.randn(30, 2))
    (tmp_path / "runs" / ".tmp-a000000009.json.x").write_text("{")  # a killed writer's leftover
    made = build_report(tmp_path)
    assert made["n_records"] == 5
    with open(tmp_path / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert [r["run_id"] for r in runs].count("a000000005") == 1 and len(runs) == 5
    assert {r["status"] for r in runs} == {"ok", "nonfinite"}
    with open(tmp_path / "summary.csv") as f:
        summary = {r["run_id"]: r for r in csv.DictReader(f)}
    assert set(summary) == {"a000000001", "a000000002", "a000000003", "a000000004"}
    front = {k for k, r in summary.items() if r["pareto_fd_exact"] == "True"}
    assert front == {"a000000001", "a000000003", "a000000002"}
    names = {p.name for p in made["plots"]}
    assert names == {"fd_exact_vs_nfe_m.png", "wall_vs_nfe_m.png"}
    assert all(p.stat().st_size > 1000 for p in made["plots"])
    assert {p.name for p in made["samples"]} == {"a000000001.png", "a000000003.png"}


def test_figures_drawn_on_worker_processes_are_the_same_files(tmp_path):
    """build_report with a worker pool's starmap (as the sweep passes it) writes byte-identical plots."""
    from bench.workers import ProcessPool

    rows = [record(f"a00000000{k}", s, n, fd, n / 10, options={"n_steps": n})
            for k, (s, n, fd) in enumerate([("euler_maruyama", 10, 0.5), ("euler_maruyama", 100, 0.1),
                                            ("pf_heun", 19, 0.2), ("ddim", 10, 0.3)])]
    for out in (tmp_path / "here", tmp_path / "pool"):
        for r in rows:
            write_record(out, r)
    here = build_report(tmp_path / "here")
    pool = ProcessPool(2)
    try:
        there = build_report(tmp_path / "pool", starmap=pool.starmap)
    finally:
        pool.close()
    assert [p.name for p in here["plots"]] == [p.name for p in there["plots"]] and len(here["plots"]) == 2
    for a, b in zip(here["plots"], there["plots"], strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_report_cli(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no run records" in capsys.readouterr().err
    write_record(tmp_path, record("b000000001", "pf_euler", 10, 0.5, 1.0))
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "runs.csv").is_file() and (tmp_path / "summary.csv").is_file()


def test_report_writes_nothing_outside_its_folder(tmp_path):
    """Model keys, metric names and run ids come from records: hostile ones stay inside the folder."""
    import json

    from bench.filenames import output_path, safe_name

    out = tmp_path / "a" / "b"
    evil = record("c000000001", "pf_euler", 10, 0.5, 1.0)
    evil.update(model="../../../escaped", metrics={"../../x": {"value": 1.0, "protocol": {}}})
    other = record("c000000002", "pf_euler", 20, 0.4, 1.0)
    other.update(model="<script>alert(1)</script>/..")
    for r in (evil, other):
        write_record(out, r)
    write_samples(out, "c000000001", torch.randn(8, 2))
    before = {p for p in tmp_path.rglob("*")}
    made = build_report(out)
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p.resolve().is_relative_to(out.resolve()) for p in created)
    assert all(p.parent in (out, out / "plots", out / "samples") for p in created if p.is_file())
    assert len(made["plots"]) == 4  # per model: its one metric (the odd name, fd_exact) and wall-clock
    page = made["report_html"].read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Distinct names stay distinct; safe names stay as they are.
    assert safe_name("mixture_vp") == "mixture_vp" and safe_name("a/b") != safe_name("a_b")
    assert safe_name("..") != ".." and "/" not in safe_name("../../etc") and not safe_name(".hidden").startswith(".")
    assert output_path(out, "plots", "../x", suffix=".png").parent == (out / "plots").resolve()
    json.dumps(made, default=str)


def test_metrics_spanning_a_decade_on_a_log_axis(tmp_path, monkeypatch):
    """Issue 28: a metric whose values span more than a decade is drawn on a log y axis (on a linear one
    every point of the lowest decade sits on the floor); a narrower or sign-changing one stays linear."""
    import matplotlib.axes
    import pandas as pd

    from bench.report_plots import spans_a_decade

    assert spans_a_decade(pd.Series([1.2, 4.0, 80.0])) and not spans_a_decade(pd.Series([3.0, 4.0, 29.0]))
    assert not spans_a_decade(pd.Series([-0.1, 5.0, 80.0])) and not spans_a_decade(pd.Series([], dtype=float))
    scales = []
    real = matplotlib.axes.Axes.set_yscale
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yscale", lambda ax, v, **kw: (scales.append(v), real(ax, v, **kw)))
    for fds, log in (([1.5, 80.0, 9.0], True), ([3.0, 8.0, 5.0], False)):
        out = tmp_path / str(log)
        for i, (fd, n) in enumerate(zip(fds, (10, 20, 40))):
            write_record(out, record(f"a00000000{i}", "pf_euler", n, fd, 1.0, options={"n_steps": n}))
        scales.clear()
        made = build_report(out)
        assert {p.name for p in made["plots"]} == {"fd_exact_vs_nfe_m.png", "wall_vs_nfe_m.png"}
        # 2 figures of one panel each: wall-clock always on a log axis, fd_exact only where it spans a decade.
        assert scales.count("log") == (2 if log else 1), scales
