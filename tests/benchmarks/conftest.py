"""Shared pieces of the pytest-benchmark suite.

In CI the suite runs with ``--benchmark-disable`` (functional mode: every benchmarked function runs
once); there the sizes shrink so the suite stays quick. ``tox -e bench`` runs the real sizes.
"""

from __future__ import annotations

import functools
import time

import pytest
import torch
from torch import nn

from models.configs import build_network
from models.score import NetworkScore
from models.sde import VESDE, VPSDE
from models.unet import SmallUNet, UNetConfig


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
    """A network that costs (almost) nothing: isolates the per-step work outside the network."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, labels):
        return x * self.w


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


def forward_time(model: NetworkScore, batch: int, repeats: int) -> float:
    """Fastest of ``repeats`` bare network forwards (no wrapper) at this batch size, in seconds (the min, like
    the run times it is compared with: the least disturbed by other load on a shared machine)."""
    x = torch.randn(batch, *model.shape)
    labels = torch.full((batch,), 500.0)
    times = []
    with torch.no_grad():
        model.net(x, labels)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.net(x, labels)
            times.append(time.perf_counter() - t0)
    return min(times)
