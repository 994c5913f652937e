"""Run a grid: ``python -m bench.run --grid grids/cifar10.yaml``.

The grid is loaded and validated, what the machine cannot hold is refused (:mod:`bench.bounds`),
every model and metric asset is checked (missing checkpoints, datasets or reference statistics are
a one-line error, exit code 2, nothing written), runs whose record is already ``ok`` are skipped,
and the rest go to an executor (local, ``--workers N``, or Ray) shard by shard (:mod:`bench.sweep`):
each finished shard is written at once under ``<out>/shards/<run_id>/``, each finished run as
``<out>/runs/<run_id>.json`` (atomically), so a killed sweep resumes from its finished shards and
several invocations on one folder share the work. ``--plan`` prints the cost instead
(:mod:`bench.plan`). Finally the tables and plots are rebuilt from the records (:mod:`bench.report`).

The body of one shard is :func:`bench.execute.execute_shard`; :func:`bench.execute.execute_run` runs a whole run
in this process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `main` starts --workers processes before importing torch
    import torch

    from bench.grid import GridSpec, RunSpec

__all__ = ["run_grid", "preflight", "main", "DEFAULT_GRID"]

DEFAULT_GRID = Path(__file__).resolve().parents[1] / "grids" / "quickstart.yaml"


def _check_metric_assets(name: str, run: RunSpec, shape: tuple[int, ...] | None = None) -> None:
    """Pre-flight: raise if a file or dataset metric ``name`` reads is missing (loads nothing heavy); ``shape``:
    the model's sample shape where known (a metric's ``res`` defaults to its size)."""
    from bench.metrics import METRICS
    from bench.metrics.registry import with_res
    from models.datasets import load_dataset

    entry = METRICS[name]
    entry.files(with_res(run.data, shape))
    for dataset, split in entry.datasets(run.data):
        load_dataset(dataset, split, root=run.data.get("root"))


def preflight(grid: GridSpec) -> None:
    """Check every file the runs need (checkpoints at load time, metric assets and datasets here)."""
    from bench.grid import GridError

    seen = set()
    for run in grid.runs:
        for name in run.metrics:
            key = (name, run.model_name, str(sorted(run.data.items())))
            if key not in seen:
                seen.add(key)
                try:
                    fact = grid.model_facts.get(run.model_name)
                    _check_metric_assets(name, run, None if fact is None else fact.shape)
                except (ValueError, FileNotFoundError, ImportError) as e:
                    msg = " ".join(str(e).split())
                    raise GridError(f"{grid.path} model {run.model_name!r}, metric {name!r}: {msg}") from e


# --- the sweep -------------------------------------------------------------------------------
def select_runs(grid: GridSpec, out: Path, retry_failed: bool = False) -> tuple[list[RunSpec], dict]:
    """Runs still to do, and counts of those skipped: ok records always, failed ones unless retrying."""
    from bench.records import OK, read_records

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
             retry_failed: bool = False, progress: bool | None = None, report: bool = True,
             workers: int = 1, pool=None) -> dict:
    """Run every pending run of ``grid`` into ``out``; returns counts {'ran', 'ok', 'failed', 'skipped_ok',
    'skipped_failed', 'shards_computed'} ('ran': runs this invocation merged into a record).

    ``pool``: local worker processes already started (:class:`bench.workers.ProcessPool`), used and closed
    here; the report's figures are drawn on the executor's workers too."""
    from tqdm.auto import tqdm

    from bench.executors import make_executor
    from bench.records import OK, atomic_write, clean_temp, write_record, write_samples

    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    clean_temp(out)
    if Path(grid.path).is_file():  # the report shows the grid file the sweep ran
        grid_bytes = Path(grid.path).read_bytes()  # atomic: concurrent invocations may copy it at once
        atomic_write(out / "grid.yaml", lambda f: f.write(grid_bytes))
    todo, skipped = select_runs(grid, out, retry_failed)
    from bench.gits_cache import resolve

    todo = resolve(todo, out, log=lambda msg: print(msg, file=sys.stderr))  # schedule 'gits': once per model
    counts = {"ran": 0, "ok": 0, "failed": 0, "skipped_ok": skipped["ok"], "skipped_failed": skipped["failed"],
              "shards_computed": 0}
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

    options = {"workers": workers, "pool": pool} if executor == "local" else {"address": address}
    ex = make_executor(executor, progress=progress, **options)
    try:
        if todo:
            counts["shards_computed"] = len(ex.run(todo, out, on_result))
        bar.close()
        if report:
            from bench.report import build_report

            build_report(out, starmap=ex.starmap)
    finally:
        ex.close()
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
    p.add_argument("--workers", type=int, default=None,
                   help="local executor: worker processes pulling shards (CPU: cores/N threads each; CUDA: one "
                        "per visible GPU; 1: in this process with a thread per core). Default: one per core, "
                        "at most 8 (docs/harness.md: the default under load)")
    p.add_argument("--plan", action="store_true",
                   help="print network evaluations per run and in total (and a time estimate) and exit")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--retry-failed", action="store_true", help="re-run runs whose record is not ok")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="do not rebuild tables and plots at the end")
    return p


def dry_run_table(grid: GridSpec, out: Path) -> str:
    """The expanded runs; ``batch_invariant`` says whether a run's samples depend on its batches (then
    the batch size and seeds are part of its result and identity)."""
    from bench.records import read_records

    records = read_records(out)
    from bench.grid import guidance_label

    labelled = any(r.model.get("label") is not None for r in grid.runs)  # class-conditional models: a column
    guided = any(r.guidance for r in grid.runs)
    rows = [("run_id", "model", *(("label",) if labelled else ()), *(("guidance",) if guided else ()), "solver",
             "options", "T", "metrics", "samples", "batch", "batch_invariant", "status")]
    for r in grid.runs:
        opts = " ".join(f"{k}={v}" for k, v in sorted(r.options.items()))
        rec = records.get(r.run_id)
        label = (("" if r.model.get("label") is None else str(r.model["label"])),) if labelled else ()
        guidance = (guidance_label(r.guidance),) if guided else ()
        rows.append((r.run_id, r.model_name, *label, *guidance, r.solver, opts, "" if r.T is None else f"{r.T:g}",
                     ",".join(r.metrics), str(r.num_samples), str(r.batch_size),
                     "true" if r.batch_invariant else "false", rec["status"] if rec else "todo"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    coupled = sum(not r.batch_invariant for r in grid.runs)
    note = f" ({coupled} batch-dependent: their samples depend on batch size and seeds)" if coupled else ""
    return "\n".join(lines) + f"\n{len(grid.runs)} runs of grid {grid.name!r}{note} -> {out}"


class Stopped(BaseException):
    """SIGTERM (or SIGINT) asked the sweep to stop; a BaseException, so no run records it as its failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    del frame
    raise Stopped(signum)


