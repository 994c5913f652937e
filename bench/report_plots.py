"""The report's figures: quality (and wall-clock) against NFE as small multiples by sampler group.

Every model's figure has one panel per sampler group (:data:`GROUPS`: SDE samplers, ODE samplers,
fast samplers, adaptive; a group with more than :data:`MAX_CURVES` curves is split over panels),
panels share both axes, every curve keeps one colour and marker across all figures of a report
(:func:`curve_styles`), each point carries its interval as an error bar, and the model's Pareto
front (over all samplers) is drawn in every panel as a dashed step line with its points circled.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from bench.report_tables import NFE_AXES, nfe_column, pareto_table

__all__ = ["GROUPS", "GROUP_ORDER", "MAX_CURVES", "group_of", "curve_styles", "panels", "figure_png",
           "spans_a_decade"]

# solver registry key -> sampler group (one panel each); solvers not listed go to "other".
GROUPS: dict[str, str] = {
    "euler_maruyama": "SDE samplers", "reverse_diffusion": "SDE samplers", "ancestral_sampling": "SDE samplers",
    "pc": "SDE samplers", "annealed_langevin": "SDE samplers", "torchsde": "SDE samplers",
    "pf_euler": "ODE samplers", "pf_heun": "ODE samplers", "scipy_ode": "ODE samplers",
    "torchdiffeq_ode": "ODE samplers",
    "ddim": "fast samplers", "dpm_solver": "fast samplers", "dpm_solver_pp": "fast samplers", "unipc": "fast samplers",
    "edm_heun": "fast samplers", "edm_stochastic": "fast samplers", "dpm_solver_pp_sde": "fast samplers",
    "ipndm": "fast samplers", "lms": "fast samplers",
    "adaptive_improved_euler": "adaptive", "adaptive_em": "adaptive", "dpm_solver_adaptive": "adaptive",
}
GROUP_ORDER = ("SDE samplers", "ODE samplers", "fast samplers", "adaptive", "other")
MAX_CURVES = 6
PANEL_IN = (4.4, 3.5)  # one panel's size, inches
# Fixed margins, inches (left: y tick labels and label; top: the title and the panel titles), instead
# of tight_layout, which draws every figure once more to measure it (a third of the report's time).
MARGINS_IN = {"left": 0.85, "right": 0.15, "bottom": 0.55, "top": 0.62, "wspace": 0.12, "hspace": 0.42}
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")  # matplotlib's tab10
_MARKERS = "os^vDP*Xh<>p"


def spans_a_decade(values: pd.Series) -> bool:
    """A metric drawn on a log axis: every value above 0 and the largest more than 10× the smallest (on
    a linear axis every point of the lowest decade would sit on the floor)."""
    v = values.astype(float)
    return bool(len(v)) and bool((v > 0).all()) and float(v.max()) > 10 * float(v.min())


def group_of(solver: str) -> str:
    return GROUPS.get(solver, "other")


def _sort_key(label: str, solver: str) -> tuple[int, str]:
    return GROUP_ORDER.index(group_of(solver)), label


def curve_styles(df: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Curve label (``family``) -> (colour, marker), one pair per label for every figure of a report.

    Labels are numbered in panel order, so the ≤ :data:`MAX_CURVES` curves of one panel get
    consecutive, hence different, colours; (colour, marker) pairs are unique up to 120 labels.
    """
    labels = sorted({(f, s) for f, s in zip(df["family"], df["solver"])}, key=lambda fs: _sort_key(*fs))
    return {f: (_COLOURS[i % len(_COLOURS)], _MARKERS[i % len(_MARKERS)]) for i, (f, _) in enumerate(labels)}


