"""Shared test fixtures: the reference fixtures' location, one thread, a fixed seed; and CI's strict
mode, in which no test may skip.

Tests choose their dtype themselves (the exact-score problems are float64 where an order or a
tolerance needs it; samplers follow the dtype of x_T). Strict mode (``SCOREBENCH_REQUIRE_FIXTURES=1``,
set by .ci/run, where the extras, the fixtures and Fashion-MNIST are installed): every skip is a
failure, whatever raised it (:func:`missing`, ``pytest.importorskip``, a ``skipif`` mark, a skip at
collection)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    """shared/fixtures beside the checkout, or $SCOREBENCH_FIXTURES."""
    env = os.environ.get("SCOREBENCH_FIXTURES")
    return Path(env) if env else ROOT.parent / "shared" / "fixtures"


def strict() -> bool:
    """CI's strict mode: nothing may skip."""
    return os.environ.get("SCOREBENCH_REQUIRE_FIXTURES") == "1"


def missing(msg: str) -> None:
    """Something a test needs is absent: skip with the reason, or fail under CI's strict mode."""
    if strict():
        pytest.fail(f"{msg} (SCOREBENCH_REQUIRE_FIXTURES=1: nothing may skip)")
    pytest.skip(msg)


def require_fixture(relpath: str) -> Path:
    """Path of a reference fixture; skip with a reason where absent, fail under CI's strict mode."""
    path = fixtures_root() / relpath
    if not path.exists():
        missing(f"reference fixture {path} not found (set SCOREBENCH_FIXTURES to shared/fixtures)")
    return path


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail_skip(report) -> None:
    if report.skipped and strict() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under SCOREBENCH_REQUIRE_FIXTURES=1, where nothing may skip: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Strict mode: a test that skips (importorskip, skipif, pytest.skip) fails instead."""
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Strict mode: a module that skips at import (a module-level importorskip) fails instead."""
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests run on one torch/BLAS thread: small CPU networks and 2048-d linear algebra run several times
    slower with two threads on a 2-core machine that also runs subprocesses (CLI, resume, Ray tests)."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _cli_in_process(monkeypatch):
    """``bench.run.main`` called in this process computes in this process unless the test passes
    ``--workers``: the CLI's default (one worker process per core, :func:`bench.workers.default_workers`)
    would spawn workers for each of the suite's many small in-process sweeps (seconds each on the shared
    cores), and monkeypatches do not reach spawned workers. The default itself runs in the tests that
    start ``python -m bench.run`` as a subprocess (tests/test_shards.py, tests/test_hostile_input.py)."""
    import bench.workers

    monkeypatch.setattr(bench.workers, "default_workers", lambda: 1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
