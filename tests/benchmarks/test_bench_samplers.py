"""Fixed-step samplers: time per run at fixed NFE, the per-step work outside the network, and the
ratio of a run's time to the physical limit NFE × (bare forward time).

Two measurements per sampler family:
* ``overhead``: the sampler on a null network (output = input): its time per step *is* the work
  outside the network (noise draws, coefficients, updates, the wrapper's label conversion).
* ``ratio``: the sampler on a real network (the small U-Net at batch 256, the reduced-width
  NCSN++/DDPM++ at batch 16/64) against a loop of NFE bare forwards timed right before each round.
"""

from __future__ import annotations

import pytest
import torch

from solvers import Problem, SeededNoise, make_sampler
from tests.benchmarks.bounds import RATIO_BOUND, check_bound
from tests.benchmarks.conftest import CLOCK, Interleaved, bare_forwards, null_model, reduced_ncsnpp, small_unet

FAMILIES = {
    "euler_maruyama": {},
    "reverse_diffusion": {},
    "ancestral_sampling": {},
    "pc": {"predictor": "reverse_diffusion", "corrector": "langevin"},
    "annealed_langevin": {"steps_per_level": 1},
    "pf_euler": {},
    "pf_heun": {},
    "torchsde": {"method": "euler"},
    "ddim": {"eta": 1.0},
    "edm_heun": {},
    "edm_stochastic": {"S_churn": 40.0},
    "dpm_solver": {"solver_order": 3},
    "dpm_solver_pp": {"solver_order": 2},
    "dpm_solver_pp_sde": {},
    "unipc": {},
}
VE_ONLY = {"annealed_langevin"}  # samplers written for the σ-perturbation (VE) only
N_STEPS = 41  # score_sde tables need n_steps > β_max = 20


class CountingNoise:
    """A noise source that counts the draws it hands out (for the random-number floor per step)."""

    def __init__(self, noise) -> None:
        self.noise, self.draws = noise, 0

    def normal(self, *args, **kwargs):
        self.draws += 1
        return self.noise.normal(*args, **kwargs)

    def increment(self, *args, **kwargs):
        self.draws += 1
        return self.noise.increment(*args, **kwargs)


def _run(sampler, problem, x, noise_seeds):
    return sampler.sample(problem, x, SeededNoise(noise_seeds))


def _draw_time(shape, repeats: int = 50) -> float:
    """Fastest ``torch.randn`` of this shape, in seconds (the random-number floor of one draw), after
    a warm-up (the first draws of a new shape are slower: fresh memory)."""
    for _ in range(repeats):
        torch.randn(shape)
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        torch.randn(shape)
        times.append(CLOCK() - t0)
    return min(times)


SHAPES = {"cifar": (3, 32, 32), "digits": (1, 8, 8)}


@pytest.mark.parametrize("shape, batch", [("cifar", 16), ("cifar", 64), ("digits", 256)])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_overhead_per_step(benchmark, family, shape, batch, full_size):
    """Per-step time outside the network (targets: ≤ 1.5 ms at batch 64, ≤ 0.5 ms at batch 16 on
    3×32×32; the 1×8×8 batch-256 case is the small U-Net's, whose forward takes ~55 ms). Also
    reported: the draws per step and their floor (``torch.randn`` of the batch, timed alone)."""
    n_steps = N_STEPS if full_size else 25
    batch = batch if full_size else 2
    sampler = make_sampler(family, n_steps=n_steps, **FAMILIES[family])
    problem = Problem(null_model(SHAPES[shape], kind="ve" if family in VE_ONLY else "vp"))
    x = problem.prior_sample(batch, SeededNoise(range(batch)))
    sol = benchmark(_run, sampler, problem, x, range(batch))
    steps = sol.stats.n_steps
    counting = CountingNoise(SeededNoise(range(batch)))
    sampler.sample(problem, x, counting)
    draws_per_step = counting.draws / steps
    benchmark.extra_info.update(nfe=sol.stats.nfe, batch=batch, steps=steps, draws_per_step=draws_per_step)
    if benchmark.stats is not None:
        per_step_ms = benchmark.stats.stats.min / steps * 1e3
        benchmark.extra_info["overhead_ms_per_step"] = per_step_ms
        benchmark.extra_info["rng_floor_ms_per_step"] = draws_per_step * _draw_time((batch, *SHAPES[shape])) * 1e3


