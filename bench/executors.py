"""Executors: where the shards of a sweep are computed. A plain registry, ``EXECUTORS``.

Every executor's ``run(runs, out, on_record)`` drives a :class:`bench.sweep.Sweep` (claims, shard
files, merging) with a *pool* of workers; only the driver process writes files, so Ray nodes need no
shared file system. A pool has ``free()``, ``submit(key, run, shard, budget_s)`` and
``wait(timeout) -> [(key, shard state)]``.

* ``local`` — ``workers=1``: in this process, one shard after another, ``torch.set_num_threads`` set
  to the run's ``threads`` or every core this process may use (:func:`cpu_threads`). ``workers=N``:
  N spawned processes pull shards from a queue, each with ``cores // N`` threads (on CPU) or pinned
  to one GPU (``CUDA_VISIBLE_DEVICES``; one per visible device where runs use CUDA). A worker that
  dies fails its shard's run ("worker process died"), and is replaced.
* ``ray`` — one Ray task per shard with its CPU/GPU request and ``max_retries`` (default 3): a
  worker or node dying mid-shard costs that shard's retry, not the run; a task that still fails
  fails its run. Connects to ``address`` or to an already initialised Ray, else starts a local one.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bench.execute import execute_unit
from bench.grid import RunSpec
from bench.shards import Shard
from bench.sweep import Sweep

__all__ = ["EXECUTORS", "make_executor", "LocalExecutor", "RayExecutor", "ray_available", "available_cores",
           "cpu_threads", "RAY_MAX_RETRIES"]

OnRecord = Callable[[dict, "torch.Tensor | None"], None]
RAY_MAX_RETRIES = 3


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


def _visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _failed_state(message: str) -> dict:
    return {"status": "error", "message": message, "wall_time_s": 0.0}


# --- local ---------------------------------------------------------------------------------------
class InlinePool:
    """Computes each submitted shard in this process when ``wait`` is called."""

    def __init__(self, progress: bool | None = None) -> None:
        self.progress = progress
        self._task = None

    def free(self) -> bool:
        return self._task is None

    def submit(self, key, run: RunSpec, shard: Shard, budget_s: float | None) -> None:
        self._task = (key, run, shard, budget_s)

    def wait(self, timeout: float | None) -> list:
        del timeout
        if self._task is None:
            return []
        key, run, shard, budget = self._task
        self._task = None
        threads = cpu_threads(run.threads)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return [(key, execute_unit(run, shard, budget, self.progress))]

    def close(self) -> None:
        pass


class ProcessPool:
    """``n`` spawned worker processes; each holds its running shard and one queued behind it, so a
    worker never waits for the driver to write a result before starting its next shard.

    Args:
        n: number of workers.
        threads: torch threads per worker (CPU).
        gpus: pin worker i to GPU ``i % gpus`` (0: no pinning).
    """

    DEPTH = 2  # shards handed to a worker at once: the running one and the next

    def __init__(self, n: int, threads: int, gpus: int = 0) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.results = self.ctx.Queue()
        self.threads, self.gpus = threads, gpus
        self.workers: list[dict] = [self._start(i) for i in range(n)]
        # The driver only merges and writes: one torch thread, so that it does not take cores from the
        # workers (idle intra-op threads spin); restored on close.
        self._driver_threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def _start(self, i: int) -> dict:
        tasks = self.ctx.Queue()
        p = self.ctx.Process(target=_worker, args=(i, self.threads, i % self.gpus if self.gpus else None, tasks,
                                                   self.results), daemon=True)
        p.start()
        return {"i": i, "proc": p, "tasks": tasks, "keys": []}

    def free(self) -> bool:
        return any(len(w["keys"]) < self.DEPTH for w in self.workers)

    def submit(self, key, run: RunSpec, shard: Shard, budget_s: float | None) -> None:
        w = min(self.workers, key=lambda w: len(w["keys"]))
        w["keys"].append((key, (key, run.to_dict(), shard, budget_s)))
        w["tasks"].put((key, run.to_dict(), shard, budget_s))

    def wait(self, timeout: float | None) -> list:
        out = []
        try:
            item = self.results.get(timeout=timeout)
            while True:
                i, key, state = item
                keys = self.workers[i]["keys"]
                self.workers[i]["keys"] = [k for k in keys if k[0] != key]
                out.append((key, state))
                item = self.results.get_nowait()
        except queue.Empty:
            pass
        for k, w in enumerate(self.workers):
            if w["keys"] and not w["proc"].is_alive():
                (key, _), *queued = w["keys"]  # the running shard fails; the queued ones move on
                out.append((key, _failed_state(f"worker process died (exit code {w['proc'].exitcode})")))
                self.workers[k] = self._start(w["i"])
                for key, task in queued:
                    self.workers[k]["keys"].append((key, task))
                    self.workers[k]["tasks"].put(task)
        return out

    def close(self) -> None:
        for w in self.workers:
            if w["proc"].is_alive():
                w["tasks"].put(None)
        for w in self.workers:
            w["proc"].join(timeout=10)
            if w["proc"].is_alive():
                w["proc"].terminate()
        torch.set_num_threads(self._driver_threads)


def _worker(i: int, threads: int, gpu: int | None, tasks, results) -> None:
    """One local worker: pinned to its GPU or to ``threads`` CPU threads, it runs shards until the sentinel."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    torch.set_num_threads(threads)
    while (item := tasks.get()) is not None:
        key, spec, shard, budget = item
        run = RunSpec.from_dict(spec)
        if gpu is not None and run.device == "auto":
            run = run.replace(device="cuda")
        results.put((i, key, execute_unit(run, shard, budget, progress=False, info={"worker_gpu": gpu})))


