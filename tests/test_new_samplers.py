"""The samplers added through docs/adding_a_sampler.md (iPNDM, LMS, a user's class from a grid),
per-sample NFE read from the counter, each sampler's lower_order_final default, and the Gotta Go
Fast port's float32 precision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from bench.grid import GridError, load_grid
from bench.records import read_records
from bench.run import main
from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE
from solvers import Problem, RecordedNoise, SeededNoise, make_sampler, multistep, sampler_options

MU, S0 = 0.3, 0.5
SDES = {"vp": VPSDE(), "ve": VESDE(sigma_max=5.0)}
USER = "tests.user_sampler:TwoStageRK"


def exact_flow(sde, x_T):
    """Probability-flow map of N(μ, s₀² I) data: x_eps = m_eps + (σ̃_eps/σ̃_T)(x_T − m_T), σ̃² = α² s₀² + σ²."""
    alpha, sigma = sde.marginal(torch.tensor([sde.T, sde.eps], dtype=torch.float64))
    st = (alpha**2 * S0**2 + sigma**2).sqrt()
    return alpha[1] * MU + st[1] / st[0] * (x_T - alpha[0] * MU)


def errors(name, kind, ns, **opts):
    """Max error against the exact flow at each n, with the NFE checked against the step count."""
    sde = SDES[kind]
    problem = Problem(GaussianMixture.isotropic(sde, MU, S0, shape=(1, 4, 4)))
    noise = SeededNoise(range(8))
    x_T = problem.prior_sample(8, noise, dtype=torch.float64)
    errs = []
    for n in ns:
        sampler = make_sampler(name, n_steps=n, denoise="none", **opts)
        problem.counter.reset()
        sol = sampler.sample(problem, x_T, noise)
        assert problem.counter.nfe == sol.stats.nfe == (n - 1) * sampler.nfe_per_step  # n grid points, n − 1 steps
        errs.append((sol.x - exact_flow(sde, x_T)).abs().max().item())
    return sampler, errs


def fitted_order(ns, errs):
    return -np.polyfit(np.log(np.array(ns) - 1), np.log(errs), 1)[0]


# ---- iPNDM and LMS: orders fitted on the exact Gaussian flow ---------------------------------------
@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("opts", [{}, {"solver_order": 1}], ids=["p4", "p1"])
def test_ipndm_order(kind, opts):
    """Declared 2 for p ≥ 2: the weights are uniform-step Adams–Bashforth ones on a non-uniform σ grid
    (measured 2.0–2.1 for p = 2, 3, 4 on VP, sub-VP and VE); p = 1 is DDIM, order 1."""
    ns = [17, 33, 65]
    sampler, errs = errors("ipndm", kind, ns, **opts)
    assert sampler.order == (1.0 if opts else 2.0)
    assert abs(fitted_order(ns, errs) - sampler.order) < 0.3, errs


def test_lms_order():
    """Declared 2: the warm-up's first (Euler) step caps the global order, as for 3M. On VE the
    asymptotic regime is reached at 256–1024 steps (measured 2.07); at fewer steps the first step's
    error is small (the flow is nearly linear in σ at σ_max) and LMS-4 shows its multistep order
    (3.2–3.5 over 8–128 steps): at 64 steps it is ≥ 10× more accurate than LMS-2 (measured 26× VE, 10× VP)."""
    ns = [257, 513, 1025]
    sampler, errs = errors("lms", "ve", ns)
    assert sampler.order == 2.0 and abs(fitted_order(ns, errs) - 2.0) < 0.3, errs
    for kind in ("vp", "ve"):
        (e2,), (e4,) = errors("lms", kind, [65], solver_order=2)[1], errors("lms", kind, [65])[1]
        assert e4 < e2 / 8, (kind, e2, e4)


def test_lms_to_zero_is_the_same_rule_one_step_further():
    """``to_zero``: after the grid, one more LMS step to σ = 0 (k-diffusion's; one call, counted), then no
    denoise. It is the Tweedie sample's competitor: on the exact Gaussian both end near the data law's
    flow at σ = 0, and they differ (the last step's rule is not x̂₀). Tweedie is refused with it."""
    sde = SDES["ve"]
    problem = Problem(GaussianMixture.isotropic(sde, MU, S0, shape=(1, 4, 4)))
    noise = SeededNoise(range(8))
    x_T = problem.prior_sample(8, noise, dtype=torch.float64)
    problem.counter.reset()
    own = make_sampler("lms", n_steps=20, to_zero=True).sample(problem, x_T, noise)
    assert problem.counter.nfe == own.stats.nfe == 20  # 19 steps + the step to σ = 0
    tweedie = make_sampler("lms", n_steps=20).sample(problem, x_T, noise)
    assert tweedie.stats.nfe == 20
    # the exact flow to σ = 0 maps x_T to μ + (s₀/σ̃_T)(x_T − μ) (VE: α = 1)
    st = (S0**2 + sde.marginal(torch.tensor([sde.T], dtype=torch.float64))[1] ** 2).sqrt()
    exact = MU + S0 / st * (x_T - MU)
    err_own, err_tw = ((x - exact).abs().max().item() for x in (own.x, tweedie.x))
    assert err_own < 1e-2 and err_tw < 1e-2 and (own.x - tweedie.x).abs().max() > 1e-6, (err_own, err_tw)
    with pytest.raises(ValueError, match="denoise"):
        make_sampler("lms", n_steps=20, to_zero=True, denoise="tweedie")


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_euler_in_sigma_order(kind):
    """Euler's method in σ (k-diffusion's sample_euler; diffusers' Euler): declared 1."""
    ns = [17, 33, 65]
    sampler, errs = errors("euler", kind, ns)
    assert sampler.order == 1.0 and abs(fitted_order(ns, errs) - 1.0) < 0.3, errs


# ---- a user's sampler class by import path -----------------------------------------------------------
def test_user_sampler_by_import_path():
    assert "alpha" in sampler_options(USER) and "n_steps" in sampler_options(USER)
    ns = [17, 33, 65]
    for alpha in (0.5, 1.0):
        sampler, errs = errors(USER, "vp", ns, alpha=alpha)
        assert abs(fitted_order(ns, errs) - 2.0) < 0.3, errs
    with pytest.raises(ValueError, match="unknown option.*'beta'.*expected one of: alpha"):
        make_sampler(USER, beta=1)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        make_sampler(USER, alpha=2.0)
    with pytest.raises(ValueError, match="cannot import 'Nope' from module 'tests.user_sampler'"):
        make_sampler("tests.user_sampler:Nope")
    with pytest.raises(ValueError, match="is neither a method .* nor a sampler"):
        make_sampler("tests.user_sampler:expand_like")


def _user_grid(tmp_path, **options):
    grid = {"name": "user", "models": {"mix": {"kind": "mixture", "sde": {"kind": "vp"}, "means": [[-0.5, 0.5]],
                                                "std": 0.2, "metrics": ["fd_exact"]}},
            "eval": {"num_samples": 4, "batch_size": 4, "seeds": "0-3"},
            "sweeps": [{"solver": USER, "n_steps": [5, 9], **options}]}
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_user_sampler_from_a_grid_end_to_end(tmp_path):
    path = _user_grid(tmp_path, alpha=1.0)
    runs = load_grid(path).runs
    assert [r.solver for r in runs] == [USER, USER]
    out = tmp_path / "out"
    assert main(["--grid", str(path), "--out", str(out), "--no-progress"]) == 0
    records = read_records(out)
    assert set(records) == {r.run_id for r in runs}
    for r in records.values():
        assert r["status"] == "ok" and r["solver"] == USER and r["options"]["alpha"] == 1.0
        assert r["nfe"] == 2 * (r["options"]["n_steps"] - 1) + 1  # counted: 2 per step + the Tweedie denoise
    # The import path is part of the run identity: the same cell with a built-in solver has another id.
    other = load_grid(_user_grid(tmp_path, alpha=1.0)).runs[0]
    assert json.loads(json.dumps(other.solver)) == USER


def test_user_sampler_bad_option_fails_at_grid_load(tmp_path):
    with pytest.raises(GridError, match="unknown option 'beta' for solver 'tests.user_sampler:TwoStageRK'"):
        load_grid(_user_grid(tmp_path, beta=1.0))
    with pytest.raises(GridError, match="cannot import"):
        path = _user_grid(tmp_path)
        path.write_text(path.read_text().replace("TwoStageRK", "Missing"))
        load_grid(path)
    out = tmp_path / "never"
    assert main(["--grid", str(_user_grid(tmp_path, beta=1.0)), "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()


# ---- per-sample NFE, read from the counter ---------------------------------------------------------
@pytest.mark.parametrize("name, opts", [("dpm_solver_adaptive", {"rtol": 1e-3, "atol": 1e-3}),
                                        ("adaptive_improved_euler", {"rtol": 0.1, "atol": 0.01}),
                                        ("adaptive_em", {"rtol": 0.1, "atol": 0.01, "per_sample_eval": False})])
def test_nfe_per_sample_accounts_for_every_counted_row(name, opts):
    problem = Problem(GaussianMixture.isotropic(VPSDE(), MU, S0, shape=(1, 4, 4)))
    noise = SeededNoise(range(12))
    x_T = problem.prior_sample(12, noise, dtype=torch.float64)
    problem.counter.reset()
    sol = make_sampler(name, **opts).sample(problem, x_T, noise)
    per = sol.stats.nfe_per_sample
    assert int(per.sum()) == problem.counter.rows  # every evaluated row belongs to one sample
    assert int(per.max()) == problem.counter.nfe == sol.stats.nfe  # the slowest sample ran every call
    if opts.get("per_sample_eval", True):
        assert int(per.min()) < sol.stats.nfe  # finished samples stop being evaluated
    else:
        assert (per == sol.stats.nfe).all()


# ---- lower_order_final: each sampler's reference code ---------------------------------------------
@pytest.mark.parametrize("name, steps, lowered", [
    ("dpm_solver_pp", 9, True), ("dpm_solver_pp", 10, False),  # official DPM-Solver: steps < 10
    ("dpm_solver_pp_sde", 14, True), ("dpm_solver_pp_sde", 15, False),  # diffusers: < 15
    ("unipc", 40, True),  # official UniPC: always
    ("ipndm", 9, False),  # iPNDM keeps its order to the end (default off)
])
def test_lower_order_final_defaults(name, steps, lowered):
    sampler = make_sampler(name, n_steps=steps + 1)
    method = sampler.method
    orders = [multistep.step_order(method, i, steps) for i in range(steps)]
    p = method.solver_order
    assert orders[-1] == (1 if lowered else p) and orders[:p] == list(range(1, p + 1))
    # The option changes the samples exactly when the default lowers the last steps.
    problem = Problem(GaussianMixture.isotropic(VPSDE(), MU, S0, shape=(4,)))
    x_T = problem.prior_sample(3, SeededNoise(range(3)), dtype=torch.float64)
    a = sampler.sample(problem, x_T, SeededNoise(range(3))).x
    b = make_sampler(name, n_steps=steps + 1, lower_order_final=not method.lower_order_final).sample(
        problem, x_T, SeededNoise(range(3))).x
    assert torch.equal(a, b) != (lowered or not method.lower_order_final)


# ---- Gotta Go Fast: the PyTorch port's float32 precision, on VE and VP ------------------------------
def ggf_port(score, sde, x0, draws, *, rtol, atol, h_init, dtype):
    """The port as fixtures README §3.7 describes it: batch mode, one z per iteration, t, h and E₂ in
    ``dtype`` (float32 in the port), x in x0's dtype; GGF's x + σ(eps)² s denoise. (x, iterations)."""
    B = x0.shape[0]
    t, h = torch.full((B,), float(sde.T), dtype=dtype), torch.full((B,), h_init, dtype=dtype)
    x, prev, k = x0.clone(), x0.clone(), 0

    def col(v):
        return v.to(x.dtype).reshape(-1, *(1,) * (x.dim() - 1))

    def fr(y, s):
        return sde.drift(y, s) - col(sde.diffusion(s) ** 2) * score(y, s)

    while bool(((t - sde.eps).abs() > 1e-6).any()):
        z, k = draws[k], k + 1
        k1 = -col(h) * fr(x, t) + col(sde.diffusion(t) * h.sqrt()) * z
        x_em = x + k1
        k2 = -col(h) * fr(x_em, t - h) + col(sde.diffusion(t - h) * h.sqrt()) * z
        delta = torch.maximum(torch.full_like(x, atol), rtol * torch.maximum(prev.abs(), x_em.abs()))
        E2 = (0.5 * (k2 - k1) / delta).flatten(1).pow(2).mean(1).sqrt().to(dtype)
        acc = E2 <= 1
        x = torch.where(col(acc) > 0, x + 0.5 * (k1 + k2), x)
        prev = torch.where(col(acc) > 0, x_em, prev)
        t = torch.where(acc, t - h, t)
        h = torch.where(h > 0, torch.minimum((t - sde.eps).clamp(min=0), 0.9 * h * E2.pow(-0.9)), torch.zeros_like(h))
    t_eps = torch.full((B,), sde.eps, dtype=dtype)
    return x + col(sde.marginal(t_eps)[1] ** 2) * score(x, t_eps), k


SETTINGS = {"vp": (VPSDE(), dict(rtol=0.05, atol=0.0078, h_init=0.01)),  # fixtures README §3.7
            "ve": (VESDE(), dict(rtol=0.05, atol=0.0039, h_init=0.5))}


@pytest.mark.parametrize("kind", ["ve", "vp"])
@pytest.mark.parametrize("precision, state", [("float32", torch.float32), ("float64", torch.float64)])
def test_ggf_precision_reproduces_the_port(kind, precision, state):
    """precision='float32' reproduces the port run in float32 (measured 2.5e-6 VE, 1.1e-5 VP), where the
    float64 default on the same float32 state is 2.0e-4 away on VE (a near-1 E₂ sends a sample another
    way); the float64 default reproduces the port run in float64. Same iteration count in both."""
    sde, kw = SETTINGS[kind]
    means = torch.stack([torch.full((1, 4, 4), -0.5), torch.full((1, 4, 4), 0.4)]).double()
    gm = GaussianMixture(means, torch.tensor([0.15, 0.15]), sde, weights=torch.tensor([0.3, 0.7]))
    g = torch.Generator().manual_seed(0)
    x0 = (sde.prior_std() * torch.randn(16, 1, 4, 4, generator=g)).to(state)
    draws = torch.randn(400, 16, 1, 4, 4, generator=g).to(state)
    expected, iterations = ggf_port(gm, sde, x0, draws, dtype=getattr(torch, precision), **kw)
    sol = make_sampler("adaptive_improved_euler", precision=precision, per_sample_eval=False,
                       denoise="ggf", **kw).sample(Problem(gm), x0, RecordedNoise(draws))
    assert sol.stats.n_steps == iterations
    tol = 1e-4 if state == torch.float32 else 5e-9  # the fixture tolerance; float64: measured 7.3e-10 (round-off)
    torch.testing.assert_close(sol.x, expected, rtol=0, atol=tol)
    if kind == "ve" and precision == "float32":  # the option is what makes VE reproduce
        default = make_sampler("adaptive_improved_euler", per_sample_eval=False, denoise="ggf",
                               **kw).sample(Problem(gm), x0, RecordedNoise(draws))
        assert (default.x - expected).abs().max() > tol


def test_h_min_stops_a_shrinking_step():
    problem = Problem(GaussianMixture.isotropic(VPSDE(), MU, S0, shape=(1, 4, 4)))
    noise = SeededNoise(range(4))
    x_T = problem.prior_sample(4, noise, dtype=torch.float64)
    tight = make_sampler("adaptive_improved_euler", rtol=1e-6, atol=1e-6, h_min=1e-3).sample(problem, x_T, noise)
    assert tight.status == "dt_min" and "h_min=0.001" in tight.message
    # Proposals above h_min: the run ends normally (the check looks at the proposal, not the capped step).
    ok = make_sampler("adaptive_improved_euler", rtol=0.1, atol=0.01, h_min=1e-9).sample(problem, x_T,
                                                                                       SeededNoise(range(4)))
    assert ok.status == "ok"
