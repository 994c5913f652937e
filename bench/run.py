"""Run a grid: ``python -m bench.run --grid grids/cifar10.yaml``.

The grid is loaded and validated, every model and metric asset is checked (missing checkpoints,
datasets or reference statistics are a one-line error, exit code 2, nothing written), runs whose
record is already ``ok`` are skipped, and the rest go to an executor (local or Ray). Each finished
run is written at once as ``<out>/runs/<run_id>.json`` (atomically), so a killed sweep resumes where
it stopped. Finally the tables and plots are rebuilt from the records (:mod:`bench.report`).

:func:`execute_run` is the body of one run: load the model (cached per worker), build the sampler,
draw samples batch by batch with one seeded generator per sample, update the metrics, and return
the record — failures (non-finite samples, exceptions, OOM, timeout) included, as a record with
``status`` and ``message``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import sys
import time
import traceback
from pathlib import Path

import torch

from bench.grid import GridError, GridSpec, RunSpec, canonical, load_grid
from bench.models import DTYPES, RunScore, accelerate, load_score_model, run_sde
from bench.records import OK, clean_temp, environment, now, read_records, write_record, write_samples

__all__ = ["execute_run", "run_grid", "preflight", "main", "DEFAULT_GRID", "EXACT_METRICS"]

DEFAULT_GRID = Path(__file__).resolve().parents[1] / "grids" / "quickstart.yaml"
EXACT_METRICS = ("fd_exact", "sw2_exact", "loglik_exact")
IMAGE_METRICS = ("fid", "kid")
CLASSIFIER_METRICS = {"fd_digits": "digits", "fd_fashion": "fashion"}
LOWER_IS_BETTER = {"fid": True, "kid": True, "fd_digits": True, "fd_fashion": True, "fd_exact": True,
                   "sw2_exact": True, "loglik_exact": False, "bpd": True}


class RunTimeout(Exception):
    """A run went past its ``timeout_s`` (checked between batches)."""


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# --- metrics ---------------------------------------------------------------------------------
def metric_options(name: str, run: RunSpec, model, device: str) -> dict:
    """Keyword arguments of ``bench.metrics.make_metric(name, ...)`` for this run."""
    data = run.data
    if name in EXACT_METRICS:
        return {"model": model, "seeds": run.seeds}
    if name in CLASSIFIER_METRICS:
        return {"data_range": tuple(model.data_range), "device": device, "seeds": run.seeds}
    if name in IMAGE_METRICS:
        opts = {"dataset": data.get("dataset", "cifar10"), "res": data.get("res", model.shape[-1]),
                "split": data.get("fid_split", "train"), "mode": data.get("mode", "legacy_tensorflow"),
                "ref_path": data.get("ref_path"), "inception": data.get("inception"),
                "data_range": tuple(model.data_range), "device": device, "seeds": run.seeds}
        return opts
    raise ValueError(f"metric {name!r} has no option builder")


def metric_entry(value: float, protocol: dict) -> dict:
    """A metric's record entry: its value, its uncertainty (method named) and its protocol."""
    protocol = dict(protocol)
    return {"value": value, "uncertainty": protocol.pop("uncertainty", None), "protocol": protocol}


def _check_metric_assets(name: str, run: RunSpec) -> None:
    """Pre-flight: raise if a file metric ``name`` needs is missing (loads nothing heavy)."""
    if name in EXACT_METRICS and run.model["kind"] in ("official", "checkpoint"):
        raise ValueError(f"metric {name!r} needs an exact mixture model (kind: mixture); model {run.model_name!r} "
                         f"is of kind {run.model['kind']!r}")
    if name in CLASSIFIER_METRICS:
        from bench.metrics.classifier import train_stats_path, weights_path

        for p in (weights_path(CLASSIFIER_METRICS[name]), train_stats_path(CLASSIFIER_METRICS[name])):
            if not Path(p).is_file():
                raise FileNotFoundError(f"metric {name!r} needs {p}, which is missing; train it with "
                                        f"`python -m bench.metrics.train_classifier --data {CLASSIFIER_METRICS[name]}`")
    if name in IMAGE_METRICS:
        from bench.metrics.assets import find_inception, find_reference_stats

        data = run.data
        find_inception(data.get("inception"))
        find_reference_stats(data.get("dataset", "cifar10"), data.get("res", 32), data.get("fid_split", "train"),
                             data.get("mode", "legacy_tensorflow"), path=data.get("ref_path"), kid=name == "kid")
    if name == "bpd":
        from models.datasets import load_dataset

        if "dataset" not in run.data:
            raise ValueError(f"metric 'bpd' needs a dataset: add data: {{dataset: ...}} for model {run.model_name!r}")
        load_dataset(run.data["dataset"], run.data.get("split", "test"), root=run.data.get("root"))


