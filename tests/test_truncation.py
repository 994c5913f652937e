"""Truncated diffusion time (Franzese et al. 2023): priors at T, step rule, bpd at T < 1, the ELBO."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.metrics.exact import SlicedW2, make_exact_fd
from models.elbo import elbo, elbo_curve, lambda_to_t, log_snr_inverse
from models.fitted_priors import (
    ExactMarginalPrior,
    FlowPrior,
    MomentPrior,
    OraclePrior,
    diffuse,
    load_prior,
    naive_prior,
    save_prior,
    steps_for_T,
)
from models.gaussian import GaussianMixture
from models.priors import GaussianPrior
from models.sde import VESDE, VPSDE, SubVPSDE
from solvers import ProbabilityFlowLikelihood, Problem, SeededNoise, make_sampler


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mixture(sde, d_repeat: int = 1) -> GaussianMixture:
    """Four unequal components at (±1.5, ±1.5), std 0.3 (2-D, or 2·d_repeat-D)."""
    means = torch.tensor([[1.5, 1.5], [-1.5, 1.5], [1.5, -1.5], [-1.5, -1.5]]).reshape(4, 1, 1, 2)
    return GaussianMixture(means.repeat(1, 1, d_repeat, 1), torch.full((4,), 0.3), sde,
                           weights=torch.tensor([0.4, 0.3, 0.2, 0.1]))


def diffused(m: GaussianMixture, n: int = 4000, seed: int = 1) -> torch.Tensor:
    x0 = m.sample(n, 0.0, generator=torch.Generator().manual_seed(seed))
    return diffuse(x0, m.sde, 2, torch.Generator().manual_seed(seed + 1))


# ---- step rule ------------------------------------------------------------------------------
def test_steps_for_T_rules():
    assert [steps_for_T(100, T) for T in (1.0, 0.8, 0.6, 0.4, 0.2)] == [100, 80, 60, 40, 20]
    assert [steps_for_T(100, T, "fixed_steps") for T in (1.0, 0.2)] == [100, 100]
    assert steps_for_T(5, 0.1) == 2  # fixed-grid samplers need >= 2 points
    for bad in [dict(rule="fixed_nfe"), dict(T=0.0), dict(T=1.5), dict(n=0)]:
        with pytest.raises(ValueError):
            steps_for_T(bad.get("n", 10), bad.get("T", 0.5), bad.get("rule", "fixed_dt"))


# ---- priors: protocol, fits, files ---------------------------------------------------------------
def test_naive_prior_variants():
    ve = VESDE(sigma_max=5.0, T=0.4)
    s_T, s_0 = 0.01 * 500**0.4, 0.01
    assert naive_prior(ve).std == pytest.approx(s_T)
    assert naive_prior(ve, "paper").std == pytest.approx(math.sqrt(s_T**2 - s_0**2))
    assert naive_prior(VPSDE(T=0.4), "paper").std == 1.0
    with pytest.raises(ValueError, match="variant"):
        naive_prior(ve, "other")


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_moment_prior_matches_moments_and_density(covariance):
    m = mixture(VPSDE(T=0.4), d_repeat=2)
    xT = diffused(m)
    p = MomentPrior.fit(xT, covariance=covariance, jitter=0.0)
    xf = xT.reshape(xT.shape[0], -1)
    cov = torch.cov(xf.T, correction=0)
    cov = cov if covariance == "full" else torch.diag(cov.diagonal())
    ref = torch.distributions.MultivariateNormal(xf.mean(0), cov)
    assert torch.allclose(p.log_prob(xT[:50]), ref.log_prob(xf[:50]), atol=1e-9)
    s = p.sample((5000, 1, 2, 2), SeededNoise("0-4999"), dtype=torch.float64)
    assert torch.allclose(s.reshape(5000, -1).mean(0), xf.mean(0), atol=0.05)


def test_priors_sample_per_sample_streams_and_shapes():
    sde = VPSDE(T=0.4)
    m = mixture(sde)
    x0 = m.sample(300, 0.0, generator=torch.Generator().manual_seed(0))
    priors = [MomentPrior.fit(diffused(m)), OraclePrior(x0, sde), ExactMarginalPrior(m)]
    for p in priors:
        a = p.sample((6, 1, 1, 2), SeededNoise("0-5"))
        b = p.sample((3, 1, 1, 2), SeededNoise("3-5"))
        assert a.dtype == torch.float32 and a.shape == (6, 1, 1, 2)
        assert torch.allclose(a[3:], b), type(p).__name__  # a sample depends on its seed only
        assert p.log_prob(a).shape == (6,) and p.log_prob(a).dtype == torch.float64
        with pytest.raises(ValueError, match="shape"):
            p.sample((2, 1, 2, 1), SeededNoise("0-1"))


def test_oracle_log_prob_is_its_sampling_density():
    """The oracle's KDE equals the diffused empirical distribution: a mixture of near-point masses."""
    sde = VESDE(sigma_max=5.0, T=0.3)
    x0 = mixture(sde).sample(50, 0.0, generator=torch.Generator().manual_seed(0))
    oracle = OraclePrior(x0, sde, chunk=16)
    points = GaussianMixture(x0, torch.full((50,), 1e-9), sde)
    x = oracle.sample((200, 1, 1, 2), SeededNoise("0-199"), dtype=torch.float64)
    assert torch.allclose(oracle.log_prob(x), points.log_prob(x, 0.3), atol=1e-8)


