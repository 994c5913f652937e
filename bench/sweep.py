"""The driver of a sweep: claims shards, hands them to an executor's workers, writes finished shards
and merges each run's shards into its record — cooperating with any other invocation on the same
results folder through claim files (:mod:`bench.claims`).

Order: longest remaining work first. A shard's cost (:func:`shard_costs`) is the run's NFE estimate
(:func:`bench.plan.estimate_nfe`) × its score calls per step × (a call's fixed overhead + the rows it
evaluates × a row weight: 1 for a network, 10⁻² for an exact mixture); samplers that loop over the
samples in Python make one call per sample. Shards are taken from the most costly down, so a long
run starts first and short ones fill in behind it.

For each shard, in that order: skip it if its run's record is ok or its state file exists; claim it
(``O_EXCL``); re-check both (another invocation may have just finished it); hand it to a worker.
A finished shard's state is written atomically, then its claim is removed. Shards claimed by a
live worker elsewhere are polled until their state appears or their claim goes stale (then they
are taken over). When every shard of a run has a state, the run's record is merged under a
``record.claim``, written, and the shard folder removed. A failing shard fails its run at once
(the run's other shards are not started); a failed run is retried only with ``--retry-failed``,
reusing its finished shards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.claims import Claims
from bench.execute import merge_or_fail
from bench.grid import RunSpec
from bench.plan import bpd_evaluations, estimate_nfe
from bench.records import OK, now, read_record, record_path
from bench.shards import BPD, Shard, read_shard, remove_shards, run_shards, shard_dir, shard_path, write_shard

__all__ = ["Sweep", "shard_costs"]

POLL_S = 0.2


def shard_costs(runs: list[RunSpec]) -> dict[tuple[str, str], float]:
    """Estimated cost of every shard, in units of one score call's fixed overhead: score calls × (1 + rows
    per call × a row weight: 1 for a network, 10⁻² for an exact mixture). A sampling shard makes NFE
    estimate calls per batch, times its samples for samplers that loop over samples in Python
    (``per_sample_loop``); a bits/dim shard makes :func:`bench.plan.bpd_evaluations` row evaluations in
    batches of ``bpd_batch_size``, each row a forward and a backward pass in float64 (row weight × 4)."""
    from solvers import declared, make_sampler

    costs = {}
    for run in runs:
        nfe, _ = estimate_nfe(run)
        row = 1.0 if run.model["kind"] != "mixture" else 1e-2
        loop = bool(declared(make_sampler(run.solver, **run.options))["per_sample_loop"])
        for sh in run_shards(run):
            if sh.index == BPD:
                rows = bpd_evaluations(run) or 1000.0
                calls = rows / int(run.data.get("bpd_batch_size", run.batch_size))
                cost = calls + 4 * rows * row
            else:
                n = sh.stop - sh.start
                calls = max(nfe or 1, 1) * (n if loop else 1)
                cost = calls + max(nfe or 1, 1) * n * row
            costs[(sh.run_id, sh.name)] = cost
    return costs


@dataclass
class _RunState:
    run: RunSpec
    shards: list[Shard]
    finished: bool = False
    spent_s: float = 0.0


class Sweep:
    """One invocation's share of a sweep over ``out``.

    Args:
        out: the results folder.
        runs: the runs still to do (their records are not ok).
        on_record: called with ``(record, samples)`` for every run this invocation finalises
            (after the record is written).
        claims: the claim holder (default: a new :class:`~bench.claims.Claims`).
    """

    def __init__(self, out: Path, runs: list[RunSpec], on_record: Callable, claims: Claims | None = None,
                 executor_name: str = "local") -> None:
        self.out = Path(out)
        self.on_record = on_record
        self.claims = claims or Claims()
        self.executor_name = executor_name
        self.runs = {r.run_id: _RunState(r, run_shards(r)) for r in runs}
        costs = shard_costs(runs)
        self.queue = sorted((sh for rs in self.runs.values() for sh in rs.shards),
                            key=lambda sh: -costs[(sh.run_id, sh.name)])
        self.computed: list[str] = []  # shards this invocation computed (for tests and the summary)
        self.started = now()
        self._to_merge: list[_RunState] = []

    # --- state on disk -----------------------------------------------------------------------------
    def _record_ok(self, run_id: str) -> bool:
        r = read_record(record_path(self.out, run_id))
        return r is not None and r.get("status") == OK

    def _record_final(self, run_id: str) -> bool:
        """The run has a record that ends it: ok, or failed since this sweep started (by anyone)."""
        r = read_record(record_path(self.out, run_id))
        return r is not None and (r.get("status") == OK or str(r.get("finished", "")) >= self.started)

    def _claim_path(self, sh: Shard) -> Path:
        return shard_dir(self.out, sh.run_id) / f"{sh.name}.claim"

    def _shard_done(self, sh: Shard) -> bool:
        return shard_path(self.out, sh).is_file()

    # --- the loop ------------------------------------------------------------------------------------
    def run(self, pool) -> None:
        """Drive ``pool`` (``free()``, ``submit(key, run, shard, budget)``, ``wait(timeout)``) to the end."""
        pending = list(self.queue)
        waiting: list[Shard] = []  # claimed by a live worker elsewhere
        inflight: dict[tuple[str, str], Shard] = {}

        def fill() -> None:
            while pending and pool.free():
                sh = pending.pop(0)
                rs = self.runs[sh.run_id]
                if rs.finished:
                    continue
                state = self._take(sh)
                if state == "done":
                    self._to_merge.append(rs)
                elif state == "busy":
                    waiting.append(sh)
                else:
                    budget = None if rs.run.timeout_s is None else rs.run.timeout_s - rs.spent_s
                    pool.submit((sh.run_id, sh.name), rs.run, sh, budget)
                    inflight[(sh.run_id, sh.name)] = sh

        try:
            while True:
                fill()
                if not (pending or waiting or inflight or self._unfinished() or self._to_merge):
                    break
                for rs in self._to_merge:  # after the pool was refilled: merging never idles a worker
                    self._on_done(rs)
                self._to_merge = []
                results = pool.wait(POLL_S) if inflight else []
                for key, _ in results:
                    inflight.pop(key)
                fill()  # freed workers get their next shard before results are written
                for key, result in results:
                    self._finish(self._shard(key), result)
                still = []
                for sh in waiting:
                    rs = self.runs[sh.run_id]
                    if rs.finished or self._shard_done(sh) or self._record_final(sh.run_id):
                        self._on_done(rs)
                    elif self.claims.is_stale(self._claim_path(sh)):
                        pending.insert(0, sh)  # its worker is gone: take it over
                    else:
                        still.append(sh)
                waiting = still
                if not (pending or waiting or inflight):
                    for rs in self.runs.values():
                        if not rs.finished:
                            self._on_done(rs)
                            if not rs.finished:  # a shard file vanished or was unreadable: compute it again
                                pending += [sh for sh in rs.shards if not self._shard_done(sh)]
                if not inflight and not results and not pending:
                    time.sleep(POLL_S)
        finally:
            self.claims.release_all()

    def _shard(self, key: tuple[str, str]) -> Shard:
        return next(sh for sh in self.runs[key[0]].shards if sh.name == key[1])

    def _unfinished(self) -> bool:
        return any(not rs.finished for rs in self.runs.values())

    def _take(self, sh: Shard) -> str:
        """'done', 'busy' (claimed elsewhere) or 'mine' (claimed here, to compute)."""
        if self._record_final(sh.run_id) or self._shard_done(sh):
            return "done"
        if not self.claims.try_claim(self._claim_path(sh)):
            return "done" if self._shard_done(sh) else "busy"
        if self._record_final(sh.run_id) or self._shard_done(sh):  # finished between the check and the claim
            self.claims.release(self._claim_path(sh))
            return "done"
        return "mine"

    def _finish(self, sh: Shard, state: dict) -> None:
        rs = self.runs[sh.run_id]
        rs.spent_s += float(state.get("wall_time_s", 0.0))
        merged = state.pop("merged", None)
        if state.get("status") == "ok" and merged is not None and not rs.finished and self._finalize(rs, merged=merged):
            self.computed.append(f"{sh.run_id}/{sh.name}")  # a run of one shard, merged by its worker: no shard file
            self.claims.release(self._claim_path(sh))
        elif state.get("status") == "ok":
            write_shard(self.out, sh, state)
            self.computed.append(f"{sh.run_id}/{sh.name}")
            self.claims.release(self._claim_path(sh))
            self._to_merge.append(rs)
        else:
            self.claims.release(self._claim_path(sh))
            if not rs.finished:
                self._finalize(rs, failure={**state, "index": sh.index})

    def _on_done(self, rs: _RunState) -> None:
        """Merge the run if all its shards have states (and nobody else is merging it)."""
        if rs.finished:
            return
        if self._record_final(rs.run.run_id):
            rs.finished = True
            return
        if all(self._shard_done(sh) for sh in rs.shards):
            self._finalize(rs)

    def _finalize(self, rs: _RunState, failure: dict | None = None, merged: tuple | None = None) -> bool:
        """Merge and write the run's record (``merged``: already merged by the worker); False when another
        invocation holds the record's claim (its record is polled for), else True."""
        run = rs.run
        claim = shard_dir(self.out, run.run_id) / "record.claim"
        if not self.claims.try_claim(claim):
            return False  # another invocation is merging it: polled until its record appears
        try:
            if self._record_final(run.run_id):
                rs.finished = True
                return True
            if merged is not None:
                self._write(rs, claim, *merged)
                return True
            states = []
            for sh in rs.shards:
                if failure is not None and _index_key(sh) >= _index_key(Shard(run.run_id, failure["index"])):
                    break
                s = read_shard(self.out, sh)
                if s is None:
                    if failure is None:  # unreadable: recompute it
                        shard_path(self.out, sh).unlink(missing_ok=True)
                        return False
                    break
                states.append(s)
            self._write(rs, claim, *merge_or_fail(run, states, failure))
            return True
        finally:
            self.claims.release(claim)

    def _write(self, rs: _RunState, claim: Path, record: dict, samples) -> None:
        """Write the run's record (its samples first), then drop its shard folder if it is ok."""
        record["executor"] = self.executor_name
        self.on_record(record, samples)
        rs.finished = True
        if record["status"] == OK:
            self.claims.release(claim)
            remove_shards(self.out, rs.run.run_id)


def _index_key(sh: Shard) -> float:
    return math.inf if sh.index == BPD else float(sh.index)