def dataset_bpd(run: RunSpec, problem, device: str, dtype: torch.dtype) -> tuple[float, dict]:
    """Mean bits/dim of the run's dataset split under the run's model, SDE and prior.

    The probability-flow likelihood (:class:`solvers.ProbabilityFlowLikelihood`, options from the
    run's ``likelihood``; score_sde's RK45, rtol = atol = 1e-5, Rademacher probe by default) of the
    first ``data.bpd_samples`` images of ``data.split`` (default: the whole test split), over
    ``data.bpd_repeats`` passes (score_sde: 5 on the CIFAR-10 test set), uniformly dequantised with
    one seeded generator per image and pass and one Hutchinson probe per image and pass, so the value
    does not depend on the batch size. Mean and standard error over images × passes.
    """
    from bench.metrics.bpd import BitsPerDim
    from models.datasets import load_dataset
    from solvers import SeededNoise
    from solvers.likelihood import ProbabilityFlowLikelihood, dequantize

    data = run.data
    lik = ProbabilityFlowLikelihood(**run.likelihood)
    ds = load_dataset(data["dataset"], data.get("split", "test"), root=data.get("root"))
    if ds.levels is None:
        raise ValueError(f"bpd needs discrete data; dataset {ds.name!r} is continuous")
    n = min(int(data.get("bpd_samples", len(ds))), len(ds))
    bs = int(data.get("bpd_batch_size", run.batch_size))
    repeats = int(data.get("bpd_repeats", 1))
    data_range = tuple(problem.score.data_range)
    acc = BitsPerDim()
    for r in range(repeats):  # score_sde: 5 passes over the CIFAR-10 test set, fresh dequantisation/probe
        for i in range(0, n, bs):
            pixels = ds.data[i: i + bs]
            idx = range(i, i + len(pixels))
            u = torch.stack([torch.rand(pixels.shape[1:], generator=torch.Generator().manual_seed(
                10**6 * (r + 1) + j), dtype=torch.float64) for j in idx])
            x = dequantize(pixels, ds.levels, data_range, u=u).to(device=device, dtype=dtype)
            probe = SeededNoise([10**7 * r + j for j in idx], device=device)
            res = lik(problem, x, probe, levels=ds.levels, data_range=data_range)
            if res.status != "ok":
                raise RuntimeError(f"bpd: likelihood solve failed on images {i}-{i + len(pixels) - 1} "
                                   f"(pass {r}): {res.message}")
            acc.update(res.bpd, torch.arange(r * n + i, r * n + i + len(pixels)), nfe=res.nfe)
    value, sums = acc.compute()
    protocol = {"metric": "bpd", "dataset": ds.name, "split": ds.split, "num_images": n, "repeats": repeats,
                "levels": ds.levels, "data_range": list(data_range), "offset_bits": res.offset,
                "likelihood": dataclasses.asdict(lik),
                "dequantization": "uniform, seed 1e6*(pass+1)+index per image",
                "probe_seeds": "1e7*pass + image index",
                "stderr": sums["stderr"], "nfe_per_batch": sums["nfe_per_batch"], "batch_size": bs, "T": problem.sde.T,
                "uncertainty": sums["uncertainty"]}
    return value, protocol


def preflight(grid: GridSpec) -> None:
    """Check every file the runs need (checkpoints at load time, metric assets and datasets here)."""
    seen = set()
    for run in grid.runs:
        for name in run.metrics:
            key = (name, run.model_name, str(sorted(run.data.items())))
            if key not in seen:
                seen.add(key)
                try:
                    _check_metric_assets(name, run)
                except (ValueError, FileNotFoundError, ImportError) as e:
                    msg = " ".join(str(e).split())
                    raise GridError(f"{grid.path} model {run.model_name!r}, metric {name!r}: {msg}") from e


