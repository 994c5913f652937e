"""``--plan``: what a grid will cost, before the spend.

Per run and in total: network evaluations = NFE per batch × samples (each batch call evaluates
every sample of the batch), and, where a model can be loaded here, the time those calls take on
this device.

* **NFE** is counted, never computed from a formula: the run's sampler solves a proxy problem — an
  exact-score Gaussian with the run's SDE (the model's own, from its config or checkpoint; ``T``
  and ``eps`` applied), on 2 samples of the model's shape, or of 4×4 pixels with the model's
  channels where the shape is larger — and the counter around the score reads the calls. For a
  fixed-step sampler this is the run's NFE exactly (the grid does not depend on the model); for
  adaptive solvers (those declaring ``adaptive``) it is an *estimate*, labelled ``~``, because their steps
  depend on the model and the data. A bits/dim run's likelihood solve is estimated the same way on
  2 proxy images, times the images and passes.
* **Time**: for each model that loads here (files present), 1 warm-up and 3 timed forward passes
  at the run's batch size on the run's device; a run's time is its NFE × batches × that time (the
  network dominates; solver arithmetic, metrics and I/O are not included).
"""

from __future__ import annotations

import math
import time

import torch

from bench.execute import device_name, resolve_device, synchronize
from bench.grid import GridSpec, RunSpec
from bench.records import canonical
from bench.shards import BPD, run_shards, samples_drawn

__all__ = ["estimate_nfe", "plan_rows", "plan_table", "time_per_call"]

_NFE_CACHE: dict[str, tuple[float | None, bool]] = {}


def _model_sde_and_shape(run: RunSpec):
    """(SDE, sample shape) of the run's model without its network where possible."""
    from bench.bounds import sample_shape
    from bench.kinds import describe_model
    from bench.kinds.base import resolve_path
    from bench.models import load_score_model
    from models.sde import make_sde

    m = run.model
    facts = describe_model({k: v for k, v in m.items() if k not in ("metrics", "data")})
    if facts is not None:
        return facts.sde, facts.shape
    if m["kind"] == "checkpoint" and resolve_path(m["path"]) is None:
        return make_sde("vp"), sample_shape(run) or (1, 8, 8)
    model = load_score_model(m, resolve_device(run.device), run.dtype)  # the key the shards load it with
    return model.sde, tuple(model.shape)


def adaptive(run: RunSpec) -> bool:
    """Whether the run's step count depends on the model (the sampler declares itself adaptive)."""
    from solvers import declared, make_sampler

    return bool(declared(make_sampler(run.solver, **run.options))["adaptive"])


def estimate_nfe(run: RunSpec) -> tuple[float | None, bool]:
    """``(NFE per batch, exact)`` of the run's sampling, counted on a proxy problem (see the module doc).

    Returns ``(None, False)`` where the proxy cannot be solved (the reason is not fatal to a plan).
    """
    if samples_drawn(run) == 0:
        return 0.0, True
    key = canonical({"solver": run.solver, "options": run.options, "T": run.T, "eps": run.eps,
                     "model": run.model})
    if key not in _NFE_CACHE:
        try:
            _NFE_CACHE[key] = (_proxy_nfe(run), not adaptive(run))
        except Exception:  # noqa: BLE001  (a plan reports what it can)
            _NFE_CACHE[key] = (None, False)
    return _NFE_CACHE[key]


def _proxy(run: RunSpec):
    from bench.models import RunScore, run_sde
    from models.gaussian import GaussianMixture

    sde, shape = _model_sde_and_shape(run)
    if math.prod(shape) > 64:
        shape = (shape[0], 4, 4)
    proxy = GaussianMixture.isotropic(sde, mean=0.0, std=0.5, shape=shape)
    return RunScore(proxy, run_sde(proxy, run.T, run.eps)), shape


def _proxy_nfe(run: RunSpec) -> float:
    from models.priors import GaussianPrior
    from solvers import Problem, SeededNoise, make_sampler

    score, shape = _proxy(run)
    problem = Problem(score, GaussianPrior(score.sde))
    noise = SeededNoise([0, 1])
    x = problem.prior_sample(2, noise, dtype=torch.float64)
    sol = make_sampler(run.solver, **run.options).sample(problem, x, noise)
    return float(sol.stats.nfe)


def bpd_evaluations(run: RunSpec) -> float | None:
    """Estimated network evaluations of a run's bits/dim: proxy NFE per image × images × passes."""
    from models.priors import GaussianPrior
    from solvers import Problem, SeededNoise
    from solvers.likelihood import ProbabilityFlowLikelihood

    try:
        score, shape = _proxy(run)
        problem = Problem(score, GaussianPrior(score.sde))
        x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
        res = ProbabilityFlowLikelihood(**run.likelihood)(problem, x, SeededNoise([0, 1]))
        nfe = float(res.nfe)
    except Exception:  # noqa: BLE001
        return None
    images = int(run.data.get("bpd_samples", {"cifar10": 10000}.get(run.data.get("dataset"), 1000)))
    return nfe * images * int(run.data.get("bpd_repeats", 1))


