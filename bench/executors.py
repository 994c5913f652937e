"""Executors: where the runs of a sweep execute. A plain registry, ``EXECUTORS``.

Every executor has ``run(runs, on_result)`` and calls ``on_result(record, samples)`` in the driver
process as each run finishes, so records are written by one process only, as soon as a run ends.

* ``local`` — in this process, one run after another, with ``torch.set_num_threads`` set to the
  run's ``threads`` or every core this process may use (:func:`cpu_threads`). With several visible GPUs, one worker
  process per GPU (spawned, ``CUDA_VISIBLE_DEVICES`` pinned) takes runs from a shared queue.
* ``ray`` — one Ray task per run, requesting ``threads`` (default 1) CPUs and one GPU where the run
  is on CUDA; connects to ``address`` or to an already initialised Ray, else starts a local one.
  Results come back to the driver (no shared file system needed); a crashed worker is recorded as a
  failed run.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Sequence

import torch

from bench.grid import RunSpec

__all__ = ["EXECUTORS", "make_executor", "LocalExecutor", "RayExecutor", "ray_available", "available_cores",
           "cpu_threads"]

OnResult = Callable[[dict, "torch.Tensor | None"], None]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_threads(requested: int | None = None) -> int:
    """Threads for a CPU run: ``requested`` (the grid's ``eval.threads``), else every core this process
    may use. The choice never depends on the machine's momentary load, so a run's threads (recorded)
    and its numbers are reproducible; on a shared machine set ``eval.threads`` (two torch processes
    with 2 threads each on 2 cores run ~10x slower than with 1 thread each).
    """
    return requested or available_cores()


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _failed_record(run: RunSpec, status: str, message: str) -> dict:
    """A record for a run whose worker died before it could return one."""
    from bench.records import environment, now

    return {"run_id": run.run_id, "grid": run.grid, "entry": run.entry, "model": run.model_name,
            "model_section": run.model, "data": run.data, "solver": run.solver, "options": run.options,
            "T": run.T, "eps": run.eps, "prior": run.prior, "num_samples": run.num_samples,
            "batch_size": run.batch_size, "seeds": run.seeds, "dtype": run.dtype, "device": run.device,
            "metrics_requested": list(run.metrics), "spec": run.to_dict(), "created": now(), "finished": now(),
            "status": status, "message": message, "nfe": None, "nfe_total": None, "nfe_per_batch": [],
            "metrics": {}, **environment()}


def _visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class LocalExecutor:
    """Runs in this process (CPU or one GPU), or one spawned worker per GPU when several are visible."""

    def __init__(self, progress: bool | None = None, **_: object) -> None:
        self.progress = progress

    def run(self, runs: Sequence[RunSpec], on_result: OnResult) -> None:
        gpus = _visible_gpus()
        on_cuda = [r for r in runs if r.device in ("auto", "cuda")]
        if gpus > 1 and len(on_cuda) > 1:
            self._run_per_gpu(runs, on_result, gpus)
            return
        from bench.run import execute_run

        for run in runs:
            threads = cpu_threads(run.threads)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            record, samples = execute_run(run, progress=self.progress)
            record["executor"] = "local"
            on_result(record, samples)

    def _run_per_gpu(self, runs: Sequence[RunSpec], on_result: OnResult, gpus: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        tasks, results = ctx.Queue(), ctx.Queue()
        for i, run in enumerate(runs):
            tasks.put((i, run.to_dict()))
        workers = []
        for g in range(min(gpus, len(runs))):
            tasks.put(None)
            w = ctx.Process(target=_gpu_worker, args=(g, tasks, results), daemon=True)
            w.start()
            workers.append(w)
        pending = {i: run for i, run in enumerate(runs)}
        while pending:
            try:
                i, record, samples = results.get(timeout=5.0)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    for run in pending.values():
                        on_result(_failed_record(run, "error", "GPU worker process died"), None)
                    break
                continue
            pending.pop(i, None)
            on_result(record, samples)
        for w in workers:
            w.join(timeout=10)


def _gpu_worker(gpu: int, tasks, results) -> None:
    """One GPU worker: pinned to its device, it runs tasks until it reads the sentinel."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from bench.run import execute_run

    while (item := tasks.get()) is not None:
        i, spec = item
        run = RunSpec.from_dict(spec)
        if run.device == "auto":
            run = run.replace(device="cuda")
        record, samples = execute_run(run, progress=False)
        record["worker_gpu"] = gpu
        results.put((i, record, samples))


def _ray_task(spec: dict, threads: int) -> tuple[dict, torch.Tensor | None]:
    torch.set_num_threads(threads)
    from bench.run import execute_run

    return execute_run(RunSpec.from_dict(spec), progress=False)


class RayExecutor:
    """One Ray task per run, with its CPU/GPU request; results are written by the driver."""

    def __init__(self, address: str | None = None, progress: bool | None = None, **_: object) -> None:
        self.address = address
        self.progress = progress

    def run(self, runs: Sequence[RunSpec], on_result: OnResult) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        remote = ray.remote(_ray_task)
        futures = {}
        for run in runs:
            threads = run.threads or 1
            cuda = run.device.startswith("cuda") or (run.device == "auto" and _cluster_has_gpu(ray))
            if run.device == "auto":
                run = run.replace(device="cuda" if cuda else "cpu")
            ref = remote.options(num_cpus=threads, num_gpus=1 if cuda else 0, max_retries=0).remote(
                run.to_dict(), threads)
            futures[ref] = run
        while futures:
            done, _ = ray.wait(list(futures), num_returns=1)
            for ref in done:
                run = futures.pop(ref)
                try:
                    record, samples = ray.get(ref)
                except Exception as e:  # worker crash, OOM kill, cancellation
                    record, samples = _failed_record(run, "error", f"Ray task failed: {type(e).__name__}: "
                                                                   f"{' '.join(str(e).split())[:500]}"), None
                record["executor"] = "ray"
                on_result(record, samples)


def _cluster_has_gpu(ray) -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


EXECUTORS: dict[str, type] = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str, **options: object):
    """Build executor ``name`` (a key of :data:`EXECUTORS`)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; expected one of: {', '.join(EXECUTORS)}")
    return EXECUTORS[name](**options)