# --- one run ---------------------------------------------------------------------------------
def _peak_memory(device: str) -> dict:
    if device.startswith("cuda") and torch.cuda.is_available():
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "peak_memory_kind": "cuda allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"peak_memory_mb": rss, "peak_memory_kind": "process max RSS (cpu)"}


def _batch_stats(record: dict, stats, B: int) -> None:
    d = stats.as_dict()
    record["nfe_per_batch"].append(int(stats.nfe))
    record["batch_sizes"].append(B)
    record["steps_per_batch"].append(int(stats.n_steps))
    record["n_accepted"] += int(stats.n_accepted)
    record["n_rejected"] += int(stats.n_rejected)
    if stats.nfe_per_sample is not None:
        per = stats.nfe_per_sample.double().cpu()
        record["_nfe_rows"] += float(per.sum())
        record["nfe_per_sample_min"] = min(record.get("nfe_per_sample_min") or math.inf, float(per.min()))
        record["nfe_per_sample_max"] = max(record.get("nfe_per_sample_max") or -math.inf, float(per.max()))
    extra = {k: v for k, v in d.items() if k not in ("nfe", "n_steps", "n_accepted", "n_rejected")
             and not k.startswith("nfe_per_sample")}
    if extra:
        record["stats_extra"].append(extra)


def _finish_counts(record: dict) -> None:
    nfe = record["nfe_per_batch"]
    record["nfe_total"] = sum(nfe)
    record["nfe"] = (sum(nfe) / len(nfe) if len(set(nfe)) > 1 else nfe[0]) if nfe else None
    steps = record["steps_per_batch"]
    record["n_steps"] = (sum(steps) / len(steps) if len(set(steps)) > 1 else steps[0]) if steps else None
    rows = record.pop("_nfe_rows")
    done = sum(record["batch_sizes"])
    record["nfe_per_sample_mean"] = rows / done if done and "nfe_per_sample_min" in record else None
    record.setdefault("nfe_per_sample_min", None)
    record.setdefault("nfe_per_sample_max", None)


def _base_record(run: RunSpec, device: str) -> dict:
    return {"run_id": run.run_id, "grid": run.grid, "entry": run.entry, "model": run.model_name,
            "model_section": run.model, "data": run.data, "solver": run.solver, "options": run.options,
            "T": run.T, "eps": run.eps, "prior": run.prior, "num_samples": run.num_samples,
            "batch_size": run.batch_size, "seeds": run.seeds, "dtype": run.dtype, "device": device,
            "metrics_requested": list(run.metrics), "spec": run.to_dict(), "created": now(),
            "status": "running", "message": "", "nfe_per_batch": [], "batch_sizes": [], "steps_per_batch": [],
            "n_accepted": 0, "n_rejected": 0, "_nfe_rows": 0.0, "stats_extra": [], "metrics": {},
            **environment()}


