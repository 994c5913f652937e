"""Gaussian paths (models/paths.py): λ and t(λ), f and g² against finite differences of α and σ, the
variance ODE, the prior at T, validation at construction and at grid load; the exact mixtures on every
path; the parameterisations (score, ε, x₀, v, flow velocity, EDM's D) turned into x̂₀, ε̂ and the score
with one counted call."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.interpolate import PchipInterpolator

from bench.run import main
from models.gaussian import GaussianMixture
from models.parameterisation import PREDICTIONS, PredictionModel, prediction_coefficients
from models.paths import CosinePath, FlowPath, GaussianPath, TabulatedPath, cosine_alphas_cumprod
from models.score import CountingScore
from models.sde import SDES, VESDE, VPSDE, SubVPSDE, make_sde, sde_to_dict
from solvers import Problem, SeededNoise, make_sampler
from solvers.denoiser import data_prediction, denoised, noise_prediction

TABLE = cosine_alphas_cumprod(1000)
PATHS = {"ve": VESDE(sigma_max=5.0), "vp": VPSDE(), "subvp": SubVPSDE(), "cosine": CosinePath(),
         "flow": FlowPath(), "flow_shift3": FlowPath(shift=3.0), "tabulated": TabulatedPath(TABLE, eps=1e-3)}
IDS = list(PATHS)


def interior_times(path, n=9) -> torch.Tensor:
    """Times inside (eps, T), away from the tabulated path's knots (i/N): (k + ½)/N-type points."""
    t = torch.linspace(path.eps, path.T, n + 2, dtype=torch.float64)[1:-1]
    if isinstance(path, TabulatedPath):
        N = len(path.alphas_cumprod)
        t = (torch.floor(t * N) + 0.5) / N
    return t


# ---- path math ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS.values(), ids=IDS)
def test_log_snr_and_its_inverse(path):
    t = torch.linspace(path.eps, path.T, 41, dtype=torch.float64)
    t = t[:-1] if path.alpha_zero_at_T else t  # λ(T) = −inf on flow at T = 1
    lam = path.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()  # strictly decreasing
    assert torch.allclose(path.time_of_log_snr(lam), t, rtol=0, atol=1e-12)
    alpha, sigma = path.marginal(t)
    assert torch.allclose(lam, torch.log(alpha / sigma), rtol=0, atol=1e-12)
    # the generic bisection of the base agrees with each closed form (or Newton for the table)
    assert torch.allclose(GaussianPath.time_of_log_snr(path, lam), t, rtol=0, atol=1e-11)


@pytest.mark.parametrize("path", PATHS.values(), ids=IDS)
def test_drift_and_diffusion_against_finite_differences(path):
    """α̇, σ̇ vs central differences of α, σ; f = α̇/α and g² = dσ²/dt − 2fσ² from those differences;
    for VE, VP, sub-VP their own closed forms (score_sde's) equal the generic formulas."""
    t, h = interior_times(path), 1e-6
    (a1, s1), (a0, s0) = path.marginal(t + h), path.marginal(t - h)
    alpha, sigma = path.marginal(t)
    da_fd, ds_fd = (a1 - a0) / (2 * h), (s1 - s0) / (2 * h)
    dalpha, dsigma = path.marginal_derivative(t)
    scale = 1 + dalpha.abs() + dsigma.abs()
    assert ((dalpha - da_fd).abs() / scale).max() < 1e-6
    assert ((dsigma - ds_fd).abs() / scale).max() < 1e-6
    f_fd = da_fd / alpha
    g2_fd = (s1**2 - s0**2) / (2 * h) - 2 * f_fd * sigma**2
    assert torch.allclose(path.drift_coef(t), f_fd, rtol=1e-6, atol=1e-6)
    assert torch.allclose(path.diffusion(t) ** 2, g2_fd, rtol=1e-5, atol=1e-6)
    assert torch.allclose(path.drift_coef(t), GaussianPath.drift_coef(path, t), rtol=1e-12, atol=1e-12)
    assert torch.allclose(path.diffusion(t), GaussianPath.diffusion(path, t), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS.values(), ids=IDS)
