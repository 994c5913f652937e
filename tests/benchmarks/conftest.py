"""Shared pieces of the pytest-benchmark suite.

In CI the suite runs with ``--benchmark-disable`` (functional mode: every benchmarked function runs
once); there the sizes shrink so the suite stays quick. ``tox -e bench`` runs the real sizes.

Every time in the suite is **CPU time of this process** (:data:`CLOCK`, and pytest-benchmark's timer
via run_bench): on one torch thread a CPU-bound run's CPU time is its wall time on an idle machine,
and it does not count the time other processes on a shared machine take from it.
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import pytest
import torch
from torch import nn

from models.configs import build_network
from models.score import NetworkScore
from models.sde import VESDE, VPSDE
from models.unet import SmallUNet, UNetConfig

CLOCK = time.process_time


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the machine's load next to the timings: 1/5/15-minute load averages when the run
    started (run_bench passes them in) and when the JSON is written."""
    del config
    start = os.environ.get("SCOREBENCH_BENCH_LOADAVG_START")
    machine_info["loadavg_start"] = [float(v) for v in start.split()] if start else None
    machine_info["loadavg_end"] = list(os.getloadavg())
    machine_info["cpu_count"] = os.cpu_count()


@pytest.fixture(scope="session")
def full_size(request) -> bool:
    """False in functional mode (``--benchmark-disable``): use tiny sizes."""
    opt = request.config.getoption
    return bool(opt("benchmark_enable", default=False)) or not opt("benchmark_disable", default=False)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Benchmarks on 1 thread: stable numbers on a 2-core machine shared with other work."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class NullNet(nn.Module):
    """A network that costs nothing (it returns its input): a sampler's time on it is exactly the
    work outside the network (the score wrapper's label conversion and division included)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))  # a parameter, so the wrapper finds the device

    def forward(self, x, labels):
        del labels
        return x


@functools.cache
def reduced_ncsnpp(kind: str) -> NetworkScore:
    """The reduced-width (nf = 16) official CIFAR-10 architecture, random weights, 3×32×32."""
    name = "vp/cifar10_ddpmpp_continuous" if kind == "ddpmpp" else "ve/cifar10_ncsnpp_continuous"
    sde = VPSDE() if kind == "ddpmpp" else VESDE()
    data_range = (-1.0, 1.0) if kind == "ddpmpp" else (0.0, 1.0)
    return NetworkScore(build_network(name, nf=16), sde, (3, 32, 32), data_range)


@functools.cache
def small_unet() -> NetworkScore:
    """The project's small CPU U-Net on 1×8×8 (the digits models' size), random weights, VP."""
    return NetworkScore(SmallUNet(UNetConfig(in_channels=1, image_size=8)), VPSDE(), (1, 8, 8))


def null_model(shape=(3, 32, 32), kind="vp") -> NetworkScore:
    return NetworkScore(NullNet(), VPSDE() if kind == "vp" else VESDE(), shape)


def bare_forwards(model: NetworkScore, batch: int, nfe: int) -> float:
    """Seconds for ``nfe`` bare network forwards (no wrapper, no sampler) at this batch size: the
    physical limit of a run with that NFE, timed the same way as the run itself."""
    x = torch.randn(batch, *model.shape)
    labels = torch.full((batch,), 500.0)
    with torch.no_grad():
        t0 = CLOCK()
        for _ in range(nfe):
            model.net(x, labels)
        return CLOCK() - t0


class Interleaved:
    """Times the limit right before every round of a ``benchmark.pedantic`` run (as its ``setup``),
    so that each run has a limit measured next to it under the same load.

    ``ratio`` is the median over rounds of run / limit of the same round: on a shared VM the speed
    drifts by tens of percent over seconds, which a min of single forwards against a min of whole
    runs (measured at other moments) turns into a biased ratio."""

    def __init__(self, limit) -> None:
        self.limit, self.times = limit, []

    def __call__(self):
        self.times.append(self.limit())

    def ratio(self, benchmark) -> float:
        runs = benchmark.stats.stats.data
        limits = self.times[-len(runs):]  # setup also runs before the warm-up rounds
        return statistics.median(r / lim for r, lim in zip(runs, limits, strict=True))

    def per_call(self, benchmark, nfe: int) -> float:
        """The limit's median over the timed rounds, per call (seconds)."""
        return statistics.median(self.times[-len(benchmark.stats.stats.data):]) / nfe