_TIME_CACHE: dict[tuple, float | None] = {}


def time_per_call(run: RunSpec, batch: int) -> float | None:
    """Seconds per forward pass of the run's model at ``batch`` on its device (3 timed passes after a
    warm-up), or None where the model cannot be loaded here."""
    from bench.models import DTYPES, batch_labels, load_score_model
    from models.score import conditioned

    device = resolve_device(run.device)
    key = (canonical(run.model), batch, device, run.dtype)
    if key not in _TIME_CACHE:
        try:
            model = load_score_model(run.model, device, run.dtype)
            labels = batch_labels(run.model, model, range(batch))  # a class-conditional model's first batch
            model = model if labels is None else conditioned(model, labels.to(device))
            x = torch.randn(batch, *model.shape, dtype=DTYPES[run.dtype], device=device)
            t = torch.full((batch,), 0.5, dtype=DTYPES[run.dtype], device=device)
            with torch.no_grad():
                model(x, t)
                synchronize(device)
                t0 = time.perf_counter()
                for _ in range(3):
                    model(x, t)
                synchronize(device)
            _TIME_CACHE[key] = (time.perf_counter() - t0) / 3
        except Exception:  # noqa: BLE001  (missing checkpoint, no device): no time estimate
            _TIME_CACHE[key] = None
    return _TIME_CACHE[key]


def plan_rows(grid: GridSpec, timing: bool = True) -> list[dict]:
    """One dict per run: nfe (per batch), exact, evaluations, seconds (None where unknown)."""
    rows = []
    for run in grid.runs:
        nfe, exact = estimate_nfe(run)
        n = samples_drawn(run)
        evals = None if nfe is None else nfe * n
        seconds = 0.0 if timing and n == 0 else None
        if timing and nfe is not None and n:
            per = time_per_call(run, run.batch_size)
            seconds = None if per is None else per * nfe * math.ceil(n / run.batch_size)
        nfe_exact = exact
        if BPD in run.metrics:
            b = bpd_evaluations(run)
            exact = False  # the likelihood solve's NFE is an estimate
            evals = None if evals is None or b is None else evals + b
            if seconds is not None and b is not None:
                per = time_per_call(run, int(run.data.get("bpd_batch_size", run.batch_size)))
                seconds = None if per is None else seconds + per * b / int(run.data.get("bpd_batch_size",
                                                                                         run.batch_size))
        rows.append({"run": run, "nfe": nfe, "nfe_exact": nfe_exact, "exact": exact, "evaluations": evals,
                     "seconds": seconds,
                     "shards": len(run_shards(run))})
    return rows


def _fmt(x: float | None, exact: bool = True) -> str:
    if x is None:
        return "?"
    return ("" if exact else "~") + (f"{x:.3g}" if x >= 1e4 else f"{x:g}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds:.3g} s"


def plan_table(grid: GridSpec, timing: bool = True) -> str:
    """The ``--plan`` text: one line per run, then the totals."""
    rows = plan_rows(grid, timing)
    table = [("run_id", "model", "solver", "options", "samples", "shards", "nfe/batch", "evaluations", "time")]
    for r in rows:
        run = r["run"]
        opts = " ".join(f"{k}={v}" for k, v in sorted(run.options.items()))
        bpd = " +bpd" if BPD in run.metrics else ""
        table.append((run.run_id, run.model_name, run.solver + bpd, opts, str(samples_drawn(run)), str(r["shards"]),
                      _fmt(r["nfe"], r["nfe_exact"]), _fmt(r["evaluations"], r["exact"]),
                      _duration(r["seconds"])))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    known = [r for r in rows if r["evaluations"] is not None]
    total = sum(r["evaluations"] for r in known)
    estimated = sum(1 for r in known if not r["exact"])
    timed = [r for r in rows if r["seconds"] is not None]
    device = resolve_device(grid.runs[0].device) if grid.runs else "cpu"
    missing = f"; {len(rows) - len(known)} runs not estimated" if len(known) < len(rows) else ""
    lines.append(f"{len(rows)} runs, {sum(r['shards'] for r in rows)} shards, {total:.3g} network evaluations"
                 f" ({estimated} runs estimated: adaptive solvers and bits/dim, '~'{missing})")
    if timed:
        hours = _duration(sum(r["seconds"] for r in timed))
        lines.append(f"≈ {hours} of network time on this device ({device_name(device)}) for the "
                     f"{len(timed)} runs whose model loads here")
    else:
        lines.append("no time estimate: no model of this grid loads here (checkpoints absent)")
    return "\n".join(lines)
