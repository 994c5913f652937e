"""Every registered sampler honours the one protocol (diffusers' SchedulerCommonTest, minus special cases)."""

from __future__ import annotations

import pytest
import torch

from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE
from solvers import SAMPLERS, Problem, SeededNoise, Status, declared, make_sampler, sampler_options

# Cheap options per sampler for the protocol checks; samplers not listed get n_steps=6 if they take it.
CHEAP = {
    "annealed_langevin": {"n_steps": 4, "steps_per_level": 2},
    "pc": {"n_steps": 25, "corrector_norm": "per_sample"},
    # score_sde's VP tables need n_steps > β_max = 20 (β_i < 1).
    "reverse_diffusion": {"n_steps": 25},
    "ancestral_sampling": {"n_steps": 25},
    "scipy_ode": {"rtol": 1e-3, "atol": 1e-3},
    "torchdiffeq_ode": {"rtol": 1e-3, "atol": 1e-3},
    "adaptive_improved_euler": {"rtol": 0.05},
    "adaptive_em": {"rtol": 0.05},
}


def options(name):
    opts = dict(CHEAP.get(name, {}))
    if name not in CHEAP and "n_steps" in sampler_options(name):
        opts["n_steps"] = 6
    return opts


def problem_for(name):
    sde = VESDE(sigma_max=5.0) if name == "annealed_langevin" else VPSDE()
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture(torch.randn(2, 1, 3, 3, generator=g), torch.tensor([0.2, 0.4]), sde)
    return Problem(gm)


class CallLog:
    """Counts the calls to a score model from outside the Problem's own counting wrapper."""

    def __init__(self, model) -> None:
        self.model, self.sde, self.shape, self.data_range = model, model.sde, model.shape, model.data_range
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


def run(name, seeds, dtype=torch.float32, **extra):
    sampler = make_sampler(name, **{**options(name), **extra})
    log = CallLog(problem_for(name).counter.model)
    problem = Problem(log)
    noise = SeededNoise(seeds)
    x = problem.prior_sample(len(noise), noise, dtype=dtype)
    log.calls = 0
    sol = sampler.sample(problem, x, noise)
    problem.calls = log.calls  # the independent count, for the checks below
    return sampler, problem, x, sol


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_shape_dtype_status_and_counted_nfe(name, dtype):
    sampler, problem, x, sol = run(name, range(5), dtype=dtype)
    assert sol.x.shape == x.shape and sol.x.dtype == dtype
    assert sol.status == Status.OK and torch.isfinite(sol.x).all()
    # Reported NFE is the number of calls the model saw (counted outside the Problem's wrapper); where
    # the sampler declares its NFE from its options, the declaration agrees with that count.
    assert sol.stats.nfe == problem.calls > 0
    if declared(sampler)["expected_nfe"] is not None:  # the NFE its options fix
        assert sampler.expected_nfe == problem.calls


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_seed_same_output_and_batch_invariance(name):
    sampler, _, _, a = run(name, range(6))
    _, _, _, b = run(name, range(6))
    assert torch.equal(a.x, b.x)
    if sampler.batch_invariant:  # declared dependence: tests/test_batch_invariance.py
        _, _, _, c = run(name, [2, 3])
        torch.testing.assert_close(c.x, a.x[2:4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_bad_options_rejected(name):
    with pytest.raises(ValueError, match="unknown option.*expected one of"):
        make_sampler(name, not_an_option=1)
    if "n_steps" in sampler_options(name):
        for bad in (0, -3, 2.5, "10"):
            with pytest.raises(ValueError, match="n_steps"):
                make_sampler(name, n_steps=bad)
    for option in sampler_options(name):
        if option in ("schedule", "convention", "denoise", "predictor", "corrector", "method", "norm"):
            with pytest.raises(ValueError, match="expected one of"):
                make_sampler(name, **{option: "no-such-choice"})


def test_unknown_sampler_and_incompatible_sde():
    with pytest.raises(ValueError, match="unknown sampler 'eulr'; expected one of: .*euler_maruyama"):
        make_sampler("eulr")
    from models.sde import SubVPSDE

    gm = GaussianMixture(torch.zeros(1, 4), 0.5, SubVPSDE())
    problem = Problem(gm)
    with pytest.raises(ValueError, match="AncestralSampling cannot run on the 'subvp' path.*ancestral step"):
        make_sampler("ancestral_sampling", n_steps=5).sample(problem, torch.zeros(2, 4), SeededNoise([0, 1]))
    assert problem.counter.nfe == 0  # refused before any score call
    vp = Problem(GaussianMixture(torch.zeros(1, 4), 0.5, VPSDE()))
    with pytest.raises(ValueError, match="discrete table is invalid for n_steps=10"):
        make_sampler("reverse_diffusion", n_steps=10).sample(vp, torch.zeros(2, 4), SeededNoise([0, 1]))
    with pytest.raises(ValueError, match="corrector's α_i"):
        make_sampler("pc", predictor="euler_maruyama", n_steps=11).sample(vp, torch.zeros(2, 4), SeededNoise([0, 1]))
    sol = make_sampler("reverse_diffusion", n_steps=10, discretization="transition").sample(
        vp, torch.zeros(2, 4), SeededNoise([0, 1]))
    assert torch.isfinite(sol.x).all()
    with pytest.raises(ValueError, match="AnnealedLangevin cannot run on the 'subvp' path.*a VE path"):
        make_sampler("annealed_langevin", n_steps=5).sample(problem, torch.zeros(2, 4), SeededNoise([0, 1]))


def test_nonfinite_becomes_status_not_exception():
    class NaNAfter:
        def __init__(self, model):
            self.model, self.sde, self.shape, self.data_range = model, model.sde, model.shape, model.data_range

        def __call__(self, x, t):
            out = self.model(x, t)
            return out if float(t[0]) > 0.5 else out * float("nan")

    problem = Problem(NaNAfter(problem_for("euler_maruyama").score.model))
    noise = SeededNoise(range(3))
    sol = make_sampler("euler_maruyama", n_steps=10).sample(problem, problem.prior_sample(3, noise), noise)
    assert sol.status == Status.NONFINITE and "3 of 3 samples" in sol.message


def test_score_sde_convention_nfe():
    """score_sde's loop: N predictor(+corrector) steps and no extra denoise call."""
    for name, opts, per_step in [("euler_maruyama", {}, 1), ("pc", {"corrector_steps": 2}, 3),
                                 ("pc", {"predictor": "none", "corrector": "ald"}, 1)]:
        sampler, problem, _, sol = run(name, range(3), n_steps=27, convention="score_sde", denoise="x_mean", **opts)
        assert sol.stats.nfe == 27 * per_step == sampler.expected_nfe == problem.calls
