"""The likelihood solver's time per NFE against one forward + one backward pass of the network.

score_sde spends 1.4–1.9 × NFE × (forward + backward) (two forwards per evaluation); scorebench
computes the drift and the Hutchinson VJP from one forward pass (target ≤ 1.1 ×).
"""

from __future__ import annotations

import time

import pytest
import torch

from solvers import Problem, SeededNoise
from solvers.likelihood import ProbabilityFlowLikelihood
from tests.benchmarks.conftest import reduced_ncsnpp, small_unet


def forward_backward_time(model, batch: int, repeats: int) -> float:
    """Fastest of ``repeats`` net(x, labels) plus one VJP with respect to x, in seconds."""
    x = torch.randn(batch, *model.shape)
    labels = torch.full((batch,), 500.0)
    eps = torch.randn_like(x)
    times = []
    for _ in range(repeats + 1):
        xg = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        out = model.net(xg, labels)
        torch.autograd.grad(out, xg, grad_outputs=eps)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


@pytest.mark.parametrize("backend", ["scipy", "torchdiffeq"])
@pytest.mark.parametrize("model_name, batch", [("small_unet", 64), ("ddpmpp", 8)])
def test_likelihood_time_per_nfe(benchmark, backend, model_name, batch, full_size):
    model = small_unet() if model_name == "small_unet" else reduced_ncsnpp(model_name)
    batch = batch if full_size else 2
    tol = 1e-3 if full_size else 1e-1
    lik = ProbabilityFlowLikelihood(backend=backend, rtol=tol, atol=tol)
    problem = Problem(model)
    x = torch.rand(batch, *model.shape) * 2 - 1
    fb = forward_backward_time(model, batch, repeats=10 if full_size else 1)

    def run():
        return lik(problem, x, SeededNoise(range(batch)))

    res = benchmark.pedantic(run, rounds=3 if full_size else 1, iterations=1)
    fb = min(fb, forward_backward_time(model, batch, repeats=10 if full_size else 1))  # load drifts: before/after
    assert res.nfe == res.n_vjp  # one forward and one backward per evaluation
    benchmark.extra_info.update(nfe=res.nfe, batch=batch, forward_backward_s=fb)
    if benchmark.stats is not None:
        benchmark.extra_info["ratio_to_limit"] = benchmark.stats.stats.min / (res.nfe * fb)
