"""Local worker processes (``--workers N``): spawned first, before the driver imports torch, so that
their start-up (each imports torch and the samplers) overlaps the driver's own start-up and the grid's
validation (``python -m bench.run`` starts them as soon as its arguments are parsed).

A worker is generic when spawned. :meth:`ProcessPool.configure` (called once the runs are known) sets
how many are used, their torch threads on CPU and their GPU: worker i is pinned to GPU ``i % gpus``
(``CUDA_VISIBLE_DEVICES``, set before its first CUDA call). Each worker holds its running shard and one
queued behind it (:data:`DEPTH`), so it never waits for the driver to write a result before starting
its next shard. :meth:`ProcessPool.starmap` runs other independent work on the same processes once the
shards are done (the report's figures).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
from collections.abc import Callable, Iterable

__all__ = ["ProcessPool", "DEPTH", "MAX_DEFAULT_WORKERS", "available_cores", "default_workers", "failed_state",
           "stop_resource_tracker"]

DEPTH = 2  # shards handed to a worker at once: the running one and the next
MAX_DEFAULT_WORKERS = 8  # the default's cap: every worker holds its own copy of the model


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """``--workers`` when not given: one worker process per core this process may use (at most
    :data:`MAX_DEFAULT_WORKERS`), each with ``cores // workers`` torch threads (1 up to 8 cores); 1 (in
    this process) on one core. Chosen from the quickstart measured with and without busy processes
    beside it (docs/harness.md, "The default under load"): single-threaded workers were the fastest
    configuration in both conditions, and one process with a thread per core slowed down most under load.
    """
    return max(1, min(available_cores(), MAX_DEFAULT_WORKERS))


def failed_state(message: str) -> dict:
    return {"status": "error", "message": message, "wall_time_s": 0.0}


class ProcessPool:
    """``n`` spawned worker processes (see the module docstring).

    Args:
        n: number of workers to spawn now.
    """

    def __init__(self, n: int) -> None:
        self.ctx = mp.get_context("spawn")
        self.results = self.ctx.Queue()
        self.threads, self.gpus = 1, 0
        self._driver_threads: int | None = None
        self.workers: list[dict] = [self._start(i) for i in range(n)]

    def _start(self, i: int) -> dict:
        tasks = self.ctx.Queue()
        p = self.ctx.Process(target=_worker, args=(i, tasks, self.results), daemon=True)
        p.start()
        return {"i": i, "proc": p, "tasks": tasks, "keys": []}

    def configure(self, n: int, threads: int, gpus: int = 0) -> None:
        """Use the first ``n`` workers (the others are stopped), ``threads`` torch threads each (CPU), worker
        i on GPU ``i % gpus`` (0: none). The driver then keeps one torch thread: it only merges and
        writes, and idle intra-op threads spin on the cores the workers need (restored by :meth:`close`)."""
        import torch

        for w in self.workers[n:]:
            self._stop(w)
        self.workers = self.workers[:n]
        self.threads, self.gpus = threads, gpus
        if self._driver_threads is None:
            self._driver_threads = torch.get_num_threads()
            torch.set_num_threads(1)

    def __len__(self) -> int:
        return len(self.workers)

    def free(self) -> bool:
        return any(len(w["keys"]) < DEPTH for w in self.workers)

    def submit(self, key, run, shard, budget_s: float | None) -> None:
        w = min(self.workers, key=lambda w: len(w["keys"]))
        task = ("shard", key, run.to_dict(), shard, budget_s, self.threads, w["i"] % self.gpus if self.gpus else None)
        w["keys"].append((key, task))
        w["tasks"].put(task)

    def wait(self, timeout: float | None) -> list:
        """Finished shards ``[(key, state)]`` (waiting up to ``timeout`` s for the first); a worker that died
        fails its running shard ("worker process died") and is replaced, its queued shards moved on."""
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
                out.append((key, failed_state(f"worker process died (exit code {w['proc'].exitcode})")))
                self.workers[k] = self._start(w["i"])
                for key, task in queued:
                    self.workers[k]["keys"].append((key, task))
                    self.workers[k]["tasks"].put(task)
        return out

    def starmap(self, fn: Callable, items: Iterable[tuple]) -> list:
        """``[fn(*item) for item in items]``, the items dealt round-robin to the workers (``fn`` importable
        by name; no shard may be in flight). An item whose worker died is computed in this process; an
        exception in ``fn`` is raised here."""
        items = list(items)
        if any(w["keys"] for w in self.workers):
            raise RuntimeError("starmap while shards are in flight")
        owner = {}
        for j, item in enumerate(items):
            w = self.workers[j % len(self.workers)]
            owner[j] = w
            w["tasks"].put(("call", j, fn, item))
        done: dict[int, object] = {}
        while len(done) < len(items):
            try:
                _, j, (ok, value) = self.results.get(timeout=1.0)
            except queue.Empty:
                for j, w in owner.items():
                    if j not in done and not w["proc"].is_alive():
                        done[j] = fn(*items[j])
                continue
            if not ok:
                raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in a worker: {value}")
            done[j] = value
        return [done[j] for j in range(len(items))]

    def _stop(self, w: dict) -> None:
        if w["proc"].is_alive():
            w["tasks"].put(None)

    def close(self, now: bool = False) -> None:
        """Stop the workers (``now``: terminate them, e.g. when the grid turned out invalid), then release
        this process's ends of the queues (their named semaphores are unlinked now, not at interpreter exit,
        so :func:`stop_resource_tracker` finds none in use). A closed pool has no workers."""
        for w in self.workers:
            if now:
                w["proc"].terminate()
            else:
                self._stop(w)
        for w in self.workers:
            w["proc"].join(timeout=10)
            if w["proc"].is_alive():
                w["proc"].terminate()
                w["proc"].join()
        for w in self.workers:
            w["tasks"].close()
            w["tasks"].join_thread()  # the feeder thread holds the queue's semaphores until it ends
        if self.results is not None:
            self.results.close()
        self.workers, self.results = [], None
        if self._driver_threads is not None:
            import torch

            torch.set_num_threads(self._driver_threads)
            self._driver_threads = None


def stop_resource_tracker() -> None:
    """Stop multiprocessing's resource tracker, once no process of ours uses it any more (the CLI's exit).

    Spawning the workers starts it (a process beside the driver that unlinks named semaphores their
    owners did not); left alone it outlives the driver: it notices the driver's exit, then exits, a
    moment after the CLI returned. Stopped here it exits now and is reaped here; a later spawn in this
    process starts a new one. ``_stop`` is CPython's own (3.8+; what its tests use). Queues that only a
    reference cycle still holds (the frames of a SIGTERM's or SIGINT's traceback) are collected first, so
    their semaphores are unlinked by their own finalizers, not reported as leaked by the tracker."""
    import gc
    from multiprocessing import resource_tracker

    gc.collect()
    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        stop()


def _next_task(tasks):
    """The next task, or None (the sentinel, or the driver is gone: a SIGKILLed driver sends no sentinel,
    and its worker would wait for one for ever)."""
    parent = mp.parent_process()
    while True:
        try:
            return tasks.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None


def _worker(i: int, tasks, results) -> None:
    """One worker: imports what a shard needs at once, then runs tasks until the sentinel (None).
    SIGINT is the driver's: a Ctrl-C reaches the whole process group, and the driver stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from bench.execute import execute_unit
    from bench.grid import RunSpec

    pinned = False
    while (item := _next_task(tasks)) is not None:
        kind, key, *args = item
        if kind == "call":
            fn, arg = args
            try:
                results.put((i, key, (True, fn(*arg))))
            except Exception as e:  # noqa: BLE001  (raised in the driver)
                results.put((i, key, (False, f"{type(e).__name__}: {e}")))
            continue
        spec, shard, budget, threads, gpu = args
        if gpu is not None and not pinned:  # before this process's first CUDA call
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
            pinned = True
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        run = RunSpec.from_dict(spec)
        if gpu is not None and run.device == "auto":
            run = run.replace(device="cuda")
        results.put((i, key, execute_unit(run, shard, budget, progress=False, info={"worker_gpu": gpu})))
    # Everything this worker computed went through `results`: flush it, then end as multiprocessing's own
    # fork-started children do (Process._bootstrap): its exit function first, which runs the finalizers that
    # unlink and unregister the named semaphores this process created (tqdm's lock, made by every tqdm bar,
    # even a disabled one; skipped, each is reported by the resource tracker as a "leaked semaphore" when
    # the CLI exits), then os._exit without the interpreter's teardown (~0.4 s with torch loaded, which
    # the driver would wait for).
    results.close()
    results.join_thread()
    mp.util._exit_function()
    os._exit(0)