def test_exact_marginal_prior_samples_p_T():
    m = mixture(VPSDE(T=0.4))
    x = ExactMarginalPrior(m).sample((20000, 1, 1, 2), SeededNoise("0-19999"), dtype=torch.float64)
    assert torch.allclose(x.reshape(20000, -1).mean(0), m.mean(0.4), atol=0.03)
    assert torch.allclose(torch.cov(x.reshape(20000, -1).T), m.covariance(0.4), atol=0.05)


def test_prior_files_round_trip(tmp_path):
    sde = VPSDE(T=0.4)
    m = mixture(sde)
    xT = diffused(m, 500)
    flow = FlowPrior.fit(xT, steps=2, config={"hidden": (16,), "transforms": 1}, T=0.4)
    priors = [naive_prior(VESDE(T=0.4), "paper"), MomentPrior.fit(xT, "diag", T=0.4), OraclePrior(xT[:20], sde),
              flow]
    x = xT[:10].float()
    for p in priors:
        q = load_prior(save_prior(p, tmp_path / f"{type(p).__name__}.pt"))
        assert type(q) is type(p)
        assert torch.equal(q.log_prob(x), p.log_prob(x))
        assert torch.equal(q.sample((3, 1, 1, 2), SeededNoise("0-2")), p.sample((3, 1, 1, 2), SeededNoise("0-2")))
    assert load_prior(tmp_path / "FlowPrior.pt").T == 0.4
    with pytest.raises(ValueError, match="cannot save"):
        save_prior(ExactMarginalPrior(m), tmp_path / "x.pt")
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a scorebench-prior"):
        load_prior(tmp_path / "bad.pt")


# ---- quality of final samples on an exact-score mixture ------------------------------------------
def _final_distance(m, prior, n: int = 2000) -> tuple[float, float]:
    problem = Problem(m, prior)
    noise = SeededNoise(f"0-{n - 1}")
    x = problem.prior_sample(n, noise, dtype=torch.float64)
    x = make_sampler("euler_maruyama", n_steps=steps_for_T(200, m.sde.T)).sample(problem, x, noise).x
    sw2, fd = SlicedW2(m), make_exact_fd(m)
    sw2.update(x)
    fd.update(x)
    return sw2.compute()[0], fd.compute()[0]


def test_fitted_priors_beat_naive_at_T04():
    """At T = 0.4 (VP keeps 44% of the signal) the naive N(0, I) start leaves the final samples far
    off; moment-matched and flow priors fitted to diffused data bring them close to the exact ones."""
    m = mixture(VPSDE(T=0.4))
    xT = diffused(m)
    naive = _final_distance(m, naive_prior(m.sde))
    moment = _final_distance(m, MomentPrior.fit(xT))
    flow = _final_distance(m, FlowPrior.fit(xT, steps=150, lr=5e-3, config={"hidden": (32, 32), "transforms": 2}))
    exact = _final_distance(m, ExactMarginalPrior(m))
    for fitted in (moment, flow, exact):
        assert fitted[0] < 0.5 * naive[0]  # sliced W2
        assert fitted[1] < 0.2 * naive[1]  # Fréchet distance to the exact moments


@pytest.mark.slow
@pytest.mark.parametrize("T", [0.6, 0.4, 0.2])
def test_fitted_priors_beat_naive_slow(T):
    m = mixture(VPSDE(T=T))
    xT = diffused(m)
    naive = _final_distance(m, naive_prior(m.sde), 8000)
    for prior in (MomentPrior.fit(xT), FlowPrior.fit(xT, steps=1500, config={"hidden": (64, 64), "transforms": 3})):
        fitted = _final_distance(m, prior, 8000)
        assert fitted[1] < naive[1]


