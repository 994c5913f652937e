"""Replays the official score_sde ODE sampler and likelihood (shared/fixtures/score_sde/samplers/vp_ode*.pt,
vp_likelihood_*.pt): fixtures README §3.5, §3.6, §3.9."""

from __future__ import annotations

import pytest
import torch

from solvers import ProbabilityFlowLikelihood, Problem, RecordedNoise, make_sampler
from tests.conftest import require_fixture
from tests.helpers import fixture_model

pytestmark = pytest.mark.fixtures


@pytest.mark.parametrize("name, denoise", [("vp_ode", "none"), ("vp_ode_denoise", "reverse_diffusion")])
def test_replay_ode_fixture(name, denoise):
    fx = torch.load(require_fixture(f"score_sde/samplers/{name}.pt"), weights_only=True)
    settings = fx["settings"]
    assert settings["denoise"] == (denoise != "none")
    sampler = make_sampler("scipy_ode", method=settings["method"], rtol=settings["rtol"], atol=settings["atol"],
                           denoise=denoise, num_scales=settings["sde"]["N"])
    problem = Problem(fixture_model(fx))
    # The official denoise draws one normal it does not use; a recorded source makes that harmless.
    sol = sampler.sample(problem, fx["prior"].clone(), RecordedNoise(fx["noise"]))

    err = (sol.x - fx["x_out"]).abs().max().item()
    # Measured 6.2e-6 (vp_ode), 9.9e-6 (vp_ode_denoise), float32 outputs: 5e-5 is 5× the larger.
    assert err <= 5e-5, f"max abs diff {err:.2e}"
    # The official run's counts are deterministic: the same RK45 steps, so the same counts exactly.
    # Counted NFE includes the denoise call the official code does not count (98 + 1 = 99 calls).
    assert sol.stats.extra["nfev"] == fx["nfev"]
    assert sol.stats.nfe == fx["actual_calls"] == fx["nfev"] + (denoise != "none")
    assert sol.stats.extra["batch_size"] == settings["batch"]
    assert sol.stats.extra["scipy_status"] == fx["solver_status"] == 0
    assert sol.stats.n_accepted + sol.stats.n_rejected == sol.stats.n_steps
    # Accepted steps against the official run's accepted times (10 steps), attempts counted at SciPy's
    # error-norm evaluations: RK45 makes 6 evaluations per attempted step + 2 at start-up (98 = 6·16 + 2).
    assert sol.stats.n_accepted == len(fx["solver_t_float64"]) - 1
    assert sol.stats.extra["nfev"] == 6 * sol.stats.n_steps + 2


@pytest.mark.parametrize("name, data_range, offset", [("vp_likelihood_centered", (-1.0, 1.0), 7.0),
                                                      ("vp_likelihood_uncentered", (0.0, 1.0), 8.0)])
def test_replay_likelihood_fixture(name, data_range, offset):
    fx = torch.load(require_fixture(f"score_sde/samplers/{name}.pt"), weights_only=True)
    settings = fx["settings"]
    assert fx["offset_bits_per_dim"] == offset
    lik = ProbabilityFlowLikelihood(rtol=settings["rtol"], atol=settings["atol"], eps=settings["eps"])
    problem = Problem(fixture_model(fx))
    res = lik(problem, fx["data"], epsilon=fx["rademacher"], levels=256, data_range=data_range)

    assert res.offset == offset
    err = (res.bpd - fx["bpd"].double()).abs().max().item()
    # Measured 1.3e-6 (centered), 2.2e-6 (uncentered) on 2026-12-01 (4.0e-6 / 6.3e-6 before the
    # likelihood rework): 1e-5 is 4.5× the larger.
    assert err <= 1e-5, f"bpd max abs diff {err:.2e}"
    # z (float32 in the fixture): measured max abs diff 1.7e-6; 1e-5 is 6× that.
    torch.testing.assert_close(res.z, fx["z"], rtol=0, atol=1e-5)
    assert res.nfev == fx["nfev"]  # deterministic: the same RK45 steps (92 evaluations)
    # One forward pass and one backward pass per evaluation (score_sde: two forwards, 184 calls).
    assert res.nfe == res.nfev == res.n_vjp
    assert fx["actual_calls"] == 2 * fx["nfev"]
