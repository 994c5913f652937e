"""GITS' schedules (schedule 'gits', :mod:`solvers.gits`): computed once per model and options, cached
in the results folder, their inputs part of the run's identity.

A run with schedule 'gits' gets ``inputs['gits_schedule']`` = :func:`gits_key`, the SHA-256 (16 hex
digits) of everything the schedule depends on: the model section and the content hashes of its files
(bench.hashing), the run's T, eps, prior and dtype, and the GITS options (n_steps, teacher, teacher
grid, base schedule and ρ, metric, coefficient, warm-up count and first seed). So a changed checkpoint
or option gives another run id, and the same key is the same schedule.

Before the runs are dispatched, :func:`resolve` computes each key's schedule once (the driver loads
the model, on the run's device) or reads it from ``<out>/gits/<key>.json``, and hands the σ values to
the runs (``RunSpec.schedule_table``, not part of the identity: the key is). The cache file holds the
key's inputs, the σ values, the teacher's grid, the chosen indices, the warm-up's counted NFE and its
wall time. Nothing is written outside ``out``. A schedule that cannot be computed fails its runs with
the reason; the sweep goes on.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from bench.records import atomic_write, canonical, now

__all__ = ["GITS_DIR", "gits_key", "key_inputs", "resolve", "cache_path"]

GITS_DIR = "gits"
VERSION = 1  # bump when the computation changes: every cached schedule is then recomputed


def _gits_controller(run):
    from solvers import make_sampler

    if run.options.get("schedule") != "gits":
        return None
    return make_sampler(run.solver, **run.options).controller


def key_inputs(run, inputs: dict) -> dict | None:
    """What the GITS schedule of ``run`` depends on (None if the run's schedule is not 'gits');
    ``inputs``: the run's file hashes (bench.hashing.run_inputs), of which the metrics' are left out."""
    from bench.metrics import METRICS

    controller = _gits_controller(run)
    if controller is None:
        return None
    files = {k: v for k, v in inputs.items() if k.split(":")[0] not in METRICS}
    return {"version": VERSION, "model": run.model, "files": files, "T": run.T, "eps": run.eps,
            "prior": run.prior, "dtype": run.dtype, "gits": controller.gits_options()}


def gits_key(run, inputs: dict) -> str | None:
    """The cache key (and identity entry) of a run's GITS schedule, or None."""
    ident = key_inputs(run, inputs)
    return None if ident is None else hashlib.sha256(canonical(ident).encode()).hexdigest()[:16]


def cache_path(out: Path, key: str) -> Path:
    return Path(out) / GITS_DIR / f"{key}.json"


def _read(path: Path, key: str) -> dict | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("sigmas"), list)
    return entry if ok else None


def compute(run, key: str) -> dict:
    """GITS' schedule of ``run`` (the model loaded here, on the run's device): the cache entry."""
    from bench.execute import resolve_device
    from bench.models import DTYPES, RunScore, batch_labels, load_score_model, run_sde
    from bench.priors import build_prior
    from solvers import Problem, make_sampler
    from solvers.gits import gits_sigmas

    controller = make_sampler(run.solver, **run.options).controller
    device = resolve_device(run.device)
    model = load_score_model(run.model, device, run.dtype)
    sde = run_sde(model, run.T, run.eps)
    prior = build_prior(run.prior, model, sde, run.data, device, model_key=canonical(run.model))
    problem = Problem(RunScore(model, sde), prior)

    def condition(p, seeds):
        labels = batch_labels(run.model, model, seeds)
        return p if labels is None else p.conditioned(labels.to(device))

    seed0 = controller.gits_warmup_seed
    t0 = time.perf_counter()
    nfe0 = problem.counter.nfe
    sigmas, info = gits_sigmas(problem, range(seed0, seed0 + controller.gits_warmup), controller.n_steps,
                               teacher=controller.gits_teacher, teacher_steps=controller.gits_teacher_steps,
                               base=controller.gits_base, rho=controller.rho, metric=controller.gits_metric,
                               coeff=controller.gits_coeff, dtype=DTYPES[run.dtype],
                               device=device, batch_size=run.batch_size, condition=condition)
    return {"key": key, "sigmas": sigmas.tolist(), **info, "warmup_nfe": problem.counter.nfe - nfe0,
            "wall_time_s": time.perf_counter() - t0, "device": device, "created": now(),
            "inputs": key_inputs(run, run.inputs)}


def resolve(runs, out: Path, log=None) -> list:
    """``runs`` with each GITS run's ``schedule_table`` filled from the cache under ``out`` (computed
    and written there where missing): {'sigmas': [...], 'file': 'gits/<key>.json'}, or {'error': why}."""
    done: dict[str, dict] = {}
    result = []
    for run in runs:
        key = run.inputs.get("gits_schedule")
        if key is None:
            result.append(run)
            continue
        if key not in done:
            path = cache_path(out, key)
            entry = _read(path, key)
            if entry is None:
                try:
                    entry = compute(run, key)
                except Exception as e:  # noqa: BLE001  (the runs fail with the reason; the sweep goes on)
                    done[key] = {"error": f"GITS schedule {key}: {type(e).__name__}: {' '.join(str(e).split())[:500]}"}
                else:
                    data = json.dumps(entry, indent=1, sort_keys=True).encode()
                    atomic_write(path, lambda f, data=data: f.write(data))
                    if log is not None:
                        log(f"GITS schedule {key} computed ({entry['warmup_nfe']} NFE, "
                            f"{entry['wall_time_s']:.1f}s) -> {path}")
            if key not in done:
                done[key] = {"sigmas": entry["sigmas"], "file": f"{GITS_DIR}/{key}.json"}
        result.append(run.replace(schedule_table=done[key]))
    return result