def execute_run(run: RunSpec, progress: bool | None = None) -> tuple[dict, torch.Tensor | None]:
    """Run one cell and return ``(record, kept samples)``; never raises for a failing run."""
    from tqdm.auto import tqdm

    from bench.metrics import make_metric
    from bench.priors import build_prior
    from models.sde import sde_to_dict
    from solvers import Problem, SeededNoise, Status, make_sampler, parse_seeds

    device = resolve_device(run.device)
    dtype = DTYPES[run.dtype]
    record = _base_record(run, device)
    record["threads"] = torch.get_num_threads()
    kept: list[torch.Tensor] = []
    t_start = time.perf_counter()
    sampling_s = metric_s = 0.0
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)
    model = None
    try:
        model = accelerate(load_score_model(run.model, device, run.dtype), run.accel)
        sde = run_sde(model, run.T, run.eps)
        record["sde"] = sde_to_dict(sde)
        record["device_name"] = _device_name(device)
        record["data_range"] = list(model.data_range)
        record["shape"] = list(model.shape)
        prior = build_prior(run.prior, model, sde, run.data, device, model_key=canonical(run.model))
        record["prior_class"] = type(prior).__name__
        if run.prior.get("kind") == "oracle":
            record["prior_note"] = "ORACLE prior: held-out data diffused to T (uses data)"
        problem = Problem(RunScore(model, sde), prior)
        sampler = make_sampler(run.solver, **run.options)
        record["sampler"] = {"class": type(sampler).__name__, **dataclasses.asdict(sampler)}
        metrics = {m: make_metric(m, **metric_options(m, run, model, device)) for m in run.metrics if m != "bpd"}
        seeds = parse_seeds(run.seeds)[: run.num_samples] if set(run.metrics) != {"bpd"} else []
        batches = [seeds[i: i + run.batch_size] for i in range(0, len(seeds), run.batch_size)]
        bar = tqdm(batches, desc=f"{run.run_id} {run.solver}", unit="batch", leave=False, disable=progress is False
                   if progress is not None else None, position=1)
        for batch_seeds in bar:
            if run.timeout_s is not None and time.perf_counter() - t_start > run.timeout_s:
                raise RunTimeout(f"timeout: {time.perf_counter() - t_start:.1f}s > timeout_s={run.timeout_s} "
                                 f"after {len(record['batch_sizes'])} of {len(batches)} batches")
            noise = SeededNoise(batch_seeds, device=device)
            _sync(device)
            t0 = time.perf_counter()
            x_init = problem.prior_sample(len(batch_seeds), noise, dtype=dtype, device=device)
            # Network passes of a fitted prior are not score calls: counted apart from NFE.
            record["prior_network_calls"] = record.get("prior_network_calls", 0) + getattr(prior, "network_calls", 0)
            sol = sampler.sample(problem, x_init, noise)
            _sync(device)
            sampling_s += time.perf_counter() - t0
            _batch_stats(record, sol.stats, len(batch_seeds))
            if sol.status != Status.OK:
                record["status"] = str(sol.status.value)
                record["message"] = f"batch {len(record['batch_sizes']) - 1} (seeds {batch_seeds[0]}-" \
                                    f"{batch_seeds[-1]}): {sol.message or sol.status.value}"
                break
            t0 = time.perf_counter()
            ids = torch.tensor(batch_seeds, dtype=torch.int64)
            for metric in metrics.values():
                metric.update(sol.x, ids)
            metric_s += time.perf_counter() - t0
            if sum(k.shape[0] for k in kept) < run.save_samples:
                kept.append(sol.x[: run.save_samples - sum(k.shape[0] for k in kept)].detach().float().cpu())
        bar.close()
        if record["status"] == "running":
            t0 = time.perf_counter()
            for name, metric in metrics.items():
                record["metrics"][name] = metric_entry(*metric.compute())
            if "bpd" in run.metrics:
                value, protocol = dataset_bpd(run, problem, device, dtype)
                record["metrics"]["bpd"] = metric_entry(value, protocol)
                record["bpd_nfe"] = sum(protocol["nfe_per_batch"]) / len(protocol["nfe_per_batch"])
            metric_s += time.perf_counter() - t0
            record["status"] = OK
    except RunTimeout as e:
        record.update(status="timeout", message=str(e))
    except torch.cuda.OutOfMemoryError as e:
        record.update(status="oom", message=f"CUDA out of memory: {' '.join(str(e).split())[:500]}")
    except MemoryError as e:
        record.update(status="oom", message=f"MemoryError: {e}")
    except Exception as e:  # any failure becomes the record's status; the sweep goes on
        tb = traceback.extract_tb(e.__traceback__)[-1]
        record.update(status="error", message=f"{type(e).__name__}: {' '.join(str(e).split())[:1000]} "
                                              f"(at {Path(tb.filename).name}:{tb.lineno})")
    _finish_counts(record)
    for name, m in record["metrics"].items():
        record[name] = m["value"]
    record["sampling_time_s"] = sampling_s
    record["metric_time_s"] = metric_s
    record["wall_time_s"] = time.perf_counter() - t_start
    record["finished"] = now()
    record.update(_peak_memory(device))
    record["accel"] = dict(run.accel)
    record["oom_splits"] = getattr(model, "splits", 0)
    samples = torch.cat(kept) if kept else None
    return record, samples


# --- the sweep -------------------------------------------------------------------------------
def select_runs(grid: GridSpec, out: Path, retry_failed: bool = False) -> tuple[list[RunSpec], dict]:
    """Runs still to do, and counts of those skipped: ok records always, failed ones unless retrying."""
    records = read_records(out)
    todo, skipped = [], {"ok": 0, "failed": 0}
    for run in grid.runs:
        r = records.get(run.run_id)
        if r is not None and r["status"] == OK:
            skipped["ok"] += 1
        elif r is not None and not retry_failed and r["status"] != "running":
            skipped["failed"] += 1
        else:
            todo.append(run)
    return todo, skipped


