"""The quickstart under a fixed synthetic load: wall-clock and CPU time of each executor configuration,
with and without busy processes beside it (issue 28; docs/harness.md, "The default under load").

Each configuration runs the whole quickstart (``python -m bench.run``, report included) into a fresh
folder; with ``--busy K`` K processes that spin on the CPU (pure Python loops, one core each) run
beside it for the whole run. The machine's own load averages are printed beside every figure:
on a shared machine "no synthetic load" is not "idle".

    python scripts/load_table.py --rounds 1 --busy 0,2 --samples 50 --out /tmp/load.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "grids" / "quickstart.yaml"

# name -> (extra CLI arguments, eval.threads or None, extra environment)
CONFIGS: dict[str, tuple[list[str], int | None, dict]] = {
    "workers=1 x 2 threads": (["--workers", "1"], None, {}),
    "workers=1 x 2 threads, OMP_WAIT_POLICY=PASSIVE": (["--workers", "1"], None, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "workers=1 x 1 thread": (["--workers", "1"], 1, {}),
    "workers=2 x 1 thread": (["--workers", "2"], None, {}),
    "default": ([], None, {}),
}


def start_busy(k: int) -> list[subprocess.Popen]:
    """``k`` processes spinning on the CPU (each one core's worth of load)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def grid_with_threads(threads: int | None, folder: Path) -> Path:
    if threads is None:
        return QUICKSTART
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw.setdefault("eval", {})["threads"] = threads
    path = folder / f"quickstart_threads{threads}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def time_run(args: list[str], env: dict, out: Path, limit_s: float | None = None) -> dict:
    """Wall-clock and CPU time (this child and every process it waited for) of one CLI run; a run still
    going after ``limit_s`` is stopped with SIGTERM (``stopped``: its last line says how many runs of the
    grid had finished)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", "--out", str(out), "--no-progress", *args],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stopped = False
    try:
        _, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        stopped = True
        proc.terminate()
        _, err = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rc": proc.returncode, "wall_s": wall, "cpu_s": cpu, "loadavg_before": load0, "stopped": stopped,
            "limit_s": limit_s, "loadavg_after": os.getloadavg(), "stderr_tail": err.strip().splitlines()[-1:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--busy", default="0,2", help="comma-separated numbers of busy processes")
    p.add_argument("--configs", default=";".join(n for n in CONFIGS if n != "default"),
                   help="semicolon-separated configuration names (of CONFIGS)")
    p.add_argument("--samples", type=int, default=None, help="--samples and --batch-size of every run")
    p.add_argument("--limit", type=float, default=None, help="stop a run (SIGTERM) after this many seconds")
    p.add_argument("--out", default=None, help="JSON file for the measurements")
    args = p.parse_args(argv)
    busy_levels = [int(b) for b in args.busy.split(",")]
    names = [n.strip() for n in args.configs.split(";") if n.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="scorebench-load-") as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            for busy in busy_levels:
                for name in names:
                    extra, threads, env = CONFIGS[name]
                    grid = grid_with_threads(threads, tmp)
                    hogs = start_busy(busy)
                    try:
                        time.sleep(1.0 if busy else 0.0)
                        n = str(args.samples)
                        size = ["--samples", n, "--batch-size", n] if args.samples else []
                        row = time_run(["--grid", str(grid), *size, *extra],
                                       {**os.environ, **env}, tmp / f"r{r}-b{busy}-{len(results)}", args.limit)
                    finally:
                        stop_busy(hogs)
                    row.update(config=name, busy=busy, round=r, utc=time.strftime("%H:%M:%S", time.gmtime()))
                    results.append(row)
                    note = f" STOPPED: {row['stderr_tail'][0]}" if row["stopped"] else ""
                    print(f"{row['utc']} round {r} busy {busy} {name:48s} rc {row['rc']} wall {row['wall_s']:7.1f} s "
                          f"cpu {row['cpu_s']:7.1f} s load {row['loadavg_before'][0]:.2f} -> "
                          f"{row['loadavg_after'][0]:.2f}{note}", flush=True)
                    if args.out:
                        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
