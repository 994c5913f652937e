"""``tox -e bench``: run the pytest-benchmark suite with timings and compare with this machine's baseline.

* Times are CPU time of the process (``--benchmark-timer=time.process_time``; see conftest.py).
* Results: ``.benchmarks/<machine id>/`` (pytest-benchmark's storage, auto-saved per run) and
  ``results/bench/latest.json`` (with every benchmark's ``extra_info``: NFE, batch, ratios).
* If a saved run exists for this machine, the new run is compared against the latest one and fails
  on a regression of the **min** time by more than 25 % (the threshold; min is the least noisy
  statistic on a shared machine). Note pytest-benchmark's trap: ``--benchmark-compare-fail`` takes
  several space-separated expressions in ONE option, and swallows any positional argument after it —
  so it is given last, as a single ``=``-joined option.
* ``--save-baseline`` forces a fresh baseline (no comparison).
* Fails (non-zero exit) when a run / limit ratio exceeds its bound in ``tests/benchmarks/bounds.py``.
* The load averages at the start and the end of the run go into the JSON's ``machine_info``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = "min:25%"


def main(argv: list[str]) -> int:
    save_only = "--save-baseline" in argv
    extra = [a for a in argv if a != "--save-baseline"]
    out = ROOT / "results" / "bench" / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    storage = ROOT / ".benchmarks"
    has_baseline = any(storage.glob("*/*.json")) if storage.exists() else False
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "benchmarks"), "--benchmark-enable",
           "-p", "no:cacheprovider", f"--benchmark-storage=file://{storage}", "--benchmark-autosave",
           f"--benchmark-json={out}", "--benchmark-sort=name", "--benchmark-timer=time.process_time", *extra]
    if has_baseline and not save_only:
        cmd += ["--benchmark-compare", f"--benchmark-compare-fail={THRESHOLD}"]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load average at start: {load}", flush=True)
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env={**os.environ, "SCOREBENCH_BENCH_LOADAVG_START": load})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
