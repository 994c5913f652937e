"""The sweep's report, rebuilt from the run records alone: ``python -m bench.report results/<grid>``.

Writes into the results folder (every name made safe by :mod:`bench.filenames`; nothing outside it):

* ``report.html`` — one self-contained page (images inline, no network): per model the figures,
  Pareto fronts, budget and NFE-to-reach tables, bits/dim, metric protocols and sample grids; the
  sortable run table, failed runs, the environment and the grid file (:mod:`bench.report_html`);
* ``runs.csv`` — one row per record (failed runs included, with status and message), every
  metric with its standard error and interval;
* ``summary.csv`` — successful runs per model and sampler by NFE, with Pareto membership (and
  whether the point's interval overlaps another front point's);
* ``pareto.csv``, ``budgets.csv`` (best run within NFE ≤ 10, 20, 50, 100, 1000), ``nfe_to_reach.csv``
  (fewest NFE to reach quality targets), and the same two tables as ``tables.md`` / ``tables.tex``;
* ``plots/<metric>_vs_nfe_<model>.png`` and ``plots/wall_vs_nfe_<model>.png`` — small multiples by
  sampler group with intervals (:mod:`bench.report_plots`);
* with guided runs, ``plots/<metric>_vs_forwards_<model>.png`` too: the same against network forwards
  per sample (the diff-sampler convention), beside the default axis of guided denoiser evaluations,
  and a table of every network's calls and forwards per sample. ``--nfe-axis forwards`` makes network
  forwards the axis of the tables as well. The two conventions are never mixed on one axis.
* ``samples/<run_id>.png`` — a sample grid (or a 2-D histogram for points) per run.

Tables are pandas DataFrames (:mod:`bench.report_tables`).
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bench.filenames import output_path
from bench.records import RUNS_DIR, atomic_write, read_records, samples_path
from bench.report_tables import (
    BUDGETS,
    COLUMNS,
    LOWER_IS_BETTER,
    NFE_AXES,
    budget_table,
    budget_wide,
    default_targets,
    family,
    flatten,
    format_value,
    nfe_axis_frame,
    nfe_to_reach,
    pareto_front,
    pareto_table,
    reach_wide,
    runs_frame,
    seed_sets_frame,
    summary_frame,
    to_latex,
    to_markdown,
)

__all__ = ["build_report", "family", "pareto_front", "flatten", "main", "sample_png", "LOWER_IS_BETTER", "COLUMNS"]

GRID_COPY = "grid.yaml"  # the sweep copies its grid file here (bench.run), the page shows it


def _write_text(path: Path, text: str) -> Path:
    """Atomic, with a temp name unique to this writer (several invocations may rebuild one report)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _write_csv(path: Path, df: pd.DataFrame) -> Path:
    return _write_text(path, df.to_csv(index=False))


def _metric_names(records: list[dict]) -> list[str]:
    names: list[str] = []
    for r in records:
        names += [m for m in r.get("metrics", {}) if m not in names]
    return names


