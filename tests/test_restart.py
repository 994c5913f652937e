"""Restart sampling (solvers/restart.py) against what its reference fixes (Newbeeer/diffusion_restart_sampling,
``benchmarks/generate_restart.py``, read, not copied; it is no package, so nothing runs side by side):
the σ sequence of its model calls and its NFE for given options, its formulas against the exact restart
process on Gaussian data (the probability-flow map and the re-noising in closed form), EDM Heun when it
has no interval, and its refusals."""

from __future__ import annotations

import math

import pytest
import torch

from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE
from solvers import Problem, SeededNoise, make_sampler
from solvers.denoiser import ve_sigma
from solvers.requirements import refusal
from tests.test_fast_samplers import MU, S0, fitted_order, mixture_setup

SDES = {"vp": VPSDE(), "ve": VESDE(sigma_max=5.0)}


class Logged:
    """A score model that records the time of every call (then forwards it)."""

    def __init__(self, model) -> None:
        self.model, self.times = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, t):
        self.times.append(t[0].item())
        return self.model(x, t)

    def data_and_noise(self, x, t):
        self.times.append(t[0].item())
        return self.model.data_and_noise(x, t)


class Recorded:
    """A SeededNoise that keeps the draws it hands out (``normal``: the re-noising)."""

    def __init__(self, seeds) -> None:
        self.inner, self.normals = SeededNoise(seeds), []

    def normal(self, shape, **kw):
        z = self.inner.normal(shape, **kw)
        self.normals.append(z.clone())
        return z

    def increment(self, t, t_next, shape, **kw):
        return self.inner.increment(t, t_next, shape, **kw)


def karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> list[float]:
    """The reference's ``get_steps``: n points from sigma_max down to sigma_min."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (n - 1) * (b - a)) ** rho for i in range(n)]


def gaussian(kind: str, n: int = 6):
    sde = SDES[kind]
    problem = Problem(GaussianMixture.isotropic(sde, MU, S0, shape=(1, 2, 2)))
    x_T = problem.prior_sample(n, SeededNoise(range(100, 100 + n)), dtype=torch.float64)
    return problem, x_T


# ---- the reference's schedule of model calls and its NFE ---------------------------------------------
@pytest.mark.parametrize("K, restart_steps, t_min, t_max", [(2, 3, 0.14, 0.30), (1, 4, 1.0, 3.0), (3, 2, 0.5, 2.0)])
def test_model_calls_follow_the_reference_schedule(K, restart_steps, t_min, t_max):
    """Main Heun steps on the Karras grid σ_0 > … > σ_{N−1} (calls at σ_i and σ_{i+1}); after the step that
    lands on σ_j, j = argmin |σ_i − t_min|, K times the Heun steps of the Karras grid of ``restart_steps``
    points from t_max to σ_j; then the final step to σ = 0 (one call at σ_{N−1}). NFE counted = that count
    = 2(N − 1) + 1 + 2K(restart_steps − 1), e.g. 43 for the paper's CIFAR-10 setting (N = 18, K = 2, 3 steps)."""
    N = 18
    problem, x_T = gaussian("vp")
    log = Logged(problem.score.model)
    problem.score.model = log
    sampler = make_sampler("restart", n_steps=N, K=K, restart_steps=restart_steps, t_min=t_min, t_max=t_max)
    problem.counter.reset()
    sol = sampler.sample(problem, x_T, SeededNoise(range(6)))

    sigmas = [float(s) for s in ve_sigma(problem.sde, sampler.controller.grid(problem))]
    j = min(range(N), key=lambda i: abs(sigmas[i] - t_min))
    expected = []
    for i in range(N - 1):
        expected += [sigmas[i], sigmas[i + 1]]
        if i + 1 == j:
            inner = karras(sigmas[j], t_max, restart_steps)
            for _ in range(K):
                for a, b in zip(inner[:-1], inner[1:]):
                    expected += [a, b]
    expected.append(sigmas[-1])
    seen = [float(s) for s in ve_sigma(problem.sde, torch.tensor(log.times, dtype=torch.float64))]
    assert len(seen) == len(expected) == sol.stats.nfe == problem.counter.nfe == sampler.expected_nfe
    assert sol.stats.nfe == 2 * (N - 1) + 1 + 2 * K * (restart_steps - 1)
    assert max(abs(a - b) / b for a, b in zip(seen, expected)) < 1e-10
    if (K, restart_steps, t_min, t_max) == (2, 3, 0.14, 0.30):
        assert sol.stats.nfe == 43


def test_without_interval_it_is_edm_heun_exactly():
    problem, noise, x_T, _ = mixture_setup(VPSDE())
    a = make_sampler("restart", n_steps=12, t_min=None, t_max=None).sample(problem, x_T, noise)
    b = make_sampler("edm_heun", n_steps=12).sample(problem, x_T, noise)
    assert torch.equal(a.x, b.x) and a.stats.nfe == b.stats.nfe == 23
    assert make_sampler("restart", t_min=None, t_max=None).order == 2.0


