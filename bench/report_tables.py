"""The report's tables as pandas DataFrames, built from run records alone.

* :func:`runs_frame` — one row per record (failed runs included): identity, counts, timings, every
  metric with its standard error and interval (``<m>``, ``<m>_stderr``, ``<m>_lo``, ``<m>_hi``);
* :func:`summary_frame` — successful runs by model, sampler and NFE, with Pareto membership;
* :func:`pareto_table` — a model's NFE–quality Pareto front for one metric, each point marked with
  the front points whose intervals overlap its own (the data cannot tell those apart);
* :func:`budget_table` — the table papers print: each sampler's best run within NFE budgets;
* :func:`nfe_to_reach` — the fewest NFE each sampler needed to reach a quality target;
* :func:`to_markdown`, :func:`to_latex` — the same tables as text to paste.

"Sampler" here is the curve label of :func:`family`: the solver plus its categorical options.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from bench.metrics import METRICS

__all__ = ["LOWER_IS_BETTER", "BUDGETS", "COLUMNS", "family", "flatten", "pareto_front", "runs_frame",
           "summary_frame", "seed_sets_frame", "pareto_table", "budget_table", "nfe_to_reach", "default_targets",
           "nfe_column", "format_value", "to_markdown", "to_latex", "NFE_AXES", "nfe_axis_frame", "network_columns"]

# The direction of every record column a metric writes (the registry's entries).
LOWER_IS_BETTER = {column: lower for entry in METRICS.values() for column, lower in entry.columns().items()}
BUDGETS = (10, 20, 50, 100, 1000)
COLUMNS = ("run_id", "grid", "model", "solver", "family", "options", "T", "eps", "prior", "status", "message", "nfe",
           "nfe_total", "nfe_per_sample_mean", "forwards_per_sample", "guidance", "n_steps", "n_accepted", "n_rejected",
           "bpd_nfe", "num_samples",
           "batch_size", "seeds", "dtype", "wall_time_s", "sampling_time_s", "metric_time_s", "peak_memory_mb",
           "device", "device_name", "executor", "threads", "git_revision", "torch", "created")


# The two NFE conventions the report can put on its NFE axis, never on one axis together
# (docs/guidance.md): the column of the runs frame each reads, and how an axis says which it is.
NFE_AXES = {"guided": ("nfe", "NFE (guided denoiser evaluations per batch)"),
            "forwards": ("forwards_per_sample", "network forwards per sample (denoiser + guide)")}


def nfe_axis_frame(df: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The runs frame with ``nfe`` read in the convention ``axis`` (:data:`NFE_AXES`): 'guided' keeps
    it (one guided call = 1, whatever it forwards), 'forwards' puts each run's network forwards per
    sample there (a CFG step = 2, a step outside the guidance interval = 1, autoguidance = main +
    guide); the guided count stays in ``guided_nfe``. Runs without per-network counts get no point."""
    if axis not in NFE_AXES:
        raise ValueError(f"unknown NFE axis {axis!r}; expected one of: {', '.join(NFE_AXES)}")
    out = df.assign(guided_nfe=df["nfe"])
    if axis == "forwards":
        out["nfe"] = pd.to_numeric(out["forwards_per_sample"], errors="coerce")
    out.attrs["nfe_axis"] = axis
    return out


def network_columns(record: dict) -> dict:
    """``<network>_calls`` and ``<network>_forwards_per_sample`` of every network the record counted."""
    row = {}
    for name, entry in (record.get("networks") or {}).items():
        row[f"{name}_calls"] = entry.get("calls")
        row[f"{name}_forwards_per_sample"] = entry.get("forwards_per_sample")
    return row


def family(record: dict) -> str:
    """Curve label: the solver, its categorical options, the guidance, and T / prior where set."""
    parts = []
    for k, v in sorted(record.get("options", {}).items()):
        if isinstance(v, bool):
            if v:
                parts.append(k)
        elif isinstance(v, str) or v is None:
            parts.append(f"{k}={v}")
    if record.get("T") is not None:
        parts.append(f"T={record['T']:g}")
    prior = record.get("prior") or {}
    if set(prior) - {"kind"}:
        parts.append("prior=" + ",".join(f"{k}:{v}" for k, v in sorted(prior.items()) if k != "kind"))
    if record.get("guidance"):
        from bench.grid import guidance_label

        parts.append(guidance_label(record["guidance"]))
    return record["solver"] + (f"({', '.join(parts)})" if parts else "")


