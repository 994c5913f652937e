"""Seed shards: resume mid-run after SIGKILL, concurrent invocations never compute a shard twice,
claims taken over from dead owners, local workers' makespan, bounds refused at validation.

The model is an exact Gaussian mixture that sleeps a fixed time per score call (tests/test_resume.py's
SlowMixture), so shard durations are set by the call count, not by the shared machine's load.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bench.claims import Claims
from bench.grid import load_grid
from bench.records import read_records, samples_path
from bench.run import main, run_grid
from bench.seeds import SeedRanges
from bench.shards import run_shards, shard_dir
from bench.workers import default_workers as DEFAULT_WORKERS  # noqa: N812  (bound before the suite pins it)
from tests.test_resume import SlowMixture

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
SLOW = "tests.test_resume:slow_model"


def write_grid(path: Path, *, delay: float, n_steps, num_samples: int = 32, batch_size: int = 4,
               shard_size: int = 8, metrics=("fd_exact", "sw2_exact", "loglik_exact"), name: str = "shards") -> Path:
    model = {"kind": "callable", "target": SLOW, "options": {"delay": delay}}
    path.write_text(yaml.safe_dump({
        "name": name, "model": model, "metrics": list(metrics),
        "eval": {"num_samples": num_samples, "batch_size": batch_size, "shard_size": shard_size,
                 "save_samples": num_samples, "device": "cpu", "threads": 1},
        "sweeps": [{"solver": "euler_maruyama", "n_steps": n_steps}]}))
    return path


def cli(grid: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.run", "--grid", str(grid), "--out", str(out), "--no-progress",
            "--no-report", *extra]


def assert_same_records(a: dict, b: dict, exact: bool = False) -> None:
    """Same runs, same per-batch NFE/steps, metrics equal (≤ 1e-9 relative, or bit for bit)."""
    assert set(a) == set(b)
    for rid, x in a.items():
        y = b[rid]
        assert x["status"] == y["status"] == "ok", (x["message"], y["message"])
        for key in ("nfe_per_batch", "steps_per_batch", "batch_sizes", "nfe", "nfe_total", "seeds"):
            assert x[key] == y[key], key
        assert set(x["metrics"]) == set(y["metrics"])
        for m, v in x["metrics"].items():
            w = y["metrics"][m]["value"]
            assert (v["value"] == w) if exact else abs(v["value"] - w) <= 1e-9 * abs(w), (m, v["value"], w)


def test_seed_ranges_are_never_expanded():
    s = SeedRanges.parse("0-999999999999,5,7-8")
    assert len(s) == 10**12 + 3 and str(s) == "0-999999999999,5,7-8"
    assert s.slice(10**12 - 1, 10**12 + 2) == [10**12 - 1, 5, 7]
    assert str(s.head(10**12 + 1)) == "0-999999999999,5"
    assert str(SeedRanges.parse([3, 4, 5, 9])) == "3-5,9"


def test_shards_are_whole_batches_and_do_not_change_results(tmp_path):
    """One shard of 32 vs 4 shards of 8 vs shard_size 5 (rounded up to 8): same batches, same record."""
    outs = {}
    for size in (32, 8, 5):
        grid = write_grid(tmp_path / f"g{size}.yaml", delay=0.0, n_steps=[6], shard_size=size)
        spec = load_grid(grid)
        assert [(s.start, s.stop) for s in run_shards(spec.runs[0])] == (
            [(0, 32)] if size == 32 else [(0, 8), (8, 16), (16, 24), (24, 32)])
        assert main(cli(grid, tmp_path / f"o{size}")[3:]) == 0
        outs[size] = tmp_path / f"o{size}"
    one, four = read_records(outs[32]), read_records(outs[8])
    assert_same_records(one, four)
    assert_same_records(four, read_records(outs[5]), exact=True)
    (rid,) = one
    assert torch.equal(torch.load(samples_path(outs[32], rid)), torch.load(samples_path(outs[8], rid)))
    assert four[rid]["shards"]["count"] == 4 and four[rid]["shards"]["merged"] == [0, 1, 2, 3]
    assert not shard_dir(outs[8], rid).exists(), "shard states are removed once the record is written"


def test_single_shard_runs_are_merged_by_their_worker(tmp_path, monkeypatch):
    """A run of one shard is merged where it is computed (the driver writes the record, no shard file):
    records from 2 worker processes equal those of one process, samples bit for bit."""
    import bench.sweep

    written = []
    monkeypatch.setattr(bench.sweep, "write_shard", lambda out, sh, state: written.append(sh))
    grid = write_grid(tmp_path / "g.yaml", delay=0.0, n_steps=[4, 6, 9], num_samples=8, shard_size=8)
    assert [len(run_shards(r)) for r in load_grid(grid).runs] == [1, 1, 1]
    for workers in ("1", "2"):
        assert main(cli(grid, tmp_path / f"o{workers}", "--workers", workers)[3:]) == 0
    assert written == [], "no shard state is written for a run of one shard"
    one, two = read_records(tmp_path / "o1"), read_records(tmp_path / "o2")
    assert_same_records(one, two, exact=True)
    assert len({w for r in two.values() for w in r["shards"]["workers"]}) == 2, "merged in two processes"
    for rid in one:
        a, b = (torch.load(samples_path(tmp_path / o, rid)) for o in ("o1", "o2"))
        assert torch.equal(a, b)


def _square(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x * x


def test_worker_pool_starmap_and_early_exit(tmp_path, capsys):
    """The pool the CLI spawns before validating: starmap gives fn's results in order (an exception in a
    worker raised here); an invalid grid exits 2 and leaves no worker process behind."""
    import multiprocessing as mp

    from bench.workers import ProcessPool

    pool = ProcessPool(2)
    try:
        assert pool.starmap(_square, [(k,) for k in range(7)]) == [k * k for k in range(7)]
        with pytest.raises(RuntimeError, match="negative"):
            pool.starmap(_square, [(1,), (-1,)])
    finally:
        pool.close()
    assert not mp.active_children()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodel: {kind: mixture}\nsweeps: [{solver: no_such_solver}]\n")
    assert main(["--grid", str(bad), "--out", str(tmp_path / "o"), "--workers", "2"]) == 2
    assert "no_such_solver" in capsys.readouterr().err
    assert not mp.active_children() and not (tmp_path / "o").exists()


def _cli_worker_pids(grid: Path, out: Path) -> tuple[int, set[int]]:
    """Run the CLI (its default --workers) as a subprocess: (its pid, the pids that computed the shards)."""
    proc = subprocess.Popen(cli(grid, out), env=ENV, cwd=out.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return proc.pid, {int(w.rsplit(":", 1)[1]) for r in read_records(out).values() for w in r["shards"]["workers"]}


def test_default_is_one_single_threaded_worker_per_core(tmp_path, monkeypatch):
    """Issue 28: without --workers the CLI runs min(cores, 8) worker processes of cores // workers threads
    (docs/harness.md: the default under load), never more than there are shards: a one-shard sweep, or
    one core, computes in the CLI's own process."""
    import bench.workers

    for cores, expected in ((1, 1), (2, 2), (16, 8)):
        monkeypatch.setattr(bench.workers, "available_cores", lambda c=cores: c)
        assert DEFAULT_WORKERS() == expected  # the real function (the suite pins bench.workers.default_workers)
    monkeypatch.undo()
    grid = write_grid(tmp_path / "g.yaml", delay=0.0, n_steps=[3, 4, 5, 6], num_samples=8, shard_size=8)
    cli_pid, pids = _cli_worker_pids(grid, tmp_path / "o")
    if bench.workers.available_cores() > 1:
        assert cli_pid not in pids and len(pids) == min(bench.workers.available_cores(), 4), pids  # 4 shards
    one = write_grid(tmp_path / "one.yaml", delay=0.0, n_steps=[3], num_samples=8, shard_size=8)
    cli_pid, pids = _cli_worker_pids(one, tmp_path / "o1")
    assert pids == {cli_pid}