def test_variance_ode_integrates_to_the_marginal(path):
    """dVar/dt = 2 f Var + g² integrated (SciPy, from eps) from the path's f and g² lands on
    α_t² s₀² + σ_t², the variance of N(μ, s₀²) data diffused to t."""
    s0 = 0.5
    t_end = path.T if not path.alpha_zero_at_T else 0.99

    def var(t):
        alpha, sigma = path.marginal(torch.tensor([t], dtype=torch.float64))
        return float(alpha**2 * s0**2 + sigma**2)

    def rhs(t, v):
        tt = torch.tensor([t], dtype=torch.float64)
        return [float(2 * path.drift_coef(tt) * v[0] + path.diffusion(tt) ** 2)]

    sol = solve_ivp(rhs, (path.eps, t_end), [var(path.eps)], rtol=1e-11, atol=1e-13, method="DOP853")
    assert sol.y[0, -1] == pytest.approx(var(t_end), rel=1e-7)


@pytest.mark.parametrize("path", PATHS.values(), ids=IDS)
def test_prior_at_T(path):
    T = torch.tensor([path.T], dtype=torch.float64)
    sigma_T = float(path.marginal(T)[1])
    expected = 1.0 if path.kind in ("vp", "subvp") else sigma_T  # score_sde's N(0, I) for VP and sub-VP
    assert path.prior_std() == pytest.approx(expected, rel=1e-15)
    z = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = torch.distributions.Normal(0.0, torch.tensor(path.prior_std(), dtype=torch.float64)).log_prob(z).sum(1)
    assert torch.allclose(path.prior_logp(z), ref, rtol=1e-12, atol=1e-12)


def test_score_sde_paths_keep_their_numbers_and_specs():
    """VE, VP and sub-VP keep score_sde's closed forms (spot values) and their plain-dict specs."""
    t = torch.tensor([0.5], dtype=torch.float64)
    vp = VPSDE()
    lmc = -0.25 * 0.25 * 19.9 - 0.5 * 0.5 * 0.1
    assert float(vp.marginal(t)[0]) == math.exp(lmc)
    assert float(VESDE().marginal(t)[1]) == 0.01 * (50.0 / 0.01) ** 0.5
    assert sde_to_dict(vp) == {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "T": 1.0, "eps": 1e-3}
    assert sde_to_dict(VESDE()) == {"kind": "ve", "sigma_min": 0.01, "sigma_max": 50.0, "T": 1.0, "eps": 1e-5}
    assert list(SDES) == ["vp", "subvp", "ve", "cosine", "flow", "tabulated"]


def test_cosine_path_formula_and_clipping():
    """Nichol & Dhariwal's ᾱ(t) = cos²((t+s)/(1+s)·π/2)/cos²(s/(1+s)·π/2); T defaults to DPM-Solver's
    0.9946 and the domain ends at its cosine_t_max (β(t) = 999)."""
    path = CosinePath()
    t = np.linspace(0.0, 0.99, 12)
    abar = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    alpha, sigma = path.marginal(torch.from_numpy(t))
    np.testing.assert_allclose(alpha.numpy() ** 2, abar, rtol=1e-13)
    np.testing.assert_allclose(sigma.numpy() ** 2, 1 - abar, rtol=1e-12, atol=1e-15)
    assert path.T == 0.9946
    t_max = path._t_hi()
    beta = 2 * float(-path.drift_coef(torch.tensor([t_max], dtype=torch.float64)))  # β = −d log ᾱ/dt = −2f
    assert beta == pytest.approx(999.0, rel=1e-9)
    with pytest.raises(ValueError, match=r"T must be in \(0, 0.997998\]"):
        CosinePath(T=0.999)


