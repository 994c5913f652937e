"""Executors: where the shards of a sweep are computed. A plain registry, ``EXECUTORS``.

Every executor's ``run(runs, out, on_record)`` drives a :class:`bench.sweep.Sweep` (claims, shard
files, merging) with a *pool* of workers; only the driver process writes files, so Ray nodes need no
shared file system. A pool has ``free()``, ``submit(key, run, shard, budget_s)`` and
``wait(timeout) -> [(key, shard state)]``. ``starmap(fn, items)`` runs other independent work where
the executor can (the report's figures on local worker processes), and ``close()`` ends the executor.

* ``local`` — ``workers=1``: in this process, one shard after another, ``torch.set_num_threads`` set
  to the run's ``threads`` or every core this process may use (:func:`cpu_threads`). ``workers=N``:
  N spawned processes (:mod:`bench.workers`) pull shards from a queue, each with ``cores // N``
  threads (on CPU) or pinned to one GPU (``CUDA_VISIBLE_DEVICES``; one per visible device where runs
  use CUDA); never more workers than shards. A worker that dies fails its shard's run ("worker
  process died"), and is replaced. The CLI's default is :func:`bench.workers.default_workers`.
* ``ray`` — one Ray task per shard with its CPU/GPU request and ``max_retries`` (default 3): a
  worker or node dying mid-shard costs that shard's retry, not the run; a task that still fails
  fails its run. Connects to ``address`` or to an already initialised Ray, else starts a local one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from bench.execute import execute_unit
from bench.grid import RunSpec
from bench.shards import Shard, run_shards
from bench.sweep import Sweep
from bench.workers import ProcessPool, available_cores, failed_state

__all__ = ["EXECUTORS", "make_executor", "LocalExecutor", "RayExecutor", "ray_available", "available_cores",
           "cpu_threads", "RAY_MAX_RETRIES"]

OnRecord = Callable[[dict, "torch.Tensor | None"], None]
RAY_MAX_RETRIES = 3


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


class LocalExecutor:
    """Shards in this process (``workers=1``) or in ``workers`` worker processes (one per GPU on CUDA).

    Args:
        progress: tqdm bars (None: automatic).
        workers: worker processes.
        pool: a :class:`~bench.workers.ProcessPool` already spawned with ``workers`` processes (the CLI
            starts it before importing torch); configured here for the runs, closed by :meth:`close`.
    """

    def __init__(self, progress: bool | None = None, workers: int = 1, pool: ProcessPool | None = None,
                 **_: object) -> None:
        self.progress = progress
        self.workers = workers
        self._pool = pool

    def pool(self, runs: Sequence[RunSpec]):
        """Where the shards of ``runs`` go: this process, or worker processes (never more than there are
        shards: a sweep of one shard runs here, with every core's thread, as one run always did)."""
        gpus = _visible_gpus()
        on_cuda = gpus > 0 and any(r.device in ("auto", "cuda") for r in runs)
        n = self.workers if not on_cuda else (min(self.workers, gpus) if self.workers > 1 else gpus)
        n = min(n, sum(len(run_shards(r)) for r in runs))
        if n <= 1:
            return InlinePool(self.progress)
        if self._pool is None or len(self._pool) < n:
            if self._pool is not None:
                self._pool.close(now=True)
            self._pool = ProcessPool(n)
        self._pool.configure(n, threads=max(1, available_cores() // n) if not on_cuda else 1,
                             gpus=gpus if on_cuda else 0)
        return self._pool

    def run(self, runs: Sequence[RunSpec], out: Path, on_record: OnRecord) -> list[str]:
        """Compute and merge ``runs`` into ``out``; returns the shards computed here. Worker processes stay
        up for :meth:`starmap` until :meth:`close`."""
        pool = self.pool(runs)  # first: spawned workers import torch while the sweep orders the shards
        sweep = Sweep(out, list(runs), on_record, executor_name="local")
        sweep.run(pool)
        return sweep.computed

    def starmap(self, fn: Callable, items: Iterable[tuple]) -> list:
        """``[fn(*item) for item in items]`` on the worker processes, if any (the report's figures)."""
        if self._pool is None:
            return list(itertools.starmap(fn, items))
        return self._pool.starmap(fn, items)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


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
                state = failed_state(f"Ray task failed after {self.max_retries} retries: {type(e).__name__}: "
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

    def starmap(self, fn: Callable, items: Iterable[tuple]) -> list:
        """``[fn(*item) for item in items]`` in this process."""
        return list(itertools.starmap(fn, items))

    def close(self) -> None:
        pass


EXECUTORS: dict[str, type] = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str, **options: object):
    """Build executor ``name`` (a key of :data:`EXECUTORS`)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; expected one of: {', '.join(EXECUTORS)}")
    return EXECUTORS[name](**options)