def _uncertainty(entry: dict) -> tuple[float | None, float | None, float | None]:
    """(stderr, lo, hi) of a record's metric entry; records without an uncertainty give Nones."""
    u = entry.get("uncertainty") or (entry.get("protocol") or {}).get("uncertainty") or {}
    se = u.get("stderr")
    if se is None and (entry.get("protocol") or {}).get("stderr") is not None:  # older records: bpd, loglik
        se = entry["protocol"]["stderr"]
    lo, hi = (u.get("interval") or (None, None))[:2]
    if lo is None and se is not None and entry.get("value") is not None:
        lo, hi = entry["value"] - 1.96 * se, entry["value"] + 1.96 * se
    return se, lo, hi


def flatten(record: dict, metrics: list[str]) -> dict:
    """One runs.csv row of a record (metric values with their stderr and interval)."""
    row = {k: record.get(k) for k in COLUMNS}
    row["family"] = family(record)
    row["options"] = json.dumps(record.get("options", {}), sort_keys=True)
    row["prior"] = json.dumps(record.get("prior", {}), sort_keys=True)
    row["torch"] = (record.get("versions") or {}).get("torch")
    from bench.grid import guidance_label

    row["guidance"] = guidance_label(record.get("guidance"))
    row.update(network_columns(record))
    for m in metrics:
        entry = record.get("metrics", {}).get(m) or {}
        row[m] = entry.get("value")
        row[f"{m}_stderr"], row[f"{m}_lo"], row[f"{m}_hi"] = _uncertainty(entry)
    for k, v in sorted(record.get("options", {}).items()):
        row[f"opt_{k}"] = v
    row["seed_set"] = (record.get("spec") or {}).get("seed_set", 0)
    return row


def pareto_front(points: list[tuple[float, float]], lower_is_better: bool = True) -> list[int]:
    """Indices of the points (nfe, value) not dominated by another (fewer NFE and a better value)."""
    sign = 1.0 if lower_is_better else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], sign * points[i][1]))
    front, best = [], math.inf
    for i in order:
        v = sign * points[i][1]
        if v < best:
            front.append(i)
            best = v
    return front


def nfe_column(metric: str) -> str:
    """bits/dim is paid for by the likelihood solve's NFE, every other metric by the sampler's."""
    return "bpd_nfe" if metric == "bpd" else "nfe"