def test_flow_path_and_shift():
    t = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    alpha, sigma = FlowPath().marginal(t)
    assert torch.equal(sigma, t) and torch.equal(alpha, 1 - t)
    alpha3, sigma3 = FlowPath(shift=3.0).marginal(t)
    assert torch.allclose(sigma3, 3 * t / (1 + 2 * t), rtol=1e-15) and torch.allclose(alpha3 + sigma3, torch.ones(5,
                                                                                                    dtype=torch.float64))
    path = FlowPath()
    assert path.alpha_zero_at_T and float(path.log_snr(torch.tensor([1.0], dtype=torch.float64))) == -math.inf
    assert float(path.time_of_log_snr(torch.tensor([-math.inf], dtype=torch.float64))) == 1.0
    assert not FlowPath(T=0.999).alpha_zero_at_T


def test_tabulated_path_interpolation():
    """Exact on the table; value and slope equal SciPy's PCHIP of log ᾱ between knots; C¹ across knots;
    within interpolation error of the continuous cosine schedule the table was made from."""
    path = PATHS["tabulated"]
    N = len(TABLE)
    knots = torch.arange(1, N + 1, dtype=torch.float64) / N
    alpha, _ = path.marginal(knots)
    assert torch.allclose(alpha**2, torch.tensor(TABLE, dtype=torch.float64), rtol=1e-12, atol=0)
    ref = PchipInterpolator(knots.numpy(), np.log(np.array(TABLE)))
    t = torch.rand(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * (1 - 1 / N) + 1 / N
    la, dla = path.log_alphas_cumprod(t)
    np.testing.assert_allclose(la.numpy(), ref(t.numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dla.numpy(), ref.derivative()(t.numpy()), rtol=1e-9, atol=1e-9)
    inner = knots[1:-1]
    left, right = path.log_alphas_cumprod(inner - 1e-12)[1], path.log_alphas_cumprod(inner + 1e-12)[1]
    assert ((left - right).abs() / (1 + right.abs())).max() < 1e-7  # continuous first derivative
    tc = torch.linspace(0.01, 0.95, 50, dtype=torch.float64)
    assert torch.allclose(path.marginal(tc)[0], CosinePath().marginal(tc)[0], rtol=2e-3)


# ---- validation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, params, match", [
    ("flow", {"shift": 0.0}, "shift must be a number > 0"),
    ("flow", {"shift": -2}, "shift must be a number > 0"),
    ("flow", {"T": 1.5}, r"T must be in \(0, 1\]"),
    ("flow", {"eps": 1.0}, "eps must be in"),
    ("cosine", {"T": 1.0}, "T must be in"),
    ("cosine", {"s": 0.0}, "s must be in"),
    ("tabulated", {"alphas_cumprod": [0.9, 0.95, 0.5]}, "must decrease strictly"),
    ("tabulated", {"alphas_cumprod": [1.2, 0.5]}, r"alphas_cumprod\[0\]=1.2 is outside \(0, 1\]"),
    ("tabulated", {"alphas_cumprod": [0.9, 0.0]}, r"alphas_cumprod\[1\]=0.0 is outside \(0, 1\]"),
    ("tabulated", {"alphas_cumprod": [0.9]}, "at least 2"),
    ("tabulated", {"alphas_cumprod": [0.9, 0.5], "eps": 0.1}, r"eps must be in \[t_0=0.5"),
    ("vp", {"T": 0.0}, "T must be"),
])
def test_bad_path_parameters_are_refused(kind, params, match):
    with pytest.raises(ValueError, match=match):
        make_sde(kind, **params)


GRID = """name: paths
model: {{kind: mixture, sde: {sde}, shape: [2], components: 2}}
eval: {{num_samples: 4, batch_size: 4, seeds: "0-3", metrics: [sw2_exact]}}
sweeps:
  - {{solver: {solver}, n_steps: 8{extra}}}
"""