# ---- its formulas against the exact restart process ------------------------------------------------
def exact_restart(sde, sampler, problem, x_T, normals):
    """The restart process with the exact probability-flow map of N(μ, s₀² I) data: in x_ve,
    x(σ_b) = μ + (x(σ_a) − μ)·√(s₀² + σ_b²)/√(s₀² + σ_a²); the re-noising x + √(t_max² − σ_j²)·ε with the
    sampler's own draws ε; ends at the last grid point (no final denoise)."""
    grid = sampler.controller.grid(problem)
    sigmas = ve_sigma(sde, grid)
    j = int(torch.argmin((sigmas - sampler.method.t_min).abs()))

    def flow(x, a, b):
        return MU + (x - MU) * math.sqrt(S0**2 + b**2) / math.sqrt(S0**2 + a**2)

    alpha = sde.marginal(grid)[0]
    x = flow(x_T / alpha[0], float(sigmas[0]), float(sigmas[j]))
    t_max = sampler.method.t_max
    for eps in normals:
        x = x + math.sqrt(t_max**2 - float(sigmas[j]) ** 2) * eps
        x = flow(x, t_max, float(sigmas[j]))
    return flow(x, float(sigmas[j]), float(sigmas[-1])) * alpha[-1]


@pytest.mark.parametrize("kind", SDES)
def test_converges_to_the_exact_restart_process_with_order_2(kind):
    """With the same noise draws, the sample converges to the exact restart process as the main grid and
    the restart's grid are refined together (n main points, (n − 1)/4 + 1 restart points): the fitted order
    is that of its deterministic part, EDM Heun's 2 (declared ``ode_order``; ± 0.4)."""
    problem, x_T = gaussian(kind)
    ns, errs = [17, 33, 65, 129], []
    for n in ns:
        sampler = make_sampler("restart", n_steps=n, K=2, restart_steps=(n - 1) // 4 + 1, t_min=0.3, t_max=1.0,
                               denoise="none")
        noise = Recorded(range(6))
        sol = sampler.sample(problem, x_T, noise)
        assert len(noise.normals) == 2
        errs.append(float((sol.x - exact_restart(problem.sde, sampler, problem, x_T, noise.normals)).abs().max()))
    fit = fitted_order(ns, errs)
    print(f"restart {kind}: deterministic part's order fitted {fit:.2f} (declared {sampler.method.ode_order}), "
          f"errors {errs}")
    assert abs(fit - sampler.method.ode_order) < 0.4, (fit, errs)
    assert errs[-1] < 1e-3


def test_renoising_noise_is_the_interval_variance():
    """S_noise scales the re-noising: with S_noise = 0 the restart re-solves from the same point, and the
    sample differs from the one with noise by exactly what the exact process predicts."""
    problem, x_T = gaussian("ve")
    runs = {}
    for s_noise in (0.0, 1.0):
        sampler = make_sampler("restart", n_steps=129, K=1, restart_steps=33, t_min=0.3, t_max=1.0, S_noise=s_noise,
                               denoise="none")
        noise = Recorded(range(6))
        x = sampler.sample(problem, x_T, noise).x
        exact = exact_restart(problem.sde, sampler, problem, x_T, [z * s_noise for z in noise.normals])
        runs[s_noise] = (x, exact)
        assert float((x - exact).abs().max()) < 1e-3  # the discretisation error at 129 + 33 points (~2e-4)
    assert float((runs[0.0][0] - runs[1.0][0]).abs().max()) > 0.05


# ---- batch invariance and refusals --------------------------------------------------------------------
def test_batch_invariant_with_churn():
    problem, x_T = gaussian("vp", n=4)
    opts = dict(n_steps=10, restart_gamma=0.05, S_tmin=0.01, S_tmax=1.0, t_min=0.2, t_max=0.8)
    whole = make_sampler("restart", **opts).sample(problem, x_T, SeededNoise(range(4))).x
    part = make_sampler("restart", **opts).sample(problem, x_T[2:], SeededNoise(range(2, 4))).x
    assert torch.equal(whole[2:], part)


@pytest.mark.parametrize("opts, needle", [
    (dict(t_min=0.3, t_max=0.3), "need t_min < t_max"),
    (dict(t_min=0.5, t_max=0.3), "need t_min < t_max"),
    (dict(K=0), "K (restarts) must be an integer >= 1"),
    (dict(restart_steps=1), "restart_steps must be an integer >= 2"),
    (dict(t_min=None), "give both t_min and t_max"),
    (dict(S_noise=-1.0), "S_noise must be a number >= 0"),
])
def test_bad_options(opts, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        make_sampler("restart", **opts)


def test_interval_outside_the_path_is_refused():
    sampler = make_sampler("restart", t_min=2.0, t_max=8.0)
    why = refusal(sampler, VESDE(sigma_max=5.0))
    assert why is not None and "must lie inside (σ_min, σ_max) = (0.01, 5)" in why
    assert refusal(sampler, VPSDE()) is None
    assert "(σ_min, σ_max)" in refusal(make_sampler("restart", t_min=0.001, t_max=0.3), VPSDE())


def test_t_min_nearest_the_first_grid_point_is_refused():
    problem, x_T = gaussian("ve")
    sampler = make_sampler("restart", n_steps=3, t_min=4.0, t_max=4.5)  # σ grid 5, ~0.5, 0.01
    with pytest.raises(ValueError, match="would never restart"):
        sampler.sample(problem, x_T, SeededNoise(range(6)))


def test_grid_point_nearest_t_min_above_t_max_is_refused():
    """With few steps the grid point nearest t_min can lie above t_max: the re-noising from it up to t_max
    would take the square root of a negative variance. Refused, where a NaN would follow."""
    problem, x_T = gaussian("ve")
    sampler = make_sampler("restart", n_steps=3, t_min=0.3, t_max=0.35)  # σ grid 5, 0.436, 0.01
    with pytest.raises(ValueError, match="not below t_max=0.35"):
        sampler.sample(problem, x_T, SeededNoise(range(6)))