def runs_frame(records: list[dict], metrics: list[str]) -> pd.DataFrame:
    """One row per record, columns as :data:`COLUMNS` plus metrics and ``opt_*`` options."""
    df = pd.DataFrame([flatten(r, metrics) for r in records])
    for m in metrics:
        for c in (m, f"{m}_stderr", f"{m}_lo", f"{m}_hi"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def _points(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Successful runs with a finite value of ``metric`` and a positive NFE for it."""
    x = nfe_column(metric)
    if metric not in df or x not in df:
        return df.iloc[0:0]
    ok = df[(df["status"] == "ok") & np.isfinite(df[metric].astype(float))]
    return ok[pd.to_numeric(ok[x], errors="coerce") > 0]


def pareto_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The Pareto front of one model's runs for ``metric``, by NFE, with interval overlaps marked.

    ``overlaps`` lists the run ids of other front points whose interval [lo, hi] intersects this
    point's interval; ``distinct`` is True where there are none.
    """
    pts = _points(df, metric).reset_index(drop=True)
    x = nfe_column(metric)
    idx = pareto_front(list(zip(pts[x].astype(float), pts[metric].astype(float))), LOWER_IS_BETTER.get(metric, True))
    front = pts.loc[idx, ["model", "family", "run_id", x, metric, f"{metric}_stderr", f"{metric}_lo",
                          f"{metric}_hi"]].sort_values(x).reset_index(drop=True)
    lo, hi = front[f"{metric}_lo"].to_numpy(float), front[f"{metric}_hi"].to_numpy(float)
    overlaps = []
    for i in range(len(front)):
        hit = (lo <= hi[i]) & (hi >= lo[i]) & np.isfinite(lo) & np.isfinite(lo[i])
        hit[i] = False
        overlaps.append(",".join(front["run_id"][hit]))
    front["overlaps"] = overlaps
    front["distinct"] = front["overlaps"] == ""
    return front.rename(columns={x: "nfe"})


def summary_frame(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Successful runs per model and sampler, by NFE: metrics with stderr, wall-clock, Pareto flags."""
    ok = df[df["status"] == "ok"]
    cols = ["model", "family", "solver", "run_id", "nfe", "nfe_per_sample_mean", "n_steps", "guided_nfe",
            "forwards_per_sample"]
    for m in metrics:
        cols += [m, f"{m}_stderr"]
    cols += ["wall_time_s", "sampling_time_s", "num_samples", "device"]
    out = ok[[c for c in cols if c in ok]].copy()
    if "nfe_axis" in df.attrs:  # which convention the 'nfe' column is in (nfe_axis_frame)
        out.insert(out.columns.get_loc("nfe") + 1, "nfe_axis", df.attrs["nfe_axis"])
    for m in metrics:
        on, overlap = set(), set()
        for _, g in ok.groupby("model"):  # the front among the model's runs that have the metric
            front = pareto_table(g, m)
            on |= set(front["run_id"])
            overlap |= set(front.loc[~front["distinct"], "run_id"])
        if on:
            out[f"pareto_{m}"] = out["run_id"].isin(on)
            out[f"pareto_{m}_overlaps"] = out["run_id"].isin(overlap)
    return out.sort_values(["model", "family", "nfe"], na_position="last").reset_index(drop=True)


def budget_table(df: pd.DataFrame, metric: str, budgets: tuple[int, ...] = BUDGETS) -> pd.DataFrame:
    """Each sampler's best run within each NFE budget (long form).

    Columns: model, family, budget, value, stderr, lo, hi, nfe, run_id — one row per (model,
    family, budget) that has a run with NFE ≤ budget.
    """
    pts = _points(df, metric)
    x, lower = nfe_column(metric), LOWER_IS_BETTER.get(metric, True)
    rows = []
    for (model, fam), g in pts.groupby(["model", "family"], sort=True):
        for b in budgets:
            within = g[g[x].astype(float) <= b]
            if within.empty:
                continue
            best = within.loc[within[metric].idxmin() if lower else within[metric].idxmax()]
            rows.append({"model": model, "family": fam, "budget": b, "value": best[metric],
                         "stderr": best[f"{metric}_stderr"], "lo": best[f"{metric}_lo"], "hi": best[f"{metric}_hi"],
                         "nfe": best[x], "run_id": best["run_id"]})
    return pd.DataFrame(rows, columns=["model", "family", "budget", "value", "stderr", "lo", "hi", "nfe", "run_id"])


def default_targets(df: pd.DataFrame, metric: str) -> list[float]:
    """Quality targets for :func:`nfe_to_reach` when none are given: within 100 % and 25 % of the best run.

    For a lower-is-better metric with best value v > 0: 2 v and 1.25 v; otherwise v ∓ |v| and
    v ∓ |v|/4 towards the worse side.
    """
    pts = _points(df, metric)
    if pts.empty:
        return []
    lower = LOWER_IS_BETTER.get(metric, True)
    v = float(pts[metric].min() if lower else pts[metric].max())
    sign = 1.0 if lower else -1.0
    return [v + sign * abs(v) * r for r in (1.0, 0.25)] if v != 0 else [v]


def nfe_to_reach(df: pd.DataFrame, metric: str, targets: list[float]) -> pd.DataFrame:
    """The fewest NFE at which each sampler reached each quality target (NaN: never, in this grid).

    ``within_interval``: the first NFE whose interval reaches the target (the data cannot rule out
    that this cheaper run already meets it).
    """
    pts = _points(df, metric)
    x, lower = nfe_column(metric), LOWER_IS_BETTER.get(metric, True)
    rows = []
    for (model, fam), g in pts.groupby(["model", "family"], sort=True):
        for t in targets:
            val = g[metric].astype(float)
            edge = g[f"{metric}_lo" if lower else f"{metric}_hi"].astype(float)
            met = g[(val <= t) if lower else (val >= t)]
            maybe = g[(edge <= t) if lower else (edge >= t)]
            rows.append({"model": model, "family": fam, "target": t,
                         "nfe": float(met[x].astype(float).min()) if len(met) else math.nan,
                         "within_interval": float(maybe[x].astype(float).min()) if len(maybe) else math.nan,
                         "run_id": met.loc[met[x].astype(float).idxmin(), "run_id"] if len(met) else None})
    return pd.DataFrame(rows, columns=["model", "family", "target", "nfe", "within_interval", "run_id"])


def format_value(value: float, stderr: float | None = None, digits: int = 3) -> str:
    """``value ± stderr`` with ``digits`` significant digits ('' for a missing value)."""
    if value is None or not np.isfinite(value):
        return ""
    s = f"{value:.{digits}g}"
    if stderr is not None and np.isfinite(stderr):
        s += f" ± {stderr:.2g}"
    return s


def budget_wide(long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The budget table as papers print it: one row per sampler, one column per budget, ``value ± stderr``."""
    if long.empty:
        return pd.DataFrame()
    cells = long.assign(cell=[format_value(v, s) for v, s in zip(long["value"], long["stderr"])])
    wide = cells.pivot_table(index=["model", "family"], columns="budget", values="cell", aggfunc="first")
    wide = wide.reindex(columns=sorted(wide.columns)).fillna("")
    wide.columns = [f"{metric} @ NFE ≤ {b}" for b in wide.columns]
    return wide.reset_index()


def reach_wide(long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """NFE to reach each target: one row per sampler, one column per target ('—' where never reached)."""
    if long.empty:
        return pd.DataFrame()
    cells = long.assign(cell=["—" if not np.isfinite(n) else f"{n:g}" for n in long["nfe"]],
                        col=[f"NFE to {metric} {'≤' if LOWER_IS_BETTER.get(metric, True) else '≥'} {t:.3g}"
                             for t in long["target"]])
    wide = cells.pivot_table(index=["model", "family"], columns="col", values="cell", aggfunc="first", sort=False)
    return wide.fillna("—").reset_index()


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    def cell(v) -> str:
        return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else str(v).replace("|", "\\|")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    """A LaTeX ``tabular`` (booktabs rules), special characters escaped, ± and ≤ as math."""
    text = df.astype(str).replace({"nan": "", "None": ""})
    text = text.rename(columns=lambda c: str(c))
    body = text.to_latex(index=False, escape=True, caption=caption or None)
    for k, v in (("±", r"$\pm$"), ("≤", r"$\leq$"), ("≥", r"$\geq$"), ("—", "--")):
        body = body.replace(k, v)
    return body


SEED_SET_CELL = ("model", "family", "options", "T", "eps", "prior", "num_samples", "batch_size", "dtype")


def seed_sets_frame(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Cells run on several disjoint seed sets (``eval.seed_sets``): one row per cell with the number of
    sets, their seeds, and per metric the mean, the standard deviation over sets (ddof = 1) and the
    minimum and maximum (EDM reports the minimum FID of three sets); empty where no cell has two sets."""
    ok = df[df["status"] == "ok"] if len(df) else df
    if not len(ok) or "seed_set" not in ok or ok["seed_set"].nunique() < 2:
        return pd.DataFrame()
    rows = []
    for key, g in ok.groupby(list(SEED_SET_CELL), dropna=False, sort=True):
        if g["seed_set"].nunique() < 2:
            continue
        row = dict(zip(SEED_SET_CELL, key, strict=True)) | {"nfe": g["nfe"].mean(), "sets": g["seed_set"].nunique(),
                                                            "seeds": " | ".join(g.sort_values("seed_set")["seeds"])}
        for m in metrics:
            v = g[m].astype(float) if m in g else pd.Series(dtype=float)
            if v.notna().sum() == 0:
                continue
            row |= {f"{m}_mean": v.mean(), f"{m}_std": v.std(ddof=1), f"{m}_min": v.min(), f"{m}_max": v.max()}
        rows.append(row)
    return pd.DataFrame(rows)