def sample_png(record: dict, samples_file: Path, dest: Path, scale: int = 4) -> Path | None:
    """Sample grid (images) or 2-D histogram (points) of the samples kept beside a record.

    Written with ``matplotlib.pyplot.imsave`` (no figure), so a sweep's worth of PNGs is cheap.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    x = torch.load(samples_file, map_location="cpu", weights_only=True).float()
    if x.numel() == 0:
        return None
    lo, hi = record.get("data_range") or (float(x.min()), float(x.max()))
    if x.dim() == 2:  # points: a 2-D histogram over the data range, 1.5x padded
        pts = x.numpy()
        yv = pts[:, 1] if pts.shape[1] > 1 else np.zeros(len(pts))
        pad = 0.25 * (hi - lo)
        hist, _, _ = np.histogram2d(yv, pts[:, 0], bins=64, range=[[lo - pad, hi + pad]] * 2)
        canvas = 1.0 - np.clip(hist[::-1] / max(hist.max(), 1), 0, 1)
    else:
        img = x.reshape(x.shape[0], -1, *x.shape[-2:]) if x.dim() >= 3 else x[:, None, None, :]
        img = ((img - lo) / (hi - lo)).clamp(0, 1).numpy()
        n, c, h, w = img.shape
        c = 3 if c == 3 else 1
        ncol = int(math.ceil(math.sqrt(n)))
        nrow = int(math.ceil(n / ncol))
        canvas = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), dtype=np.float32)
        for k in range(n):
            i, j = divmod(k, ncol)
            canvas[1 + i * (h + 1): 1 + i * (h + 1) + h, 1 + j * (w + 1): 1 + j * (w + 1) + w] = \
                img[k, :c].transpose(1, 2, 0)
        canvas = canvas.squeeze(-1) if c == 1 else canvas
    canvas = np.kron(canvas, np.ones((scale, scale) + (1,) * (canvas.ndim - 2)))
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    plt.imsave(buf, canvas, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    atomic_write(dest, lambda f: f.write(buf.getvalue()))
    return dest


def _pareto_html(front: pd.DataFrame, metric: str) -> str:
    from bench.report_html import table

    shown = pd.DataFrame({"nfe": front["nfe"], "sampler": front["family"], "run_id": front["run_id"],
                          metric: [format_value(v, e) for v, e in zip(front[metric], front[f"{metric}_stderr"])],
                          "interval": [f"[{lo:.4g}, {hi:.4g}]" if math.isfinite(lo) else ""
                                       for lo, hi in zip(front[f"{metric}_lo"].fillna(math.nan),
                                                         front[f"{metric}_hi"].fillna(math.nan))],
                          "overlaps (not distinguishable)": ["≈ " + o.replace(",", ", ") if o else "distinct"
                                                             for o in front["overlaps"]]})
    return table(shown)


_PLOT_STEM = {"guided": "nfe", "forwards": "forwards"}  # plots/<metric>_vs_<stem>_<model>.png


def _networks_table(rows: pd.DataFrame) -> pd.DataFrame | None:
    """Each run's NFE in both conventions and every network's calls and forwards per sample (None when
    no run of these was guided or called another network than the denoiser)."""
    nets = [c[: -len("_forwards_per_sample")] for c in rows.columns if c.endswith("_forwards_per_sample")]
    if not (rows["guidance"].fillna("") != "").any() and set(nets) <= {"denoiser"}:
        return None
    shown = pd.DataFrame({"sampler": rows["family"], "run_id": rows["run_id"],
                          "NFE (guided denoiser evaluations)": rows["guided_nfe"],
                          "network forwards per sample (denoiser + guide)": rows["forwards_per_sample"]})
    for name in nets:
        shown[f"{name}: forwards per sample"] = rows[f"{name}_forwards_per_sample"]
        shown[f"{name}: calls"] = rows[f"{name}_calls"]
    return shown.sort_values(["sampler", "NFE (guided denoiser evaluations)"]).reset_index(drop=True)


def build_report(out: str | Path, budgets: tuple[int, ...] = BUDGETS,
                 targets: dict[str, list[float]] | None = None, starmap: Callable = itertools.starmap,
                 nfe_axis: str = "guided") -> dict:
    """Write report.html, the CSV / Markdown / LaTeX tables, plots and sample grids for the records under ``out``.

    Args:
        out: the results folder.
        budgets: NFE budgets of the budget table.
        targets: quality targets per metric for the NFE-to-reach table (default: :func:`default_targets`).
        starmap: draws the figures, ``starmap(figure_png, [args, ...])`` (default here, one after
            another; the sweep passes its executor's, which spreads them over its worker processes).
        nfe_axis: the NFE convention of the tables and main plots: 'guided' (guided denoiser
            evaluations, a CFG step = 1) or 'forwards' (network forwards per sample, a CFG step = 2);
            with guided runs the plots of the other convention are drawn too, each axis labelled.
    """
    from bench.report_html import page, table
    from bench.report_plots import curve_styles, figure_png

    out = Path(out)
    records = sorted(read_records(out).values(), key=lambda r: (r["model"], family(r), r.get("nfe") or 0))
    if not records:
        raise FileNotFoundError(f"no run records under {out / RUNS_DIR}")
    metrics = _metric_names(records)
    runs = runs_frame(records, metrics)
    _write_csv(out / "runs.csv", runs)
    if nfe_axis not in NFE_AXES:
        raise ValueError(f"unknown NFE axis {nfe_axis!r}; expected one of: {', '.join(NFE_AXES)}")
    guided = bool((runs["guidance"].fillna("") != "").any())
    axes = [nfe_axis] + ([a for a in NFE_AXES if a != nfe_axis] if guided else [])
    frames = {a: nfe_axis_frame(runs[runs["status"] == "ok"], a) for a in axes}
    ok = frames[nfe_axis]
    summary = summary_frame(nfe_axis_frame(runs, nfe_axis), metrics)
    if len(summary):
        _write_csv(out / "summary.csv", summary)
    else:
        _write_text(out / "summary.csv", "")
    sets = seed_sets_frame(runs, metrics)
    if len(sets):
        _write_csv(out / "seed_sets.csv", sets)
    styles = curve_styles(ok) if len(ok) else {}
    jobs = [(model, m, "wall-clock per run (s)" if m == "wall_time_s" else m, a)
            for a in axes for model in sorted(ok["model"].unique()) for m in metrics + ["wall_time_s"]
            if a == nfe_axis or m not in ("wall_time_s", "bpd")]
    pngs = starmap(figure_png, [(frames[a][frames[a]["model"] == model], model, m, label, styles, a)
                                for model, m, label, a in jobs])
    drawn = dict(zip(((model, m, a) for model, m, _, a in jobs), pngs, strict=True))
    plots, models, fronts, budget_rows, reach_rows, md, tex = [], [], [], [], [], [], []
    for model in sorted(ok["model"].unique()):
        mrows = ok[ok["model"] == model]
        figures, sections = [], []
        for model_, m, label, a in jobs:
            png = drawn[(model_, m, a)]
            if model_ == model and png is not None:
                stem = f"{'wall' if m == 'wall_time_s' else m}_vs_{_PLOT_STEM[a]}_{model}"
                p = output_path(out, "plots", stem, suffix=".png")
                atomic_write(p, lambda f, png=png: f.write(png))  # concurrent report rebuilds never mix files
                plots.append(p)
                versus = "NFE" if a == "guided" or m == "bpd" else "network forwards per sample"
                figures.append((p, f"{model}: {label} vs {versus}" + (f" ({NFE_AXES[a][1]})" if guided else "")))
        networks = _networks_table(mrows) if guided or "guide_calls" in mrows else None
        if networks is not None:
            sections.append(("Every network counted apart: NFE = guided denoiser evaluations (a CFG step = 1); "
                             "network forwards per sample = the diff-sampler convention (a CFG step = 2, a step "
                             "outside the guidance interval = 1, autoguidance = main + guide); a classifier, text "
                             "encoder or VAE decoder is listed apart, never added to either"
                             + (f". The tables above read NFE as {NFE_AXES[nfe_axis][1]}" if guided else ""),
                             table(networks)))
        for m in metrics:
            front = pareto_table(mrows, m)
            if front.empty or m == "bpd":  # bits/dim has its own table: it rates the model, not the sampler
                continue
            fronts.append(front.assign(metric=m))
            sections.append((f"Pareto front: {m} vs NFE ({'lower' if LOWER_IS_BETTER.get(m, True) else 'higher'} "
                             "is better; ≈ marks points whose intervals overlap)", _pareto_html(front, m)))
            long = budget_table(mrows, m, budgets)
            budget_rows.append(long.assign(metric=m))
            wide = budget_wide(long, m)
            sections.append((f"{m}: best run within each NFE budget (value ± standard error)", table(wide)))
            tgt = (targets or {}).get(m) or default_targets(mrows, m)
            reach = nfe_to_reach(mrows, m, tgt)
            reach_rows.append(reach.assign(metric=m))
            rwide = reach_wide(reach, m)
            sections.append((f"{m}: NFE needed to reach a quality (fewest NFE of a run that reaches it)",
                             table(rwide)))
            for title, df in ((f"{model}: {m} within NFE budgets", wide), (f"{model}: NFE to reach {m}", rwide)):
                md.append(f"### {title}\n\n{to_markdown(df)}")
                tex.append(f"% {title}\n{to_latex(df)}")
        msets = sets[sets["model"] == model] if len(sets) else sets
        if len(msets):
            shown = msets[["family", "nfe", "sets"]].copy()
            for m in metrics:
                if f"{m}_mean" in msets:
                    shown[m] = [format_value(a, b) for a, b in zip(msets[f"{m}_mean"], msets[f"{m}_std"])]
                    shown[f"{m} min"] = msets[f"{m}_min"]
            sections.append(("Repeated seed sets (eval.seed_sets): mean ± standard deviation over the disjoint sets, "
                             "and the minimum (EDM's convention); the plots and tables above show each set as its "
                             "own run", table(shown)))
        if "bpd" in metrics and mrows["bpd"].notna().any():
            b = mrows[mrows["bpd"].notna()]
            sections.append(("bits/dim (probability-flow likelihood of the dataset split)", table(pd.DataFrame({
                "sampler": b["family"], "run_id": b["run_id"], "bpd": [format_value(v, e, 4) for v, e in
                                                                        zip(b["bpd"], b["bpd_stderr"])],
                "likelihood NFE": b["bpd_nfe"]}))))
        samples = []
        for r in mrows.sort_values(["family", "nfe"]).itertuples():
            src = samples_path(out, r.run_id)
            dest = output_path(out, "samples", r.run_id, suffix=".png")
            if src.is_file():
                if not dest.is_file() or dest.stat().st_mtime < src.stat().st_mtime:
                    record = next(x for x in records if x["run_id"] == r.run_id)
                    sample_png(record, src, dest)
                if dest.is_file():
                    samples.append((dest, f"{r.family}, NFE {r.nfe:g}" if r.nfe == r.nfe else r.family))
        models.append({"name": model, "figures": figures, "sections": sections, "samples": samples})
    # Failed runs keep their sample grids too, when they saved any.
    for r in records:
        src, dest = samples_path(out, r["run_id"]), output_path(out, "samples", r["run_id"], suffix=".png")
        if src.is_file() and not dest.is_file():
            sample_png(r, src, dest)
    concat = lambda parts: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()  # noqa: E731
    _write_csv(out / "pareto.csv", concat(fronts))
    _write_csv(out / "budgets.csv", concat(budget_rows))
    _write_csv(out / "nfe_to_reach.csv", concat(reach_rows))
    _write_text(out / "tables.md", "\n".join(md))
    _write_text(out / "tables.tex", "\n".join(tex))
    grid_file = out / GRID_COPY
    grid_text = grid_file.read_text(errors="replace") if grid_file.is_file() else None
    notes = [f"grid {', '.join(sorted({str(r.get('grid')) for r in records}))}",
             f"records {min(str(r.get('created')) for r in records)[:19]} … "
             f"{max(str(r.get('finished') or r.get('created')) for r in records)[:19]}"]
    title = "scorebench report: " + ", ".join(sorted({str(r.get("grid")) for r in records}))
    html_path = _write_text(out / "report.html", page(title=title, records=records, runs=runs, models=models,
                                                      grid_text=grid_text, notes=notes))
    samples_written = sorted((out / "samples").glob("*.png")) if (out / "samples").is_dir() else []
    return {"report_html": html_path, "runs_csv": out / "runs.csv", "summary_csv": out / "summary.csv",
            "plots": plots, "samples": samples_written, "n_records": len(records)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report",
                                description="Rebuild report.html, tables and plots from the run records.")
    p.add_argument("results", help="a results folder, e.g. results/quickstart")
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)),
                   help="NFE budgets of the budget table, comma-separated (default: %(default)s)")
    p.add_argument("--target", action="append", default=[], metavar="METRIC=V1,V2",
                   help="quality targets of the NFE-to-reach table for one metric (repeatable)")
    p.add_argument("--nfe-axis", choices=tuple(NFE_AXES), default="guided",
                   help="the NFE convention of the tables and main plots: guided denoiser evaluations (a CFG "
                        "step = 1) or network forwards per sample (a CFG step = 2); default %(default)s")
    args = p.parse_args(argv)
    try:
        budgets = tuple(int(b) for b in args.budgets.split(",") if b.strip())
        targets = {}
        for t in args.target:
            name, _, vals = t.partition("=")
            targets[name.strip()] = [float(v) for v in vals.split(",") if v.strip()]
            if not name.strip() or not targets[name.strip()]:
                raise ValueError(f"--target {t!r}: expected METRIC=V1[,V2...]")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        made = build_report(args.results, budgets, targets, nfe_axis=args.nfe_axis)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{made['n_records']} records -> {made['report_html']}, {made['runs_csv']}, {made['summary_csv']}, "
          f"{len(made['plots'])} plots, {len(made['samples'])} sample grids", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
