"""The CPU default under load (issue 28): the sweep with busy processes beside it, the default executor
against one process with a thread per core (the default before issue 28).

On a 2-core machine a torch process with 2 intra-op threads stalls whenever another process takes one
core: every parallel region waits for its slowest thread. The default (:func:`bench.workers.default_workers`
single-threaded workers) degrades with the load instead. ``tox -e bench`` runs the quickstart
(``--samples 50``) with :data:`BUSY` spinning processes, the two configurations alternated for
:data:`ROUNDS` rounds, and fails when the median paired ratio default / one-process exceeds
:data:`~tests.benchmarks.bounds.LOAD_BOUND`; in functional mode (CI) a 3-run mixture grid, one round,
no busy process: both finish with the same records. The measured table is docs/harness.md's "The default under load".
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.records import read_records
from tests.benchmarks.bounds import LOAD_BOUND, check_bound

ROOT = Path(__file__).resolve().parents[2]
BUSY = 2
ROUNDS = 3
ONE_PROCESS = ["--workers", "1"]  # one process, a torch thread per core: the default before issue 28


def _busy(k: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def _timed(grid: Path, out: Path, extra: list[str], samples: list[str], busy: int) -> float:
    """Wall-clock seconds of one CLI sweep into ``out``, with ``busy`` spinning processes beside it."""
    hogs = _busy(busy)
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bench.run", "--grid", str(grid), "--out", str(out),
                               "--no-progress", *samples, *extra], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1800)
        wall = time.perf_counter() - t0
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert proc.returncode == 0, proc.stderr
    return wall


def _tiny_grid(folder: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "load", "models": {"m": {"kind": "mixture", "means": [[-0.5, 0.0], [0.5, 0.0]], "std": 0.1,
                                         "sde": {"kind": "vp"}}},
        "eval": {"num_samples": 20, "batch_size": 20, "device": "cpu"},
        "sweeps": [{"solver": "pf_euler", "n_steps": [3, 5, 8]}]}))
    return path


def test_default_executor_under_load(full_size, tmp_path):
    if full_size:
        grid, samples, rounds, busy = ROOT / "grids" / "quickstart.yaml", ["--samples", "50", "--batch-size", "50"], \
            ROUNDS, BUSY
    else:
        grid, samples, rounds, busy = _tiny_grid(tmp_path), [], 1, 0
    ratios, rows = [], []
    for r in range(rounds):
        load = os.getloadavg()[0]
        default = _timed(grid, tmp_path / f"default{r}", [], samples, busy)
        one = _timed(grid, tmp_path / f"one{r}", ONE_PROCESS, samples, busy)
        ratios.append(default / one)
        rows.append({"round": r, "default_s": default, "one_process_s": one, "loadavg_1min_before": load})
    a, b = read_records(tmp_path / "default0"), read_records(tmp_path / "one0")
    assert set(a) == set(b) and all(a[k]["nfe"] == b[k]["nfe"] for k in a)  # the same runs, the same work
    ratio = statistics.median(ratios)
    (tmp_path / "load.json").write_text(json.dumps(rows))
    print(f"default / one process with {busy} busy processes: {ratio:.3f} ({rows})")
    if full_size:
        check_bound(f"quickstart --samples 50 with {BUSY} busy processes, default / one process", ratio, LOAD_BOUND)