@pytest.mark.parametrize("model_name, batch", [("small_unet", 256), ("ddpmpp", 16), ("ddpmpp", 64),
                                               ("ncsnpp", 16), ("ncsnpp", 64)])
@pytest.mark.parametrize("family", ["euler_maruyama", "pc", "pf_heun"])
def test_ratio_to_network_limit(benchmark, family, model_name, batch, full_size):
    """Run time / (NFE bare forwards, timed as one loop right before each round); fails above the
    family's bound in tests/benchmarks/bounds.py (median over rounds of the paired ratios)."""
    n_steps = 21 if full_size else 25  # score_sde's VP table (Langevin α_i) needs more than 20 steps
    batch = batch if full_size else 2
    model = small_unet() if model_name == "small_unet" else reduced_ncsnpp(model_name)
    # (PC with the Euler–Maruyama predictor: score_sde's VP table needs more than 20 steps.)
    options = {"predictor": "euler_maruyama", "corrector": "langevin"} if family == "pc" else FAMILIES[family]
    sampler = make_sampler(family, n_steps=n_steps, **options)
    problem = Problem(model)
    x = problem.prior_sample(batch, SeededNoise(range(batch)))
    nfe = sampler.expected_nfe
    limit = Interleaved(lambda: bare_forwards(model, batch, nfe))
    sol = benchmark.pedantic(_run, args=(sampler, problem, x, range(batch)), setup=limit,
                             rounds=(5 if batch <= 16 or model_name == "small_unet" else 3) if full_size else 1)
    assert sol.stats.nfe == nfe
    benchmark.extra_info.update(nfe=nfe, batch=batch)
    if benchmark.stats is not None:
        benchmark.extra_info["forward_s"] = limit.per_call(benchmark, nfe)
        benchmark.extra_info["ratio_to_limit"] = ratio = limit.ratio(benchmark)
        benchmark.extra_info["bound"] = RATIO_BOUND[family]
        check_bound(f"{family} on {model_name} at batch {batch}", ratio, RATIO_BOUND[family])
    # (Random networks may give a zero score, so Langevin steps can blow up: timing is all that counts.)


@pytest.mark.parametrize("batch", [16, 64])
@pytest.mark.parametrize("source", ["torch_randn", "seeded_noise"])
def test_noise_draw_floor(benchmark, source, batch, full_size):
    """One standard-normal draw of a 3×32×32 batch: the floor under every stochastic step's overhead
    (plain ``torch.randn`` vs the per-sample seeded source samplers use)."""
    batch = batch if full_size else 2
    shape = (batch, 3, 32, 32)
    noise = SeededNoise(range(batch))
    draw = (lambda: torch.randn(shape)) if source == "torch_randn" else (lambda: noise.normal(shape))
    z = benchmark(draw)
    benchmark.extra_info.update(batch=batch, numel=z.numel())


@pytest.mark.parametrize("batch", [16, 64])
@pytest.mark.parametrize("backend", ["torchdiffeq_ode", "scipy_ode"])
def test_ode_overhead_per_nfe(benchmark, backend, batch, full_size):
    """The adaptive probability-flow ODE on the null network (3×32×32): its time per NFE is the work
    outside the network (target for the on-device path: ≤ 2 ms per NFE at batch 64)."""
    batch = batch if full_size else 2
    sampler = make_sampler(backend, rtol=1e-3, atol=1e-3)
    problem = Problem(null_model())
    x = problem.prior_sample(batch, SeededNoise(range(batch)))
    sol = benchmark(_run, sampler, problem, x, range(batch))
    benchmark.extra_info.update(nfe=sol.stats.nfe, batch=batch, steps=sol.stats.n_steps)
    if benchmark.stats is not None:
        benchmark.extra_info["overhead_ms_per_nfe"] = benchmark.stats.stats.min / sol.stats.nfe * 1e3
