"""The likelihood solver's time per NFE against one forward + one backward pass of the network.

score_sde spends 1.4–1.9 × NFE × (forward + backward) (two forwards per evaluation); scorebench
computes the drift and the Hutchinson VJP from one forward pass, differentiating the score alone
(bound 1.10 ×, tests/benchmarks/bounds.py). The limit is a loop of NFE forward + backward passes timed
right before each round.
"""

from __future__ import annotations

import pytest
import torch

from solvers import Problem, SeededNoise
from solvers.likelihood import ProbabilityFlowLikelihood
from tests.benchmarks.bounds import LIKELIHOOD_BOUND, check_bound
from tests.benchmarks.conftest import CLOCK, Interleaved, reduced_ncsnpp, small_unet


def forward_backward(model, batch: int, nfe: int) -> float:
    """Seconds for ``nfe`` bare net(x, labels) forwards, each followed by one VJP with respect to x:
    the physical limit of a Hutchinson likelihood solve with that NFE, timed as one loop."""
    x = torch.randn(batch, *model.shape)
    labels = torch.full((batch,), 500.0)
    eps = torch.randn_like(x)
    t0 = CLOCK()
    for _ in range(nfe):
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(model.net(xg, labels), xg, grad_outputs=eps)
    return CLOCK() - t0


@pytest.mark.parametrize("backend", ["scipy", "torchdiffeq"])
@pytest.mark.parametrize("model_name, batch", [("small_unet", 64), ("ddpmpp", 8)])
def test_likelihood_time_per_nfe(benchmark, backend, model_name, batch, full_size):
    model = small_unet() if model_name == "small_unet" else reduced_ncsnpp(model_name)
    batch = batch if full_size else 2
    tol = 1e-3 if full_size else 1e-1
    lik = ProbabilityFlowLikelihood(backend=backend, rtol=tol, atol=tol)
    problem = Problem(model)
    x = torch.rand(batch, *model.shape) * 2 - 1

    def run():
        return lik(problem, x, SeededNoise(range(batch)))

    nfe = run().nfe  # the same solve every round (same probe): its NFE sizes the limit
    limit = Interleaved(lambda: forward_backward(model, batch, nfe))
    res = benchmark.pedantic(run, setup=limit, rounds=5 if full_size else 1, iterations=1)
    assert res.nfe == res.n_vjp == nfe  # one forward and one backward per evaluation
    benchmark.extra_info.update(nfe=res.nfe, batch=batch)
    if benchmark.stats is not None:
        benchmark.extra_info["forward_backward_s"] = limit.per_call(benchmark, nfe)
        benchmark.extra_info["ratio_to_limit"] = ratio = limit.ratio(benchmark)
        benchmark.extra_info["bound"] = LIKELIHOOD_BOUND[backend]
        check_bound(f"likelihood ({backend}) on {model_name} at batch {batch}", ratio, LIKELIHOOD_BOUND[backend])
