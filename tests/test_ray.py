"""The Ray executor on a local 2-CPU cluster gives the same records as the local executor."""

from __future__ import annotations

import math

import pytest

from bench.records import read_records
from bench.run import main
from tests.test_run import QUICK_ARGS, QUICKSTART, quickstart_local  # noqa: F401  (shared session fixture)

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[test,ray]' (the [ray] extra)")


def test_ray_executor_matches_local(quickstart_local, tmp_path):  # noqa: F811
    rc_local, local_out = quickstart_local
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        rc = main(["--grid", str(QUICKSTART), "--out", str(tmp_path / "ray"), "--executor", "ray", "--no-report",
                   *QUICK_ARGS])
    finally:
        ray.shutdown()
    assert rc == rc_local
    local, remote = read_records(local_out), read_records(tmp_path / "ray")
    assert set(local) == set(remote)
    for rid, a in local.items():
        b = remote[rid]
        assert b["executor"] == "ray" and a["executor"] == "local"
        assert (a["status"], a["solver"], a["options"]) == (b["status"], b["solver"], b["options"])
        assert a["nfe_per_batch"] == b["nfe_per_batch"], (a["solver"], a["options"])
        assert a["steps_per_batch"] == b["steps_per_batch"]
        assert set(a["metrics"]) == set(b["metrics"])
        for m, v in a["metrics"].items():
            assert math.isclose(v["value"], b["metrics"][m]["value"], rel_tol=1e-4, abs_tol=1e-6), (rid, m)