class LocalExecutor:
    """Shards in this process (``workers=1``) or in ``workers`` spawned processes (one per GPU on CUDA)."""

    def __init__(self, progress: bool | None = None, workers: int = 1, **_: object) -> None:
        self.progress = progress
        self.workers = workers

    def pool(self, runs: Sequence[RunSpec]):
        gpus = _visible_gpus()
        on_cuda = gpus > 0 and any(r.device in ("auto", "cuda") for r in runs)
        n = self.workers if not on_cuda else (min(self.workers, gpus) if self.workers > 1 else gpus)
        if n <= 1:
            return InlinePool(self.progress)
        return ProcessPool(n, threads=max(1, available_cores() // n) if not on_cuda else 1,
                           gpus=gpus if on_cuda else 0)

    def run(self, runs: Sequence[RunSpec], out: Path, on_record: OnRecord) -> list[str]:
        """Compute and merge ``runs`` into ``out``; returns the shards computed here."""
        pool = self.pool(runs)  # first: spawned workers import torch while the sweep orders the shards
        try:
            sweep = Sweep(out, list(runs), on_record, executor_name="local")
            sweep.run(pool)
        finally:
            pool.close()
        return sweep.computed


# --- Ray -----------------------------------------------------------------------------------------
def _ray_task(spec: dict, shard: Shard, budget_s: float | None, threads: int) -> dict:
    torch.set_num_threads(threads)
    info = {}
    try:
        import ray

        info["ray_node"] = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        pass
    return execute_unit(RunSpec.from_dict(spec), shard, budget_s, progress=False, info=info)


class RayPool:
    """Shards as Ray tasks (``max_retries``: a dead worker or node re-runs the task elsewhere)."""

    def __init__(self, ray, max_retries: int = RAY_MAX_RETRIES) -> None:
        self.ray = ray
        self.remote = ray.remote(_ray_task)
        self.max_retries = max_retries
        self.capacity = max(1, int(2 * ray.cluster_resources().get("CPU", 1)))
        self.has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        self.futures: dict = {}

    def free(self) -> bool:
        return len(self.futures) < self.capacity

    def submit(self, key, run: RunSpec, shard: Shard, budget_s: float | None) -> None:
        threads = run.threads or 1
        cuda = run.device.startswith("cuda") or (run.device == "auto" and self.has_gpu)
        if run.device == "auto":
            run = run.replace(device="cuda" if cuda else "cpu")
        ref = self.remote.options(num_cpus=threads, num_gpus=1 if cuda else 0, max_retries=self.max_retries,
                                  retry_exceptions=False).remote(run.to_dict(), shard, budget_s, threads)
        self.futures[ref] = key

    def wait(self, timeout: float | None) -> list:
        if not self.futures:
            return []
        done, _ = self.ray.wait(list(self.futures), num_returns=1, timeout=timeout)
        out = []
        for ref in done:
            key = self.futures.pop(ref)
            try:
                state = self.ray.get(ref)
            except Exception as e:  # retries exhausted: worker crashes, OOM kills, cancellation
                state = _failed_state(f"Ray task failed after {self.max_retries} retries: {type(e).__name__}: "
                                      f"{' '.join(str(e).split())[:500]}")
            out.append((key, state))
        return out

    def close(self) -> None:
        pass


class RayExecutor:
    """One Ray task per shard, with its CPU/GPU request and retries; files are written by the driver."""

    def __init__(self, address: str | None = None, progress: bool | None = None, max_retries: int = RAY_MAX_RETRIES,
                 **_: object) -> None:
        self.address = address
        self.progress = progress
        self.max_retries = max_retries

    def run(self, runs: Sequence[RunSpec], out: Path, on_record: OnRecord) -> list[str]:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        sweep = Sweep(out, list(runs), on_record, executor_name="ray")
        sweep.run(RayPool(ray, self.max_retries))
        return sweep.computed


EXECUTORS: dict[str, type] = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str, **options: object):
    """Build executor ``name`` (a key of :data:`EXECUTORS`)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; expected one of: {', '.join(EXECUTORS)}")
    return EXECUTORS[name](**options)