@pytest.mark.parametrize("sde, solver, extra, message", [
    ("{kind: flow, shift: 0}", "pf_heun", "", "model: FlowPath: shift must be a number > 0, got 0"),
    ("{kind: tabulated, alphas_cumprod: [0.9, 0.95]}", "pf_heun", "", "must decrease strictly"),
    ("{kind: cosine, T: 0.9999}", "pf_heun", "", "T must be in (0, 0.997998], got 0.9999"),
    ("{kind: flow}", "pf_heun", ", T: 1.5", "field 'T' must be in (eps=0, 1]"),
    ("{kind: flow}", "edm_heun", "", "sweeps[0]: solver 'edm_heun' cannot run on model 'model': EDMHeun cannot run "
                                     "on the 'flow' path with T=1: it needs α_T > 0"),
    ("{kind: cosine}", "ancestral_sampling", "", "needs score_sde's ancestral step (VE, VP)"),
    ("{kind: flow, T: 0.9}", "pc", "", "needs score_sde's discrete tables"),
    ("{kind: vp}", "annealed_langevin", "", "needs a VE path"),
])
def test_refusals_at_grid_load_exit_2(tmp_path, capsys, sde, solver, extra, message):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID.format(sde=sde, solver=solver, extra=extra))
    assert main(["--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(grid) in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_new_kinds_run_from_a_grid(tmp_path):
    """A flow-matching mixture with shift 3, sampled from T = 1 by the samplers that start at α = 0."""
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID.format(sde="{kind: flow, shift: 3.0}", solver="pf_heun", extra="")
                    + "  - {solver: dpm_solver_pp, schedule: uniform, n_steps: 8}\n")
    assert main(["--grid", str(grid), "--out", str(tmp_path / "out"), "--no-progress", "--no-report"]) == 0
    import json
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "runs").glob("*.json"))]
    assert {r["solver"] for r in records} == {"pf_heun", "dpm_solver_pp"}
    assert all(r["status"] == "ok" and r["sde"]["kind"] == "flow" for r in records)


# ---- exact mixtures on every path --------------------------------------------------------------------
def mixture(path):
    means = torch.tensor([[-0.6, 0.3], [0.5, -0.2], [0.1, 0.8]], dtype=torch.float64)
    stds = torch.tensor([[0.2, 0.3], [0.25, 0.15], [0.3, 0.3]], dtype=torch.float64)
    return GaussianMixture(means, stds, path, weights=torch.tensor([0.2, 0.5, 0.3]))


def posterior_mean(gm, x, t):
    """E[x₀ | x_t = x] computed independently: Σ_k p(k | x) (μ_k + α s_k²/(α² s_k² + σ²)(x − α μ_k))."""
    alpha, sigma = gm.sde.marginal(t)
    a, s2 = alpha[:, None, None], sigma[:, None, None] ** 2
    var0 = gm.var0[None]
    mu = gm.means.reshape(1, -1, gm.dim)
    var = a**2 * var0 + s2
    xf = x.reshape(x.shape[0], 1, -1)
    logn = -0.5 * (((xf - a * mu) ** 2 / var).sum(-1) + var.log().sum(-1)) + gm.weights.log()
    post = torch.softmax(logn, dim=1)[..., None]
    return (post * (mu + a * var0 / var * (xf - a * mu))).sum(1).reshape(x.shape)