def _stop_cleanly(grid: GridSpec, out: Path, signum: int, report: bool) -> int:
    """After SIGINT/SIGTERM: one line, the report rebuilt from the records that finished, 128 + signum."""
    from bench.records import read_records

    for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal while rebuilding ends it at once
        signal.signal(sig, signal.SIG_DFL)
    done = [r for r in read_records(out).values() if r.get("grid") == grid.name]
    what = "no report (--no-report)"
    if report and done:
        from bench.report import build_report

        build_report(out)
        what = "report rebuilt"
    elif report:
        what = "no records to report"
    print(f"{grid.name}: stopped by {signal.Signals(signum).name}; {len(done)} of {len(grid.runs)} runs have a "
          f"record (finished shards are kept, those in flight were dropped: rerun to resume), {what} -> {out}",
          file=sys.stderr)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 (every run of the grid ok), 1 (some run failed, now or in an earlier
    invocation), 2 (bad input, nothing written), 130 / 143 (stopped by SIGINT / SIGTERM: the records
    that finished are kept and the report rebuilt from them)."""
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers must be a positive integer, got {args.workers}", file=sys.stderr)
        return 2
    from bench.workers import default_workers

    # Spawned now, so the workers import torch while this process validates the grid; where a GPU may be
    # there and --workers was not given, later, as many as the runs' devices want (one per visible GPU).
    early = args.workers is not None or not Path("/dev/nvidiactl").exists()
    args.workers = args.workers or default_workers()
    pool = None
    if args.executor == "local" and args.workers > 1 and early and not (args.dry_run or args.plan):
        from bench.workers import ProcessPool

        pool = ProcessPool(args.workers)
    try:
        return _main(args, pool)
    finally:
        if pool is not None:  # closed by the sweep when it ran; stopped at once after an early exit
            from bench.workers import stop_resource_tracker

            pool.close(now=True)
            stop_resource_tracker()  # every worker has exited: nothing of this sweep outlives the CLI


def _main(args: argparse.Namespace, pool) -> int:
    from bench.grid import GridError, load_grid

    grid_path = args.grid or str(DEFAULT_GRID)
    overrides = {"num_samples": args.samples, "batch_size": args.batch_size, "device": args.device}
    try:
        from bench.bounds import check_bounds

        grid = load_grid(grid_path, overrides, files=not (args.dry_run or args.plan))
        check_bounds(grid)
        if not (args.dry_run or args.plan):
            preflight(grid)
    except (GridError, ValueError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while validating or hashing: nothing was written
        print(f"{grid_path}: stopped by SIGINT while loading the grid; nothing written", file=sys.stderr)
        return 128 + signal.SIGINT
    out = Path(args.out) if args.out else Path("results") / grid.name
    if args.plan:
        from bench.plan import plan_table

        print(plan_table(grid))
        return 0
    if args.dry_run:
        print(dry_run_table(grid, out))
        return 0
    if args.executor == "ray":
        from bench.executors import ray_available

        if not ray_available():
            print("error: --executor ray needs Ray: pip install 'scorebench[ray]'", file=sys.stderr)
            return 2
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        counts = run_grid(grid, out, args.executor, args.address, args.retry_failed,
                          progress=False if args.no_progress else None, report=not args.no_report,
                          workers=args.workers, pool=pool)
    except KeyboardInterrupt:
        return _stop_cleanly(grid, out, signal.SIGINT, not args.no_report)
    except Stopped as e:
        return _stop_cleanly(grid, out, e.signum, not args.no_report)
    finally:
        if signal.getsignal(signal.SIGTERM) is _raise_stopped:
            signal.signal(signal.SIGTERM, previous)
    failed = counts["failed"] + counts["skipped_failed"]
    retry = f"; {failed} not ok: rerun with --retry-failed to retry them" if failed else ""
    print(f"{grid.name}: {counts['ran']} ran ({counts['ok']} ok, {counts['failed']} failed; "
          f"{counts['shards_computed']} shards computed here), "
          f"{counts['skipped_ok']} already ok, {counts['skipped_failed']} failed earlier{retry} "
          f"-> {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
