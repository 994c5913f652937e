"""SA-Solver (solvers/sa_solver.py): side by side with diffusers' SASolverScheduler on an exact two-component
Gaussian mixture in float64 (one x_T, the same σ grid, the same noise draws), its differences from the
official code's choices, and its fitted orders with τ = 0 (the probability-flow ODE)."""

from __future__ import annotations

import pytest
import torch

from models.gaussian import GaussianMixture
from solvers import Problem, RecordedNoise, make_sampler
from solvers.denoiser import noise_prediction, time_of_sigma
from tests.test_fast_samplers import _errors, fitted_order, mixture_setup

diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")

import diffusers.schedulers.scheduling_sasolver as sasolver_module  # noqa: E402

from models.diffusers_adapter import model_spec  # noqa: E402
from models.discrete import train_sigmas  # noqa: E402

CONFIG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
              prediction_type="epsilon")
PATH = model_spec(CONFIG)["path"]  # the tabulated ᾱ of diffusers' table, as the harness loads it
MEANS = torch.tensor([[-0.5, 0.3], [0.4, -0.2]], dtype=torch.float64).reshape(2, 1, 1, 2)
MIXTURE = GaussianMixture(MEANS, torch.tensor([0.2, 0.3]), PATH, weights=torch.tensor([0.4, 0.6]))
N = 8
_g = torch.Generator().manual_seed(0)
X_T = torch.randn(3, 1, 1, 2, generator=_g, dtype=torch.float64)
DRAWS = torch.randn(N, 3, 1, 1, 2, generator=_g, dtype=torch.float64)
SPACINGS = {"trailing": ("trailing", 0), "linspace_n1": ("linspace", 0), "leading_n1": ("leading", 1)}


def diffusers_sa(monkeypatch, p, c, tau, lo, hi, prediction, lower, spacing):
    """diffusers' SASolverScheduler loop on the exact mixture: its network is the mixture's ε̂ at the path time of
    each timestep's σ level; its σ levels the float64 ones (it stores them in float32); its τ the harness's
    interval in σ (``tau_func`` of the timestep); its noise (``randn_tensor``) the harness's draws, in order."""
    timestep_spacing, offset = SPACINGS[spacing]
    sched = diffusers.SASolverScheduler(**CONFIG, predictor_order=p, corrector_order=c, lower_order_final=lower,
                                        algorithm_type=f"{prediction}_prediction", timestep_spacing=timestep_spacing,
                                        steps_offset=offset)
    sched.set_timesteps(N)
    levels = train_sigmas(sched.alphas_cumprod)
    sched.sigmas = torch.cat([levels[sched.timesteps], levels[:1]])
    sched.tau_func = lambda k: tau if lo <= float(levels[int(k)]) <= hi else 0
    draws = iter(DRAWS)
    monkeypatch.setattr(sasolver_module, "randn_tensor", lambda *args, **kwargs: next(draws))
    problem = Problem(MIXTURE)  # its counter counts diffusers' model calls
    x = X_T.clone()
    for k in sched.timesteps:
        t = time_of_sigma(PATH, levels[k].reshape(1).expand(x.shape[0]))
        x = sched.step(noise_prediction(problem, x, t), k, x).prev_sample
    return x, problem.counter.nfe


def harness_sa(p, c, tau, lo, hi, prediction, lower, spacing, **extra):
    sampler = make_sampler("sa_solver", n_steps=N, schedule=spacing, steps_offset=SPACINGS[spacing][1],
                           final_sigma="sigma_min", denoise="none", predictor_order=p, corrector_order=c, tau=tau,
                           tau_sigma_min=lo, tau_sigma_max=hi, prediction=prediction, lower_order_final=lower, **extra)
    problem = Problem(MIXTURE)
    sol = sampler.sample(problem, X_T, RecordedNoise(list(DRAWS)))
    assert sol.stats.nfe == problem.counter.nfe == sampler.expected_nfe
    return sol


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


CASES = [(p, c, 1.0, 0.0, 1e9, "data", True, "trailing") for p in (1, 2, 3, 4) for c in (1, 2, 3, 4)] + [
    (2, 2, 0.0, 0.0, 1e9, "data", True, "trailing"),         # τ = 0: the ODE
    (3, 4, 0.7, 1.0, 5.0, "data", True, "trailing"),         # τ on an interval of σ only
    (3, 3, 1.0, 0.0, 1e9, "noise", True, "trailing"),        # noise prediction
    (2, 3, 1.0, 0.0, 1e9, "data", False, "linspace_n1"),
    (3, 2, 1.0, 0.5, 3.0, "noise", False, "leading_n1"),
]