@pytest.mark.parametrize("path", PATHS.values(), ids=IDS)
def test_exact_mixture_on_every_path(path):
    """Score = ∇ log p_t (autograd of the closed-form log-density); x̂₀ = the posterior mean; ε̂ = −σ s."""
    gm = mixture(path)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for tv in interior_times(path, 4):
        t = torch.full((6,), float(tv), dtype=torch.float64)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(gm.log_prob(xg, t).sum(), xg)
        assert torch.allclose(gm(x, t), grad, rtol=1e-10, atol=1e-10)
        x0, eps = gm.data_and_noise(x, t)
        assert torch.allclose(x0, posterior_mean(gm, x, t), rtol=1e-9, atol=1e-9)
        assert torch.allclose(eps, -gm.sde.marginal(t)[1][:, None] * gm(x, t), rtol=1e-12, atol=1e-12)
    if path.alpha_zero_at_T:  # flow at t = 1: x̂₀ is the data mean, ε̂ = x (σ = 1), both finite
        t = torch.ones(6, dtype=torch.float64)
        x0, eps = gm.data_and_noise(x, t)
        assert torch.allclose(x0, gm.mean().expand(6, 2)) and torch.allclose(eps, x)
        assert torch.allclose(gm.log_prob(x, 1.0), torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1))


def test_denoised_is_bit_for_bit_the_score_formula():
    """Without ``data_and_noise`` (every score network) x̂₀ and ε̂ are exactly today's (x + σ² s)/α and −σ s; the
    mixture's own ``data_and_noise`` gives the same bits where α > 0, so samplers on VE/VP/sub-VP are unchanged."""
    gm = mixture(VPSDE())

    class ScoreOnly:
        sde, shape, data_range = gm.sde, gm.shape, gm.data_range

        def __call__(self, x, t):
            return gm(x, t)

    x = torch.randn(5, 2, dtype=torch.float32, generator=torch.Generator().manual_seed(3))
    t = torch.linspace(0.01, 1.0, 5, dtype=torch.float64)
    alpha, sigma = gm.sde.marginal(t)
    s = gm(x, t)
    for model in (ScoreOnly(), gm):
        problem = Problem(model)
        assert problem.counter.has_data_and_noise == (model is gm)
        assert torch.equal(data_prediction(problem, x, t), (x + (sigma**2)[:, None].float() * s)
                           / alpha[:, None].float())
        assert torch.equal(noise_prediction(problem, x, t), -sigma[:, None].float() * s)
        assert problem.counter.nfe == 2


# ---- parameterisations ---------------------------------------------------------------------------------
def exact_output(gm, prediction, x, t):
    """What an ideal network of ``prediction`` outputs, from the mixture's exact x̂₀ and ε̂."""
    x0, eps = gm.data_and_noise(x, t)
    a, b = prediction_coefficients(prediction, gm.sde, t)
    if prediction == "edm":
        return x0
    return a[:, None] * x0 + b[:, None] * eps


class FakeNet:
    """A network returning the exact ``prediction`` of a mixture, counting its own calls."""

    def __init__(self, gm, prediction):
        self.gm, self.prediction, self.calls = gm, prediction, 0

    def __call__(self, x_in, label):
        self.calls += 1
        self.last_input = x_in
        if self.prediction == "edm":  # called with x/α and σ_ve: back to (x, t)
            t = self.gm.sde.inverse_ve_sigma(label)
            alpha = self.gm.sde.marginal(t)[0]
            return exact_output(self.gm, "edm", x_in * alpha[:, None], t)
        return exact_output(self.gm, self.prediction, x_in, label)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("path", PATHS.values(), ids=IDS)
def test_parameterisations_give_the_exact_score_and_denoiser(path, prediction):
    gm = mixture(path)
    net = FakeNet(gm, prediction)
    counted = CountingScore(PredictionModel(net, path, prediction, shape=(2,)))
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for tv in interior_times(path, 3):
        t = torch.full((6,), float(tv), dtype=torch.float64)
        x0, eps = counted.data_and_noise(x, t)
        ex0, eeps = gm.data_and_noise(x, t)
        assert torch.allclose(x0, ex0, rtol=1e-8, atol=1e-8) and torch.allclose(eps, eeps, rtol=1e-8, atol=1e-8)
        assert torch.allclose(counted(x, t), gm(x, t), rtol=1e-8, atol=1e-8)
    assert counted.nfe == net.calls == 6  # one network call per entry point call
    if path.alpha_zero_at_T:  # at α = 0 only x₀, v and flow predictions determine x̂₀
        t = torch.ones(6, dtype=torch.float64)
        x0, _ = counted.data_and_noise(x, t)
        if prediction == "edm":  # EDM's network is fed x/α: infinite at α = 0
            assert not bool(torch.isfinite(net.last_input).any())
        else:
            assert bool(torch.isfinite(x0).all()) == (prediction in ("x0", "v", "flow"))
        if prediction in ("x0", "v", "flow"):
            assert torch.allclose(x0, gm.mean().expand(6, 2), atol=1e-12)