def panels(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(title, curve labels) per panel: the groups in :data:`GROUP_ORDER`, at most MAX_CURVES curves each."""
    out = []
    for group in GROUP_ORDER:
        labels = sorted({f for f, s in zip(df["family"], df["solver"]) if group_of(s) == group})
        n = math.ceil(len(labels) / MAX_CURVES)
        size = math.ceil(len(labels) / n) if n else 0  # balanced: 7 curves -> 4 + 3, not 6 + 1
        for k in range(n):
            chunk = labels[k * size: (k + 1) * size]
            out.append((group + (f" ({k + 1}/{n})" if n > 1 else ""), chunk))
    return out


def _fixed_layout(fig, ncol: int, nrow: int) -> None:
    w, h = fig.get_figwidth(), fig.get_figheight()
    m = MARGINS_IN
    panel_w = (w - m["left"] - m["right"] - (ncol - 1) * m["wspace"]) / ncol
    panel_h = (h - m["top"] - m["bottom"] - (nrow - 1) * m["hspace"]) / nrow
    fig.subplots_adjust(left=m["left"] / w, right=1 - m["right"] / w, bottom=m["bottom"] / h, top=1 - m["top"] / h,
                        wspace=m["wspace"] / panel_w, hspace=m["hspace"] / panel_h)


def figure_png(df: pd.DataFrame, model: str, y: str, ylabel: str, styles: dict[str, tuple[str, str]],
               nfe_axis: str = "guided") -> bytes | None:
    """The small-multiples figure of ``y`` against NFE for one model's successful runs, as PNG bytes.

    Args:
        df: the model's rows of the runs frame (``status == 'ok'``), ``nfe`` in the convention
            ``nfe_axis`` (:func:`bench.report_tables.nfe_axis_frame`).
        y: a metric name or ``'wall_time_s'``; metrics get error bars from ``<y>_lo`` / ``<y>_hi``.
        styles: from :func:`curve_styles` over the whole report.
        nfe_axis: which NFE convention the x axis is in ('guided' or 'forwards'; :data:`NFE_AXES`),
            named on the axis and in the title.

    Returns:
        The PNG, or None when no run has a finite value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    x = nfe_column(y)
    pts = df[np.isfinite(pd.to_numeric(df[y], errors="coerce")) & (pd.to_numeric(df[x], errors="coerce") > 0)]
    if pts.empty:
        return None
    is_metric = y != "wall_time_s"
    groups = panels(pts)
    ncol = min(len(groups), 3)
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(PANEL_IN[0] * ncol, PANEL_IN[1] * nrow), sharex=True, sharey=True,
                             squeeze=False)
    front = pareto_table(pts, y) if is_metric else None
    vals = pts[y].astype(float)
    log_y = (not is_metric) or spans_a_decade(vals)
    for ax, (title, labels) in zip(axes.flat, groups):
        if front is not None and len(front):
            ax.plot(front["nfe"], front[y], color="0.35", ls="--", lw=0.8, drawstyle="steps-post", zorder=1)
            ax.scatter(front["nfe"], front[y], s=80, facecolors="none", edgecolors="k", lw=0.8, zorder=4,
                       label="Pareto front (all samplers)")
        for label in labels:
            sel = pts[pts["family"] == label].sort_values(x)
            colour, marker = styles[label]
            xs, ys = sel[x].astype(float).to_numpy(), sel[y].astype(float).to_numpy()
            yerr = None
            if is_metric and f"{y}_lo" in sel and sel[f"{y}_lo"].notna().any():
                lo = sel[f"{y}_lo"].astype(float).fillna(pd.Series(ys, index=sel.index)).to_numpy()
                hi = sel[f"{y}_hi"].astype(float).fillna(pd.Series(ys, index=sel.index)).to_numpy()
                yerr = np.vstack([np.clip(ys - lo, 0, None), np.clip(hi - ys, 0, None)])
            ax.errorbar(xs, ys, yerr=yerr, color=colour, marker=marker, ms=5, lw=1.3, capsize=2.5, elinewidth=0.9,
                        label=label, zorder=3)
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        # NFE ticks at 1, 2, 5 × 10^k as plain numbers; no minor labels (they overlap within a decade)
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best", frameon=False)
    if log_y:  # limits from the values and the intervals' ends above 0 (a distance's interval stays above 0)
        top = max(vals.max(), pd.to_numeric(pts.get(f"{y}_hi", vals), errors="coerce").max(skipna=True))
        lows = pd.to_numeric(pts.get(f"{y}_lo", vals), errors="coerce")
        bottom = min(vals[vals > 0].min(), lows[lows > 0].min(skipna=True) if (lows > 0).any() else np.inf)
        axes.flat[0].set_ylim(bottom / 1.5, top * 1.5)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for k, ax in enumerate(axes.flat[:len(groups)]):
        if k + ncol >= len(groups):  # no visible panel below: its x axis is labelled
            guided = "guidance" in df and (df["guidance"].fillna("") != "").any()
            label = NFE_AXES[nfe_axis][1] if guided or nfe_axis != "guided" else "NFE (score evaluations per batch)"
            ax.set_xlabel("NFE of the likelihood solve" if y == "bpd" else label)
            ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    what = "95 % intervals" if is_metric else "one run each"
    versus = "network forwards per sample" if nfe_axis == "forwards" and y != "bpd" else "NFE"
    fig.suptitle(f"{model}: {ylabel} vs {versus} ({what})", fontsize=11, y=1 - 0.1 / fig.get_figheight())
    _fixed_layout(fig, ncol, nrow)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