@pytest.mark.parametrize("report", [True, False], ids=["report", "no-report"])
def test_worker_sweep_exits_clean(tmp_path, report):
    """``--workers 2`` through the real CLI (issue 28): stderr holds only the summary line (no
    resource_tracker "leaked semaphore" warning: the workers' semaphores are released before they
    exit) and no process of the sweep outlives the CLI (workers joined, the resource tracker reaped):
    its process group is empty the moment it has exited."""
    grid = write_grid(tmp_path / "g.yaml", delay=0.0, n_steps=[3, 4, 5, 6, 7, 8], num_samples=8, shard_size=8)
    args = cli(grid, tmp_path / "o", "--workers", "2")
    proc = subprocess.Popen([a for a in args if report is False or a != "--no-report"],
                            env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # the CLI and all it starts: process group proc.pid
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    left = None
    try:
        os.killpg(proc.pid, 0)  # succeeds while any process of the group is left (a zombie too)
        left = subprocess.run(["ps", "-o", "pid,stat,args", "-g", str(proc.pid)], capture_output=True,
                              text=True).stdout
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert proc.returncode == 0, err
    assert left is None, f"processes of the sweep alive after the CLI exited:\n{left}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("shards: 6 ran (6 ok, 0 failed; 6 shards computed here)"), err


def test_killed_after_second_shard_resumes_with_the_two_missing(tmp_path):
    """Must show: a 4-shard run killed after its 2nd shard: the rerun computes exactly the 2 missing
    shards; the record equals an uninterrupted run's (samples bit-identical, metrics ≤ 1e-9)."""
    grid = write_grid(tmp_path / "g.yaml", delay=0.05, n_steps=[10])  # 2 batches × 10 calls × 50 ms per shard
    (run,) = load_grid(grid).runs
    out = tmp_path / "killed"
    proc = subprocess.Popen(cli(grid, out), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = shard_dir(out, run.run_id)
    deadline = time.monotonic() + 120
    try:
        while len(list(folder.glob("[0-9].pt"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = sorted(p.name for p in folder.glob("*.pt"))
    assert done == ["0.pt", "1.pt"], done
    assert list(folder.glob("2.claim")), "the third shard was in flight, claimed by the dead process"
    assert not read_records(out)

    grid_spec = load_grid(grid)
    counts = run_grid(grid_spec, out, progress=False, report=False)
    assert counts["shards_computed"] == 2 and counts["ok"] == 1
    whole = tmp_path / "whole"
    assert run_grid(grid_spec, whole, progress=False, report=False)["shards_computed"] == 4
    a, b = read_records(out), read_records(whole)
    assert_same_records(a, b)
    assert torch.equal(torch.load(samples_path(out, run.run_id)), torch.load(samples_path(whole, run.run_id)))
    assert a[run.run_id]["shards"]["merged"] == [0, 1, 2, 3]


def test_four_concurrent_invocations_compute_each_shard_once(tmp_path):
    """Must show: 4 invocations of one grid on one folder: shards computed = number of shards, records
    identical to a single invocation's."""
    grid = write_grid(tmp_path / "g.yaml", delay=0.01, n_steps=[4, 6, 8])
    spec = load_grid(grid)
    n_shards = sum(len(run_shards(r)) for r in spec.runs)
    out = tmp_path / "shared"
    procs = [subprocess.Popen(cli(grid, out), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    computed = 0
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        computed += int(re.search(r"(\d+) shards computed here", err).group(1))
    assert computed == n_shards == 12
    single = tmp_path / "single"
    assert run_grid(spec, single, progress=False, report=False)["shards_computed"] == n_shards
    assert_same_records(read_records(out), read_records(single), exact=True)
    assert not list((out / "runs").glob(".tmp-*"))


def test_claims_exclusive_and_taken_over_from_dead_or_silent_owners(tmp_path):
    a, b = Claims(timeout_s=1.0, heartbeat_s=0.2), Claims(timeout_s=1.0, heartbeat_s=0.2)
    path = tmp_path / "0.claim"
    assert a.try_claim(path) and not b.try_claim(path)
    time.sleep(1.5)  # a's heartbeat keeps it alive past the timeout
    assert not b.try_claim(path) and a.holds(path)
    a.release(path)
    assert b.try_claim(path) and b.holds(path)
    b._stop.set()  # b falls silent: no more heartbeats
    time.sleep(1.3)
    assert a.try_claim(path) and not b.holds(path)
    b.release(path)  # a silent owner never removes its successor's claim
    assert path.exists() and a.holds(path)
    a.release_all()
    # A claim of a process that no longer exists on this host is stale at once.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"host": a.host, "pid": dead.pid, "started": None, "token": "x"}))
    assert Claims(timeout_s=3600).try_claim(path)


def test_two_workers_makespan_close_to_half_the_work(tmp_path):
    """Must show: a grid whose model costs a fixed time per call, 2 workers: makespan ≤ 1.1 × total/2.

    The shards' own start and end times (in the record) give both: total = Σ shard durations,
    makespan = last end − first start over all shards."""
    grid = write_grid(tmp_path / "g.yaml", delay=0.05, n_steps=[5, 10, 20], num_samples=16, shard_size=4)
    out = tmp_path / "out"
    assert main(cli(grid, out, "--workers", "2")[3:]) == 0
    spans = [s for r in read_records(out).values() for s in r["shards"]["spans"]]
    assert len(spans) == 12 and len({s[3] for s in spans}) == 2, "two worker processes"
    t = [(dt.datetime.fromisoformat(s[1]), dt.datetime.fromisoformat(s[2])) for s in spans]
    total = sum((b - a).total_seconds() for a, b in t)
    makespan = (max(b for _, b in t) - min(a for a, _ in t)).total_seconds()
    print(f"2 workers: makespan {makespan:.2f} s, total shard time {total:.2f} s, ratio to total/2 "
          f"{makespan / (total / 2):.3f}")
    assert makespan <= 1.1 * total / 2, (makespan, total)


@pytest.mark.parametrize("field,value,expect", [
    ("num_samples", 1_000_000_000, "makes 500000 shards"),
    ("batch_size", 10_000_000, "one batch needs at least"),
    ("n_steps", 10**7, "must be at most 1e+06"),
])
def test_what_the_machine_cannot_hold_exits_2_at_once(tmp_path, capsys, monkeypatch, field, value, expect):
    """Must show: num_samples 1e9 and batch_size 1e7 exit 2 with the estimate in under a second (the
    memory available is pinned to 16 GiB, so the test does not depend on the machine)."""
    import bench.bounds

    monkeypatch.setattr(bench.bounds, "available_bytes", lambda device: (16 * 2**30, "MemAvailable (test)"))
    model = {"kind": "mixture", "sde": {"kind": "vp"}, "means": [[0.0, 0.0]], "std": 0.2}
    ev = {"num_samples": 1000, "batch_size": 100} | ({field: value} if field != "n_steps" else {})
    if field == "batch_size":
        ev["num_samples"] = value
    grid = tmp_path / "g.yaml"
    steps = value if field == "n_steps" else 10
    grid.write_text(yaml.safe_dump({"name": "big", "model": model, "metrics": ["fd_exact"], "eval": ev,
                                    "sweeps": [{"solver": "pf_euler", "n_steps": steps}]}))
    t0 = time.perf_counter()
    assert main(["--grid", str(grid), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert expect in err and str(grid) in err, err
    assert elapsed < 1.0, elapsed
    assert not (tmp_path / "out").exists()


class _OomMixture(SlowMixture):
    """Runs out of host memory on its first call: ``MemoryError`` or C++'s ``std::bad_alloc``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def __call__(self, x, t):
        if self.kind == "bad_alloc":
            raise RuntimeError("std::bad_alloc")
        raise MemoryError()


def oom_model(kind: str) -> _OomMixture:
    return _OomMixture(kind)


@pytest.mark.parametrize("kind", ["memory_error", "bad_alloc"])
def test_out_of_host_memory_is_status_oom_saying_what_was_allocated(tmp_path, kind):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "oom", "metrics": ["fd_exact"], "eval": {"num_samples": 6, "batch_size": 3, "device": "cpu"},
        "model": {"kind": "callable", "target": f"{__name__}:oom_model", "options": {"kind": kind}},
        "sweeps": [{"solver": "pf_euler", "n_steps": 4}]}))
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 1
    (r,) = read_records(out).values()
    assert r["status"] == "oom", r["message"]
    assert "while sampling batch 0 (3 samples of shape [2], float32" in r["message"], r["message"]