# ---- bpd at T < 1 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", [VPSDE(T=0.4), VESDE(sigma_max=5.0, T=0.4), SubVPSDE(T=0.6)], ids=lambda s: s.kind)
def test_likelihood_at_T_with_exact_marginal_is_exact(sde):
    m = mixture(sde, d_repeat=2)
    x = m.sample(16, 0.0, generator=torch.Generator().manual_seed(0))
    lik = ProbabilityFlowLikelihood(divergence="exact", rtol=1e-6, atol=1e-6)
    r = lik(Problem(m, ExactMarginalPrior(m)), x)
    exact = m.log_prob(x, lik.eps)
    assert torch.allclose(r.logp, exact, atol=1e-3), (r.logp - exact).abs().max()
    naive = lik(Problem(m, naive_prior(sde)), x)
    assert (naive.logp - exact).abs().max() > 0.1  # the naive prior at T < 1 is a different model


# ---- ELBO --------------------------------------------------------------------------------------------
def _expected_log_p_eps(m, x0, eps, n=2000, seed=7):
    """E_{x_eps ~ q(·|x0)} log p_eps(x_eps) by Monte Carlo (exact density), [B]."""
    alpha, sigma = m.sde.marginal(torch.tensor([eps], dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    return torch.stack([m.log_prob(alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64),
                                   eps) for _ in range(n)]).mean(0)


def test_lambda_inverse_round_trip():
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        t = torch.linspace(sde.eps, 1.0, 17, dtype=torch.float64)
        assert torch.allclose(lambda_to_t(sde, log_snr_inverse(sde, t), sde.eps, 1.0), t, atol=1e-12)


@pytest.mark.parametrize("sde", [VPSDE(T=0.4), VESDE(sigma_max=5.0, T=0.4), VPSDE()], ids=str)
def test_elbo_is_tight_with_exact_score_and_exact_prior(sde):
    """Exact score + exact p_T: ELBO(x0) = E log p_eps(x_eps) for every x0 (Markov: nothing lost)."""
    m = mixture(sde, d_repeat=2)
    x0 = m.sample(64, 0.0, generator=torch.Generator().manual_seed(0))
    r = elbo(m, x0, ExactMarginalPrior(m), n_time=256, n_prior=16, generator=torch.Generator().manual_seed(1))
    target = _expected_log_p_eps(m, x0, sde.eps)
    z = (r.elbo - target) / r.stderr
    assert z.abs().max() < 4.5
    assert abs(float((r.elbo - target).mean())) < 4 * float(r.stderr.pow(2).mean().sqrt()) / 8


def test_elbo_is_a_bound_with_naive_prior_or_wrong_score():
    sde = VPSDE(T=0.4)
    m = mixture(sde, d_repeat=2)
    x0 = m.sample(64, 0.0, generator=torch.Generator().manual_seed(0))
    target = float(_expected_log_p_eps(m, x0, sde.eps).mean())
    gen = torch.Generator
    naive = elbo(m, x0, naive_prior(sde), n_time=64, n_prior=8, generator=gen().manual_seed(1))

    class Scaled:
        def __init__(self, m):
            self.sde = m.sde

        def __call__(self, x, t):
            return 0.8 * m(x, t)

    wrong = elbo(Scaled(m), x0, ExactMarginalPrior(m), n_time=64, n_prior=8, generator=gen().manual_seed(1))
    for r in (naive, wrong):
        assert float(r.elbo.mean()) < target - 0.1
    # The prior term alone explains the naive gap: E log N(0, I) < E log p_T at x_T ~ q(·|x0).
    exact = elbo(m, x0, ExactMarginalPrior(m), n_time=64, n_prior=8, generator=gen().manual_seed(1))
    assert torch.allclose(naive.dsm_term, exact.dsm_term)
    assert float(naive.prior_term.mean()) < float(exact.prior_term.mean())


def test_elbo_curve_naive_prior_prefers_long_diffusion():
    base = VPSDE()
    m = mixture(base)
    x0 = m.sample(32, 0.0, generator=torch.Generator().manual_seed(0))
    Ts = (1.0, 0.6, 0.3)
    curve = elbo_curve(m, x0, {T: naive_prior(dataclasses.replace(base, T=T)) for T in Ts}, n_time=32, n_prior=4)
    assert curve[1.0]["elbo"] > curve[0.6]["elbo"] > curve[0.3]["elbo"]
    assert set(curve[1.0]) == {"elbo", "stderr", "prior_term", "dsm_term", "entropy_term"}


def test_elbo_rejects_bad_options():
    m = mixture(VPSDE())
    x0 = m.sample(4, 0.0)
    with pytest.raises(ValueError, match="eps"):
        elbo(m, x0, GaussianPrior(m.sde), eps=2.0)
    with pytest.raises(ValueError, match="n_time"):
        elbo(m, x0, GaussianPrior(m.sde), n_time=0)