@pytest.mark.parametrize("case", CASES, ids=["p{}-c{}-tau{}-[{},{}]-{}-lof{}-{}".format(*c) for c in CASES])
def test_same_samples_and_nfe_as_diffusers(monkeypatch, case):
    """Within 1e-12 relative (measured ≤ 5.2e-15), the same number of model calls (N on both sides)."""
    ref, calls = diffusers_sa(monkeypatch, *case)
    sol = harness_sa(*case)
    d = rel(sol.x, ref)
    print(f"sa_solver {case}: max rel diff {d:.1e}, NFE {sol.stats.nfe}/{calls}")
    assert sol.stats.nfe == calls == N
    assert d < 1e-12


def test_the_check_can_fail_noise_and_tau_matter(monkeypatch):
    ref, _ = diffusers_sa(monkeypatch, 2, 2, 1.0, 0.0, 1e9, "data", True, "trailing")
    assert rel(harness_sa(2, 2, 0.0, 0.0, 1e9, "data", True, "trailing").x, ref) > 1e-3
    assert rel(harness_sa(2, 2, 1.0, 0.0, 0.5, "data", True, "trailing").x, ref) > 1e-3  # τ on part of the grid


def test_more_steps_variant_differs_from_diffusers_only_by_the_order_2_term(monkeypatch):
    """diffusers always adds the official few-step variant's O(h³) term to two-node data-prediction steps;
    ``variant='more_steps'`` (the official ``sample_more_steps``) does not: the same without two-node steps
    (p = c = 1), different with them."""
    for p, c, differs in [(1, 1, False), (2, 2, True), (3, 3, True)]:
        ref, _ = diffusers_sa(monkeypatch, p, c, 1.0, 0.0, 1e9, "data", True, "trailing")
        d = rel(harness_sa(p, c, 1.0, 0.0, 1e9, "data", True, "trailing", variant="more_steps").x, ref)
        assert (d > 1e-6) if differs else (d < 1e-12), (p, c, d)


def test_tau_outside_its_interval_is_the_ode():
    ode = harness_sa(3, 3, 0.0, 0.0, 1e9, "data", True, "trailing").x
    assert torch.equal(harness_sa(3, 3, 1.0, 1e5, 1e6, "data", True, "trailing").x, ode)


# ---- orders with τ = 0 --------------------------------------------------------------------------------
ORDER_CASES = [
    dict(predictor_order=1, corrector_order=1),
    dict(predictor_order=2, corrector_order=2),  # diffusers' default: last step an uncorrected order-1 predictor
    dict(predictor_order=1, corrector_order=2, lower_order_final=False),
    dict(predictor_order=2, corrector_order=3, lower_order_final=False),
    dict(predictor_order=2, corrector_order=3, lower_order_final=False, prediction="noise"),
]


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("opts", ORDER_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_ode_order_on_the_mixture(opts, kind):
    """τ = 0 on the two-component mixture against SciPy RK45 at rtol = atol = 1e-12, n = 33, 65, 129: the
    declared order (min(c, p + 1); 2 with lower_order_final) ± 0.4."""
    ns = [33, 65, 129]
    sampler, errs = _errors("sa_solver", {**opts, "tau": 0.0}, kind, ns, mixture_setup)
    fit = fitted_order(ns, errs)
    print(f"sa_solver {opts} {kind}: declared {sampler.order}, fitted {fit:.2f}, errors {errs}")
    assert abs(fit - sampler.order) < 0.4, (fit, errs)


def test_options_are_checked():
    for opts, needle in [(dict(predictor_order=5), "predictor_order"), (dict(corrector_order=0), "corrector_order"),
                         (dict(tau=-1.0), "tau must be"), (dict(tau_sigma_min=2.0, tau_sigma_max=1.0), "tau_sigma_min"),
                         (dict(variant="x"), "variant"), (dict(prediction="v"), "prediction")]:
        with pytest.raises(ValueError, match=needle):
            make_sampler("sa_solver", **opts)
    assert make_sampler("sa_solver").order == 1.0 and make_sampler("sa_solver", tau=0.0).order == 2.0
