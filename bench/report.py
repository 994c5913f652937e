"""Tables and plots rebuilt from the run records alone: ``python -m bench.report results/<grid>``.

Writes into the results folder:

* ``runs.csv`` — one row per record (failed runs included, with status and message);
* ``summary.csv`` — successful runs per model and sampler family, by NFE: every metric, wall-clock,
  and whether the run is on the Pareto front (NFE vs that metric) of its model;
* ``plots/<metric>_vs_nfe_<model>.png`` (quality and bpd) and ``plots/wall_vs_nfe_<model>.png`` —
  one curve per sampler family, log-scaled NFE, the Pareto front marked;
* ``samples/<run_id>.png`` — a sample grid (or a scatter plot for 2-D data) per run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

from bench.records import RUNS_DIR, atomic_write, read_records, samples_path
from bench.safety import file_component, inside

__all__ = ["build_report", "family", "pareto_front", "flatten", "main"]

LOWER_IS_BETTER = {"fid": True, "kid": True, "fd_digits": True, "fd_fashion": True, "fd_exact": True,
                   "sw2_exact": True, "loglik_exact": False, "bpd": True}
COLUMNS = ("run_id", "grid", "model", "solver", "family", "options", "T", "eps", "prior", "status", "message", "nfe",
           "nfe_total", "nfe_per_sample_mean", "n_steps", "n_accepted", "n_rejected", "bpd_nfe", "num_samples",
           "batch_size", "seeds", "dtype", "wall_time_s", "sampling_time_s", "metric_time_s", "peak_memory_mb",
           "device", "device_name", "executor", "threads", "git_revision", "torch", "created")


def family(record: dict) -> str:
    """Curve label: the solver, its categorical options, and T / prior where set."""
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
    return record["solver"] + (f"({', '.join(parts)})" if parts else "")


def flatten(record: dict, metrics: list[str]) -> dict:
    row = {k: record.get(k) for k in COLUMNS}
    row["family"] = family(record)
    row["options"] = json.dumps(record.get("options", {}), sort_keys=True)
    row["prior"] = json.dumps(record.get("prior", {}), sort_keys=True)
    row["torch"] = (record.get("versions") or {}).get("torch")
    for m in metrics:
        row[m] = (record.get("metrics", {}).get(m) or {}).get("value")
    for k, v in sorted(record.get("options", {}).items()):
        row[f"opt_{k}"] = v
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


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))  # a temp name unique to this writer


def _metric_names(records: list[dict]) -> list[str]:
    names: list[str] = []
    for r in records:
        names += [m for m in r.get("metrics", {}) if m not in names]
    return names


def _plot(out: Path, model: str, rows: list[dict], y: str, ylabel: str, lower: bool) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = "bpd_nfe" if y == "bpd" else "nfe"  # bpd is plotted against the likelihood solve's NFE
    pts = [dict(r, nfe=r.get(x)) for r in rows if r.get(y) is not None and r.get(x) and math.isfinite(float(r[y]))]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(9.0, 4.8))
    fams = sorted({r["family"] for r in pts})
    colors, markers = plt.get_cmap("tab20").colors, "os^vDP*Xh<>p"
    for k, fam in enumerate(fams):
        sel = sorted((r for r in pts if r["family"] == fam), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in sel], [r[y] for r in sel], "-", marker=markers[k % len(markers)], ms=5, lw=1.2,
                color=colors[k % len(colors)], label=fam)
    front = pareto_front([(float(r["nfe"]), float(r[y])) for r in pts], lower)
    fr = sorted((pts[i] for i in front), key=lambda r: r["nfe"])
    ax.plot([r["nfe"] for r in fr], [r[y] for r in fr], "k--", lw=0.8, drawstyle="steps-post", zorder=1)
    ax.scatter([r["nfe"] for r in fr], [r[y] for r in fr], s=90, facecolors="none", edgecolors="k",
               label="Pareto front", zorder=3)
    ax.set_xscale("log")
    if y == "wall_time_s" or (lower and all(float(r[y]) > 0 for r in pts)
                              and max(float(r[y]) for r in pts) / max(min(float(r[y]) for r in pts), 1e-300) > 30):
        ax.set_yscale("log")
    ax.set_xlabel("NFE of the likelihood solve (per batch)" if y == "bpd" else "NFE (score evaluations per batch)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{model}: {ylabel} vs NFE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    # Records are data: the model key and metric name are made safe before they become a file name.
    path = inside(out, out / "plots" / file_component(f"{y.replace('_time_s', '')}_vs_nfe_{model}.png"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    plt.imsave(dest, canvas, cmap="gray", vmin=0.0, vmax=1.0)
    return dest


def build_report(out: str | Path) -> dict:
    """Write runs.csv, summary.csv, plots and sample grids for the records under ``out``."""
    out = Path(out)
    records = sorted(read_records(out).values(), key=lambda r: (r["model"], family(r), r.get("nfe") or 0))
    if not records:
        raise FileNotFoundError(f"no run records under {out / RUNS_DIR}")
    metrics = _metric_names(records)
    rows = [flatten(r, metrics) for r in records]
    _write_csv(out / "runs.csv", rows)
    ok = [r for r in rows if r["status"] == "ok"]
    summary = []
    plots = []
    for model in sorted({r["model"] for r in ok}):
        mrows = [r for r in ok if r["model"] == model]
        fronts = {m: {mrows[i]["run_id"] for i in pareto_front(
            [(float(r["nfe"]), float(r[m])) for r in mrows], LOWER_IS_BETTER.get(m, True))}
            for m in metrics if all(r.get(m) is not None and r.get("nfe") for r in mrows)}
        for r in sorted(mrows, key=lambda r: (r["family"], r["nfe"] or 0)):
            row = {k: r[k] for k in ("model", "family", "solver", "run_id", "nfe", "nfe_per_sample_mean", "n_steps")}
            row.update({m: r.get(m) for m in metrics})
            row.update(wall_time_s=r["wall_time_s"], sampling_time_s=r["sampling_time_s"],
                       num_samples=r["num_samples"], device=r["device"])
            row.update({f"pareto_{m}": r["run_id"] in f for m, f in fronts.items()})
            summary.append(row)
        for m in metrics:
            plots.append(_plot(out, model, mrows, m, m, LOWER_IS_BETTER.get(m, True)))
        plots.append(_plot(out, model, mrows, "wall_time_s", "wall-clock per run (s)", True))
    if summary:
        _write_csv(out / "summary.csv", summary)
    else:
        (out / "summary.csv").write_text("")
    pngs = []
    for r in records:
        src = samples_path(out, r["run_id"])
        dest = inside(out, out / "samples" / file_component(f"{r['run_id']}.png"))
        if src.is_file() and (not dest.is_file() or dest.stat().st_mtime < src.stat().st_mtime):
            pngs.append(sample_png(r, src, dest))
    return {"runs_csv": out / "runs.csv", "summary_csv": out / "summary.csv",
            "plots": [p for p in plots if p is not None], "samples": [p for p in pngs if p is not None],
            "n_records": len(records)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description="Rebuild tables and plots from records.")
    p.add_argument("results", help="a results folder, e.g. results/quickstart")
    args = p.parse_args(argv)
    try:
        made = build_report(args.results)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{made['n_records']} records -> {made['runs_csv']}, {made['summary_csv']}, {len(made['plots'])} plots, "
          f"{len(made['samples'])} new sample grids", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
