"""Fixed-step samplers: time per run at fixed NFE, the per-step work outside the network, and the
ratio of a run's time to the physical limit NFE × (bare forward time).

Two measurements per sampler family:
* ``overhead``: the sampler on a null network (output = input): its time per step *is* the work
  outside the network (noise draws, coefficients, updates, the wrapper's label conversion).
* ``ratio``: the sampler on a real network (the small U-Net at batch 256, the reduced-width
  NCSN++/DDPM++ at batch 16/64) against NFE × the bare forward time measured in the same session.
"""

from __future__ import annotations

import pytest

from solvers import Problem, SeededNoise, make_sampler
from tests.benchmarks.conftest import forward_time, null_model, reduced_ncsnpp, small_unet

FAMILIES = {
    "euler_maruyama": {},
    "reverse_diffusion": {},
    "ancestral_sampling": {},
    "pc": {"predictor": "reverse_diffusion", "corrector": "langevin"},
    "pf_euler": {},
    "pf_heun": {},
    "torchsde": {"method": "euler"},
}
N_STEPS = 41  # score_sde tables need n_steps > β_max = 20


def _run(sampler, problem, x, noise_seeds):
    noise = SeededNoise(noise_seeds)
    return sampler.sample(problem, x, noise)


SHAPES = {"cifar": (3, 32, 32), "digits": (1, 8, 8)}


@pytest.mark.parametrize("shape, batch", [("cifar", 16), ("cifar", 64), ("digits", 256)])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_overhead_per_step(benchmark, family, shape, batch, full_size):
    """Per-step time outside the network (targets: ≤ 1.5 ms at batch 64, ≤ 0.5 ms at batch 16 on
    3×32×32; the 1×8×8 batch-256 case is the small U-Net's, whose forward takes ~55 ms)."""
    n_steps = N_STEPS if full_size else 25
    batch = batch if full_size else 2
    sampler = make_sampler(family, n_steps=n_steps, **FAMILIES[family])
    problem = Problem(null_model(SHAPES[shape]))
    x = problem.prior_sample(batch, SeededNoise(range(batch)))
    sol = benchmark(_run, sampler, problem, x, range(batch))
    steps = sol.stats.n_steps
    benchmark.extra_info.update(nfe=sol.stats.nfe, batch=batch, steps=steps)
    if benchmark.stats is not None:
        per_step_ms = benchmark.stats.stats.min / steps * 1e3
        benchmark.extra_info["overhead_ms_per_step"] = per_step_ms


@pytest.mark.parametrize("model_name, batch", [("small_unet", 256), ("ddpmpp", 16), ("ddpmpp", 64),
                                               ("ncsnpp", 16), ("ncsnpp", 64)])
@pytest.mark.parametrize("family", ["euler_maruyama", "pc", "pf_heun"])
def test_ratio_to_network_limit(benchmark, family, model_name, batch, full_size):
    """Run time / (NFE × bare forward time); target ≤ 1.03 on the small U-Net at batch 256."""
    n_steps = 21 if full_size else 25  # score_sde's VP table (Langevin α_i) needs more than 20 steps
    batch = batch if full_size else 2
    model = small_unet() if model_name == "small_unet" else reduced_ncsnpp(model_name)
    # (PC with the Euler–Maruyama predictor: score_sde's VP table needs more than 20 steps.)
    options = {"predictor": "euler_maruyama", "corrector": "langevin"} if family == "pc" else FAMILIES[family]
    sampler = make_sampler(family, n_steps=n_steps, **options)
    problem = Problem(model)
    x = problem.prior_sample(batch, SeededNoise(range(batch)))
    repeats = 10 if full_size else 1
    fwd = forward_time(model, batch, repeats)
    sol = benchmark.pedantic(_run, args=(sampler, problem, x, range(batch)), rounds=3 if full_size else 1,
                             iterations=1)
    fwd = min(fwd, forward_time(model, batch, repeats))  # before and after: load drifts on a shared machine
    nfe = sol.stats.nfe
    benchmark.extra_info.update(nfe=nfe, batch=batch, forward_s=fwd)
    if benchmark.stats is not None:
        benchmark.extra_info["ratio_to_limit"] = benchmark.stats.stats.min / (nfe * fwd)
    # (Random networks may give a zero score, so Langevin steps can blow up: timing is all that counts.)
    assert nfe == sampler.expected_nfe


@pytest.mark.parametrize("batch", [16, 64])
@pytest.mark.parametrize("source", ["torch_randn", "seeded_noise"])
def test_noise_draw_floor(benchmark, source, batch, full_size):
    """One standard-normal draw of a 3×32×32 batch: the floor under every stochastic step's overhead
    (plain ``torch.randn`` vs the per-sample seeded source samplers use)."""
    import torch

    from solvers import SeededNoise

    batch = batch if full_size else 2
    shape = (batch, 3, 32, 32)
    noise = SeededNoise(range(batch))
    draw = (lambda: torch.randn(shape)) if source == "torch_randn" else (lambda: noise.normal(shape))
    z = benchmark(draw)
    benchmark.extra_info.update(batch=batch, numel=z.numel())