def run_grid(grid: GridSpec, out: Path, executor: str = "local", address: str | None = None,
             retry_failed: bool = False, progress: bool | None = None, report: bool = True) -> dict:
    """Run every pending run of ``grid`` into ``out``; returns counts {'ran', 'ok', 'failed', 'skipped'}."""
    from tqdm.auto import tqdm

    from bench.executors import make_executor

    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    clean_temp(out)
    if Path(grid.path).is_file():  # the report shows the grid file the sweep ran
        (out / "grid.yaml").write_bytes(Path(grid.path).read_bytes())
    todo, skipped = select_runs(grid, out, retry_failed)
    counts = {"ran": 0, "ok": 0, "failed": 0, "skipped_ok": skipped["ok"], "skipped_failed": skipped["failed"]}
    bar = tqdm(total=len(todo), desc=f"grid {grid.name}", unit="run", disable=progress is False
               if progress is not None else None, position=0)

    def on_result(record: dict, samples: torch.Tensor | None) -> None:
        if samples is not None:
            write_samples(out, record["run_id"], samples)
        write_record(out, record)  # the record last: its presence means the run is complete
        counts["ran"] += 1
        counts["ok" if record["status"] == OK else "failed"] += 1
        bar.update(1)
        if record["status"] != OK:
            tqdm.write(f"run {record['run_id']} ({record['model']}, {record['solver']}) {record['status']}: "
                       f"{record['message']}", file=sys.stderr)

    if todo:
        make_executor(executor, address=address, progress=progress).run(todo, on_result)
    bar.close()
    if report:
        from bench.report import build_report

        build_report(out)
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Run a sampler grid (see docs/grids.md).")
    p.add_argument("--grid", default=None, help=f"grid YAML (default: {DEFAULT_GRID.relative_to(Path.cwd()) if DEFAULT_GRID.is_relative_to(Path.cwd()) else DEFAULT_GRID})")  # noqa: E501
    p.add_argument("--dry-run", action="store_true", help="print the expanded runs and exit")
    p.add_argument("--samples", type=int, default=None, help="override eval.num_samples")
    p.add_argument("--batch-size", type=int, default=None, help="override eval.batch_size")
    p.add_argument("--device", default=None, help="override eval.device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--out", default=None, help="output folder (default: results/<grid name>)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--retry-failed", action="store_true", help="re-run runs whose record is not ok")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="do not rebuild tables and plots at the end")
    return p


def dry_run_table(grid: GridSpec, out: Path) -> str:
    records = read_records(out)
    rows = [("run_id", "model", "solver", "options", "T", "metrics", "samples", "batch", "status")]
    for r in grid.runs:
        opts = " ".join(f"{k}={v}" for k, v in sorted(r.options.items()))
        rec = records.get(r.run_id)
        rows.append((r.run_id, r.model_name, r.solver, opts, "" if r.T is None else f"{r.T:g}",
                     ",".join(r.metrics), str(r.num_samples), str(r.batch_size), rec["status"] if rec else "todo"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + f"\n{len(grid.runs)} runs of grid {grid.name!r} -> {out}"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 (all runs ok), 1 (some run failed) or 2 (bad input, nothing written)."""
    args = build_parser().parse_args(argv)
    grid_path = args.grid or str(DEFAULT_GRID)
    overrides = {"num_samples": args.samples, "batch_size": args.batch_size, "device": args.device}
    try:
        grid = load_grid(grid_path, overrides, files=not args.dry_run)
        if not args.dry_run:
            preflight(grid)
    except (GridError, ValueError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("results") / grid.name
    if args.dry_run:
        print(dry_run_table(grid, out))
        return 0
    if args.executor == "ray":
        from bench.executors import ray_available

        if not ray_available():
            print("error: --executor ray needs Ray: pip install 'scorebench[ray]'", file=sys.stderr)
            return 2
    counts = run_grid(grid, out, args.executor, args.address, args.retry_failed,
                      progress=False if args.no_progress else None, report=not args.no_report)
    print(f"{grid.name}: {counts['ran']} ran ({counts['ok']} ok, {counts['failed']} failed), "
          f"{counts['skipped_ok']} already ok, {counts['skipped_failed']} failed earlier (use --retry-failed) "
          f"-> {out}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