def test_flow_velocity_network_samples_like_the_mixture():
    """pf_heun and DPM-Solver++ from T = 1 on a flow-matching velocity network give the mixture's own
    samples, with one counted call per network call."""
    path = FlowPath(shift=3.0)
    gm = mixture(path)
    net = FakeNet(gm, "flow")
    model = PredictionModel(net, path, "flow", shape=(2,))
    noise = SeededNoise(range(5))
    x_T = Problem(gm).prior_sample(5, noise, dtype=torch.float64)
    for name, opts in [("pf_heun", {}), ("dpm_solver_pp", {"schedule": "uniform"})]:
        sampler = make_sampler(name, n_steps=12, **opts)
        ref = sampler.sample(Problem(gm), x_T, noise)
        net.calls = 0
        sol = sampler.sample(Problem(model), x_T, noise)
        assert torch.allclose(sol.x, ref.x, rtol=1e-9, atol=1e-9) and bool(torch.isfinite(sol.x).all())
        assert sol.stats.nfe == net.calls == sampler.expected_nfe


def test_denoised_counts_one_call():
    gm = mixture(CosinePath())
    problem = Problem(gm)
    x = torch.zeros(3, 2, dtype=torch.float64)
    denoised(problem, x, torch.full((3,), 0.5, dtype=torch.float64))
    assert problem.counter.nfe == 1 and problem.counter.rows == 3


# ---- side by side with diffusers' flow-matching scheduler -----------------------------------------------
def test_flow_shift_and_euler_match_diffusers_flow_match_scheduler():
    """diffusers' FlowMatchEulerDiscreteScheduler (SD3/FLUX): its shifted σ's are FlowPath(shift)'s σ at
    its unshifted ones, and its Euler steps x + (σ_next − σ) u with the exact velocity u from pure noise
    are pf_euler's on FlowPath() over the same grid (t = σ there)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    n = 12
    base = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    base.set_timesteps(n)
    shifted = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    shifted.set_timesteps(n)
    # diffusers shifts linspace(1, σ_min, n), σ_min its shifted training schedule's smallest σ
    unshifted = torch.linspace(1.0, float(shifted.sigma_min), n, dtype=torch.float64)
    torch.testing.assert_close(FlowPath(shift=3.0).marginal(unshifted)[1], shifted.sigmas[:-1].double(), rtol=1e-6,
                               atol=1e-7)
    s = base.sigmas[:-1].double()

    path = FlowPath(eps=float(s[-1]))  # diffusers' last σ before 0 is 1/1000
    gm = mixture(path)
    noise = SeededNoise(range(5))
    x_T = Problem(gm).prior_sample(5, noise, dtype=torch.float64)
    ours = make_sampler("pf_euler", n_steps=n, denoise="none").sample(Problem(gm), x_T, noise).x
    x = x_T.clone()
    for t, sigma in zip(base.timesteps[:-1], base.sigmas[:-2]):
        tt = torch.full((5,), float(sigma), dtype=torch.float64)
        x0, eps = gm.data_and_noise(x, tt)
        x = base.step(eps - x0, t, x).prev_sample  # u = dx/dσ = ε − x₀ on α = 1 − σ
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
