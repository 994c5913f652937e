"""The report's pandas tables, on hand-made runs whose answers are known."""

from __future__ import annotations

import math

from bench.report_tables import (
    budget_table,
    budget_wide,
    default_targets,
    nfe_to_reach,
    pareto_table,
    runs_frame,
    summary_frame,
    to_latex,
    to_markdown,
)


def rec(run_id, solver, nfe, value, stderr=None, metric="fd_exact", model="m", status="ok", **opts):
    entry = {"value": value, "protocol": {"metric": metric}}
    if stderr is not None:
        entry["uncertainty"] = {"method": "test", "stderr": stderr, "interval": [value - 2 * stderr,
                                                                                  value + 2 * stderr], "level": 0.95}
    return {"run_id": run_id, "model": model, "solver": solver, "options": opts, "status": status, "nfe": nfe,
            "metrics": {metric: entry} if status == "ok" else {}}


def frame(records, metric="fd_exact"):
    return runs_frame(records, [metric])


def test_pareto_marks_overlapping_intervals():
    df = frame([rec("a", "x", 10, 5.0, 0.1), rec("b", "x", 20, 3.0, 0.1), rec("c", "y", 40, 2.9, 0.1),
                rec("d", "y", 80, 1.0, 0.1), rec("e", "y", 30, 4.0, 0.1)])
    front = pareto_table(df, "fd_exact")
    assert list(front["run_id"]) == ["a", "b", "c", "d"]  # e is dominated by b
    ov = dict(zip(front["run_id"], front["overlaps"]))
    assert ov == {"a": "", "b": "c", "c": "b", "d": ""}  # [2.8, 3.2] and [2.7, 3.1] intersect
    assert list(front["distinct"]) == [True, False, False, True]
    summary = summary_frame(df, ["fd_exact"])
    assert set(summary.loc[summary["pareto_fd_exact"], "run_id"]) == {"a", "b", "c", "d"}
    assert set(summary.loc[summary["pareto_fd_exact_overlaps"], "run_id"]) == {"b", "c"}


def test_budget_table_best_run_within_each_budget():
    df = frame([rec("a", "x", 10, 5.0, 0.5), rec("b", "x", 30, 2.0, 0.2), rec("c", "x", 100, 3.0, 0.3),
                rec("d", "y", 15, 1.0, 0.1), rec("f", "x", 5, None, status="nonfinite")])
    long = budget_table(df, "fd_exact", (10, 20, 50, 100, 1000))
    x = long[long["family"] == "x"].set_index("budget")
    assert list(x.index) == [10, 20, 50, 100, 1000]
    assert list(x["run_id"]) == ["a", "a", "b", "b", "b"] and list(x["value"]) == [5.0, 5.0, 2.0, 2.0, 2.0]
    assert list(x["stderr"]) == [0.5, 0.5, 0.2, 0.2, 0.2]
    y = long[long["family"] == "y"]
    assert list(y["budget"]) == [20, 50, 100, 1000]  # no y run within 10 NFE
    wide = budget_wide(long, "fd_exact")
    assert list(wide.columns) == ["model", "family"] + [f"fd_exact @ NFE ≤ {b}" for b in (10, 20, 50, 100, 1000)]
    assert wide.set_index("family").loc["x", "fd_exact @ NFE ≤ 50"] == "2 ± 0.2"
    assert wide.set_index("family").loc["y", "fd_exact @ NFE ≤ 10"] == ""


def test_budget_higher_is_better():
    df = frame([rec("a", "x", 10, -3.0, 0.1, metric="loglik_exact"), rec("b", "x", 20, -1.0, 0.1,
                                                                         metric="loglik_exact"),
                rec("c", "x", 40, -2.0, 0.1, metric="loglik_exact")], metric="loglik_exact")
    long = budget_table(df, "loglik_exact", (20, 100))
    assert list(long["run_id"]) == ["b", "b"]
    assert default_targets(df, "loglik_exact") == [-2.0, -1.25]


def test_nfe_to_reach():
    df = frame([rec("a", "x", 10, 5.0, 0.5), rec("b", "x", 30, 2.0, 0.2), rec("c", "x", 100, 1.0, 0.1),
                rec("d", "y", 15, 2.9, 1.0)])
    assert default_targets(df, "fd_exact") == [2.0, 1.25]
    reach = nfe_to_reach(df, "fd_exact", [3.0, 1.5])
    r = reach.set_index(["family", "target"])
    assert r.loc[("x", 3.0), "nfe"] == 30 and r.loc[("x", 1.5), "nfe"] == 100
    assert r.loc[("y", 3.0), "nfe"] == 15 and math.isnan(r.loc[("y", 1.5), "nfe"])
    # y's interval [0.9, 4.9] reaches 1.5: the data cannot rule out that y already meets it at 15 NFE.
    assert r.loc[("y", 1.5), "within_interval"] == 15
    assert r.loc[("x", 1.5), "within_interval"] == 100  # b: [1.6, 2.4] misses 1.5


def test_markdown_and_latex_export():
    df = frame([rec("a", "pf_euler", 10, 5.0, 0.5), rec("b", "pf_euler", 30, 2.0, 0.2)])
    wide = budget_wide(budget_table(df, "fd_exact", (10, 50)), "fd_exact")
    md = to_markdown(wide).splitlines()
    assert md[0] == "| model | family | fd_exact @ NFE ≤ 10 | fd_exact @ NFE ≤ 50 |"
    assert md[2] == "| m | pf_euler | 5 ± 0.5 | 2 ± 0.2 |" and len(md) == 3
    tex = to_latex(wide)
    assert r"\begin{tabular}" in tex and r"pf\_euler" in tex and r"5 $\pm$ 0.5" in tex and r"$\leq$ 50" in tex
    assert "±" not in tex and "≤" not in tex
