"""Benchmarks of the ODE / adaptive solvers (pytest-benchmark; with --benchmark-disable they run once,
on a reduced problem, in a few seconds).

* SciPy RK45 vs torchdiffeq dopri5 on the probability-flow ODE at equal tolerance: NFE and time per
  NFE (``benchmark.extra_info``).
* Gotta Go Fast's adaptive Improved Euler vs fixed-step Euler–Maruyama: the NFE each needs to reach
  the same moment error against an exact mixture, as a ratio (docs/adaptive.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.gaussian import GaussianMixture
from models.sde import VPSDE
from solvers import Problem, SeededNoise, make_sampler
from tests.benchmarks.conftest import CLOCK


def _mixture(shape):
    D = math.prod(shape)
    means = torch.stack([torch.linspace(-0.7, -0.3, D).reshape(shape), torch.linspace(0.2, 0.6, D).reshape(shape)])
    return GaussianMixture(means.double(), torch.tensor([0.15, 0.15]), VPSDE(), weights=torch.tensor([0.3, 0.7]))


# ---- SciPy vs torchdiffeq ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["scipy_ode", "torchdiffeq_ode"])
def test_bench_ode_backends(benchmark, full_size, backend):
    B = 256 if full_size else 16
    model = _mixture((1, 4, 4))
    x_T = SeededNoise(range(B)).normal((B, 1, 4, 4))  # float32 model, as score_sde
    sampler = make_sampler(backend, rtol=1e-5, atol=1e-5)
    problem = Problem(model)

    def run():
        problem.counter.reset()
        return sampler.sample(problem, x_T, None)

    start = CLOCK()
    sol = benchmark.pedantic(run, rounds=3 if full_size else 1, iterations=1)
    wall = CLOCK() - start
    rounds = 3 if full_size else 1
    # The score network's own cost per call on this batch, to show the solver's overhead per NFE.
    t = torch.full((B,), 0.5, dtype=torch.float32)
    t0 = CLOCK()
    for _ in range(20):
        model(x_T, t)
    score_ms = (CLOCK() - t0) / 20 * 1e3
    per_nfe_ms = wall / rounds / sol.stats.nfe * 1e3
    benchmark.extra_info.update(backend=backend, batch_size=B, nfe=sol.stats.nfe, n_steps=sol.stats.n_steps,
                                time_per_nfe_ms=per_nfe_ms, score_call_ms=score_ms,
                                overhead_per_nfe_ms=per_nfe_ms - score_ms)
    assert sol.status == "ok"
    assert 40 < sol.stats.nfe < 400


# ---- adaptive vs Euler–Maruyama -----------------------------------------------------------------------
def moment_error(x: torch.Tensor, model: GaussianMixture) -> float:
    """Within-component moment error Σ_k w_k (|mean(x − μ_k)| + |mean((x − μ_k)²) − s_k²|), samples assigned
    to their nearest component mean; values pooled over samples and dimensions. Pooling the whole batch
    instead would be dominated by the binomial noise of the component fractions (~0.02 at B = 400),
    which no solver can reduce; the within-component noise is ~s/√(B_k·D)."""
    xf = x.double().flatten(1)
    mu = model.means.flatten(1)  # [K, D]
    k = torch.cdist(xf, mu).argmin(1)
    err = 0.0
    for j in range(mu.shape[0]):
        d = xf[k == j] - mu[j]
        if d.numel():
            m1, m2 = d.mean().item(), d.pow(2).mean().item()
            err += model.weights[j].item() * (abs(m1) + abs(m2 - model.var0[j].mean().item()))
    return err


def adaptive_vs_em(B: int, shape: tuple[int, ...], em_steps: list[int], rtols: list[float], atol: float = 0.0078):
    """Moment error vs counted NFE for EM (GGF baseline convention: n−1 steps + Tweedie) and for the
    adaptive solver; for each rtol, the EM NFE giving the same error (log–log interpolation) / adaptive NFE."""
    model = _mixture(shape)
    x_T = SeededNoise(range(10_000, 10_000 + B)).normal((B, *shape), dtype=torch.float64)
    em = []
    for n in em_steps:
        sol = make_sampler("euler_maruyama", n_steps=n, denoise="ggf").sample(Problem(model), x_T,
                                                                                     SeededNoise(range(B)))
        em.append((sol.stats.nfe, moment_error(sol.x, model)))
    rows = []
    for rtol in rtols:
        sol = make_sampler("adaptive_improved_euler", rtol=rtol, atol=atol).sample(Problem(model), x_T,
                                                                                   SeededNoise(range(B)))
        err = moment_error(sol.x, model)
        nfe_em = _interpolate_nfe(em, err)
        rows.append({"rtol": rtol, "nfe": sol.stats.nfe, "error": err, "em_nfe_same_error": nfe_em,
                     "nfe_per_sample_mean": sol.stats.nfe_per_sample.double().mean().item(),
                     "ratio": None if nfe_em is None else nfe_em / sol.stats.nfe})
    return em, rows


def _interpolate_nfe(em: list[tuple[int, float]], err: float) -> float | None:
    """EM NFE at which its error equals ``err`` (log–log interpolation of the EM curve; None outside it)."""
    nfe = np.log([e[0] for e in em])
    errs = np.log([max(e[1], 1e-12) for e in em])
    for i in range(len(em) - 1):
        lo, hi = sorted((errs[i], errs[i + 1]))
        if lo <= math.log(err) <= hi and errs[i] != errs[i + 1]:
            w = (math.log(err) - errs[i]) / (errs[i + 1] - errs[i])
            return float(np.exp(nfe[i] + w * (nfe[i + 1] - nfe[i])))
    return None


def test_bench_adaptive_vs_em(benchmark, full_size):
    if full_size:
        args = dict(B=1000, shape=(1, 8, 8), em_steps=[25, 50, 100, 200, 400, 800], rtols=[0.01, 0.02, 0.05, 0.1])
    else:  # CI: the same pipeline on a tiny problem
        args = dict(B=32, shape=(1, 4, 4), em_steps=[20, 80], rtols=[0.1])
    em, rows = benchmark.pedantic(adaptive_vs_em, kwargs=args, rounds=1, iterations=1)
    benchmark.extra_info.update(em=[{"nfe": n, "error": e} for n, e in em], adaptive=rows, **{
        k: v for k, v in args.items() if k != "shape"}, dim=math.prod(args["shape"]))
    assert len(rows) == len(args["rtols"]) and all(r["nfe"] > 0 for r in rows)
