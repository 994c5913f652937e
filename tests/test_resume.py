"""Resume after a real SIGKILL: finished runs kept and not recomputed, no corrupt record, no duplicates."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from bench.records import read_record, read_records, record_path, write_record
from bench.run import main
from models.gaussian import GaussianMixture
from models.sde import make_sde

ROOT = Path(__file__).resolve().parents[1]
N_RUNS = 12


class SlowMixture(GaussianMixture):
    """An exact mixture score that sleeps ``delay`` seconds per call (and is NaN if ``nan``)."""

    def __init__(self, delay: float = 0.0, nan: bool = False) -> None:
        super().__init__(torch.tensor([[-0.5, 0.0], [0.5, 0.0]]), 0.1, make_sde("vp"))
        self.delay, self.nan = delay, nan

    def __call__(self, x, t):
        time.sleep(self.delay)
        s = super().__call__(x, t)
        return s * float("nan") if self.nan else s


def slow_model(**options) -> SlowMixture:
    return SlowMixture(**options)


def write_grid(path: Path, model: dict, sweeps: list) -> Path:
    path.write_text(yaml.safe_dump({"name": "resume", "model": model, "metrics": ["fd_exact"],
                                    "eval": {"num_samples": 8, "batch_size": 4}, "sweeps": sweeps}))
    return path


def snapshot(out: Path) -> dict[str, tuple[int, str]]:
    return {k: (record_path(out, k).stat().st_mtime_ns, r["created"]) for k, r in read_records(out).items()}


def test_sigkill_mid_sweep_then_resume(tmp_path):
    model = {"kind": "callable", "target": f"{__name__}:slow_model", "options": {"delay": 0.02}}
    grid = write_grid(tmp_path / "g.yaml", model, [{"solver": "pf_euler", "n_steps": list(range(10, 10 + N_RUNS))}])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    cmd = [sys.executable, "-m", "bench.run", "--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(list((out / "runs").glob("*.json"))) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no records after 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # a real kill, wherever it is: sampling, metrics or a write
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    files = [p for p in (out / "runs").iterdir() if not p.name.startswith(".")]
    before = snapshot(out)
    assert 3 <= len(before) < N_RUNS, "killed mid-sweep"
    for p in files:
        if p.suffix == ".json":
            r = read_record(p)
            assert r is not None and r["status"] == "ok", f"corrupt or unfinished record {p.name}"
    # A writer killed mid-write leaves only a hidden temp file: readers ignore it, a re-run removes it.
    stray = out / "runs" / ".tmp-0123456789.json.abc"
    stray.write_text('{"run_id": "0123456789", "sta')

    assert main(["--grid", str(grid), "--out", str(out), "--no-progress"]) == 0
    after = snapshot(out)
    assert len(after) == N_RUNS
    assert all(after[k] == v for k, v in before.items()), "a finished run was recomputed"
    assert not stray.exists()
    with open(out / "runs.csv") as f:
        ids = [row["run_id"] for row in csv.DictReader(f)]
    assert sorted(ids) == sorted(after) and len(set(ids)) == N_RUNS

    # A third invocation has nothing to do.
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    assert snapshot(out) == after


def test_failed_runs_are_kept_until_retry_failed(tmp_path):
    nan = {"kind": "callable", "target": f"{__name__}:slow_model", "options": {"nan": True}}
    grid = write_grid(tmp_path / "g.yaml", nan, [{"solver": "pf_euler", "n_steps": 5}])
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 1
    first = snapshot(out)
    (rid,) = first
    assert read_records(out)[rid]["status"] == "nonfinite"
    # Skipped, and still a failure of the grid: exit 1 (issue 14), nothing rewritten.
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 1
    assert snapshot(out) == first, "a failed run is not retried without --retry-failed"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report", "--retry-failed"]) == 1
    assert snapshot(out)[rid][1] != first[rid][1], "--retry-failed re-ran it"


def test_unreadable_record_is_rerun(tmp_path):
    good = {"kind": "mixture", "sde": {"kind": "vp"}, "means": [[0.0, 0.0]], "std": 0.2}
    grid = write_grid(tmp_path / "g.yaml", good, [{"solver": "pf_euler", "n_steps": [4, 5]}])
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    rid = sorted(read_records(out))[0]
    record_path(out, rid).write_text("{not json")  # e.g. edited by hand; never produced by the writer
    assert rid not in read_records(out)
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    assert read_records(out)[rid]["status"] == "ok"
    write_record(out, {**read_records(out)[rid], "status": "running"})  # a stale in-progress marker is re-run
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    assert read_records(out)[rid]["status"] == "ok"
