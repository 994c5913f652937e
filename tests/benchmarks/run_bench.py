"""``tox -e bench``: run the pytest-benchmark suite with timings and compare with this machine's baseline.

* Results: ``.benchmarks/<machine id>/`` (pytest-benchmark's storage, auto-saved per run) and
  ``results/bench/latest.json`` (with every benchmark's ``extra_info``: NFE, batch, ratios).
* If a saved run exists for this machine, the new run is compared against the latest one and fails
  on a regression of the **min** time by more than 25 % (the threshold; min is the least noisy
  statistic on a shared machine). Note pytest-benchmark's trap: ``--benchmark-compare-fail`` takes
  several space-separated expressions in ONE option, and swallows any positional argument after it —
  so it is given last, as a single ``=``-joined option.
* ``--save-baseline`` forces a fresh baseline (no comparison).
"""

from __future__ import annotations

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
           f"--benchmark-json={out}", "--benchmark-sort=name", *extra]
    if has_baseline and not save_only:
        cmd += ["--benchmark-compare", f"--benchmark-compare-fail={THRESHOLD}"]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
