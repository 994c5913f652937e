"""Measure how well the stated metric intervals cover the spread over independent seed sets.

On the quickstart's exact 2-D mixture (VP), each sampler is run R times, each time on a disjoint
seed set of N samples (set r: seeds r*N ... r*N + N - 1), through the same ``execute_run`` as a
sweep. For every sample-based metric it reports

* ``se_ratio``: mean stated standard error / standard deviation of the values over the R sets
  (1 = the stated error is the real one);
* ``coverage``: the fraction of sets whose stated interval contains the mean value over all R
  sets (nominal: the interval's level, 0.95), with its binomial standard error;
* ``coverage_linear`` and ``negative_lower_linear``: the same for the symmetric interval
  value ± t · stderr (the intervals of distances before issue 28, now taken on the log scale), and
  the fraction of those whose lower end is below 0.

    python scripts/uncertainty_coverage.py --sets 200 --samples 200 --out docs/img/coverage.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scipy.stats import t as t_dist  # noqa: E402

from bench.execute import execute_run  # noqa: E402
from bench.grid import load_grid  # noqa: E402
from bench.metrics.uncertainty import GROUPS  # noqa: E402

T_975 = float(t_dist.ppf(0.975, GROUPS - 1))  # the symmetric interval's half-width in standard errors
SAMPLERS = {"euler_maruyama, 10 steps": ("euler_maruyama", 10), "pf_heun, 15 steps": ("pf_heun", 15),
            "dpm_solver_pp, 10 steps": ("dpm_solver_pp", 10)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sets", type=int, default=200)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    grid = load_grid(ROOT / "grids" / "quickstart.yaml", {"device": "cpu"})
    base = {(r.solver, r.options.get("n_steps")): r for r in grid.runs if r.model_name == "mixture_vp"}
    results, t0 = {}, time.time()
    for label, key in SAMPLERS.items():
        run0 = base[key]
        per_metric: dict[str, list] = {}
        for s in range(args.sets):
            lo, n = s * args.samples, args.samples
            run = dataclasses.replace(run0, seeds=f"{lo}-{lo + n - 1}", num_samples=n, batch_size=n,
                                      save_samples=0)
            record, _ = execute_run(run, progress=False)
            if record["status"] != "ok":
                raise RuntimeError(f"{label} seed set {s}: {record['status']} {record['message']}")
            for m, entry in record["metrics"].items():
                u = entry["uncertainty"]
                per_metric.setdefault(m, []).append((entry["value"], u["stderr"], *u["interval"]))
        for m, rows in per_metric.items():
            a = np.array(rows)
            value, se, lo, hi = a.T
            centre = value.mean()
            cover = float(((lo <= centre) & (centre <= hi)).mean())
            half = T_975 * se
            cover_lin = float(((value - half <= centre) & (centre <= value + half)).mean())
            results[f"{label} / {m}"] = {
                "sets": args.sets, "samples": args.samples, "mean_value": centre,
                "sd_over_sets": float(value.std(ddof=1)),
                "mean_stated_se": float(se.mean()), "se_ratio": float(se.mean() / value.std(ddof=1)),
                "coverage": cover, "coverage_se": math.sqrt(cover * (1 - cover) / args.sets),
                "coverage_linear": cover_lin, "negative_lower_linear": float((value - half < 0).mean()),
                "negative_lower": float((lo < 0).mean())}
            print(f"{label:26s} {m:13s} value {centre:.4g}  sd {value.std(ddof=1):.3g}  stated se {se.mean():.3g}  "
                  f"ratio {se.mean() / value.std(ddof=1):.2f}  coverage {cover:.3f} (linear {cover_lin:.3f}, "
                  f"lower < 0: {(lo < 0).mean():.3f} vs linear {(value - half < 0).mean():.3f})", flush=True)
    meta = {"grid": "grids/quickstart.yaml, model mixture_vp", "elapsed_s": time.time() - t0,
            "method": "jackknife over 10 seed groups, t interval; distances on log(value) (bench.metrics.uncertainty)",
            "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
