"""Shared test fixtures: float64 by default for solver tests, and the reference fixtures' location."""

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


def require_fixture(relpath: str) -> Path:
    """Path of a reference fixture; skip with a reason where absent, fail under CI's strict mode."""
    path = fixtures_root() / relpath
    if not path.exists():
        msg = f"reference fixture {path} not found (set SCOREBENCH_FIXTURES to shared/fixtures)"
        if os.environ.get("SCOREBENCH_REQUIRE_FIXTURES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


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
def _seed():
    torch.manual_seed(0)
    yield
