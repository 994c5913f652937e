"""Ray with retries on a real two-node cluster on this machine: the second node killed mid-run.

A head node and a second node are started with ``ray start`` (ports of their own, a temp dir of
their own, one CPU each, so shards run on both); the sweep's driver is ``python -m bench.run
--executor ray --address ...``. While a shard runs on the second node, that node's worker and its
raylet are killed (SIGKILL). The grid must complete with every shard merged exactly once and the
records equal to the local executor's. Teardown kills only the processes whose command line names
this test's temp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.grid import load_grid
from bench.records import read_records
from bench.run import run_grid
from bench.shards import run_shards
from tests.test_shards import ENV, assert_same_records, write_grid

pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[test,ray]' (the [ray] extra)")
RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
# No token authentication on this private test cluster (a token file in ~/.ray would otherwise be
# required by the head and not sent by the second node).
RAY_ENV = {**ENV, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out[int(d.name)] = (ppid, cmd)
    return out


def _descendants(root: int, procs: dict) -> list[int]:
    kids, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        for pid, (ppid, _) in procs.items():
            if ppid == p:
                kids.append(pid)
                frontier.append(pid)
    return kids


@pytest.fixture
def cluster():
    """(address, node-2 node-manager port, temp dir): a head and a second node, 1 CPU each."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dash, nm1, om1, nm2, om2, wlo = _free_ports(7)
    env = RAY_ENV
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}",
                        f"--node-manager-port={nm1}", f"--object-manager-port={om1}", f"--temp-dir={temp}",
                        "--include-dashboard=false", f"--min-worker-port={wlo}", f"--max-worker-port={wlo + 40}",
                        *common],
                       check=True, env=env, capture_output=True, timeout=180)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{gcs}", f"--node-manager-port={nm2}",
                        f"--object-manager-port={om2}", f"--min-worker-port={wlo + 41}",
                        f"--max-worker-port={wlo + 80}", *common],
                       check=True, env=env, capture_output=True, timeout=180)
        yield f"127.0.0.1:{gcs}", nm2, temp
    finally:
        mine = [pid for pid, (_, cmd) in _procs().items() if temp in cmd and pid != os.getpid()]
        for pid in mine:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
        for pid, (_, cmd) in _procs().items():  # the second node's processes name the head's address
            if f"127.0.0.1:{gcs}" in cmd and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(temp, ignore_errors=True)


def test_second_node_killed_mid_run_grid_completes(cluster, tmp_path):
    """Must show: Ray, two nodes on this machine, one killed mid-run: the grid completes, no shard lost
    or duplicated."""
    address, nm2, _ = cluster
    grid = write_grid(tmp_path / "g.yaml", delay=0.05, n_steps=[10, 20, 30], num_samples=16, shard_size=4)
    spec = load_grid(grid)
    n_shards = sum(len(run_shards(r)) for r in spec.runs)
    out = tmp_path / "ray"
    driver = subprocess.Popen([sys.executable, "-m", "bench.run", "--grid", str(grid), "--out", str(out),
                               "--executor", "ray", "--address", address, "--no-progress", "--no-report"],
                              cwd=tmp_path, env=RAY_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = []
    deadline = time.monotonic() + 240
    while not killed and time.monotonic() < deadline and driver.poll() is None:
        procs = _procs()
        raylet = next((pid for pid, (_, cmd) in procs.items()
                       if "raylet" in cmd and f"--node_manager_port={nm2}" in cmd), None)
        finished = len(list(out.glob("shards/*/*.pt"))) + 4 * len(list(out.glob("runs/*.json")))
        if raylet is not None and finished >= 3:  # some shards done on both nodes, then the kill
            busy = [pid for pid in _descendants(raylet, procs) if "ray::_ray_task" in procs[pid][1]]
            if busy:  # a shard is running on the second node: kill its worker, then the node
                for pid in [*busy, raylet, *_descendants(raylet, procs)]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        pass
        time.sleep(0.02)
    assert killed, "no shard ran on the second node"
    stdout, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stderr
    computed = int(re.search(r"(\d+) shards computed here", stderr).group(1))
    assert computed == n_shards, "every shard written once: none lost, none twice"
    records = read_records(out)
    assert len(records) == len(spec.runs)
    workers = set()
    for r in records.values():
        assert r["status"] == "ok" and r["executor"] == "ray"
        assert r["shards"]["merged"] == [0, 1, 2, 3]
        workers |= {s[3] for s in r["shards"]["spans"]}
    assert len(workers) >= 2, "shards computed on both nodes"
    print(f"killed {len(killed)} processes of the second node mid-shard; {computed} shards of {n_shards} "
          f"written once; shards computed by workers {sorted(workers)}")
    local = tmp_path / "local"
    run_grid(spec, local, progress=False, report=False)
    assert_same_records(records, read_records(local))
