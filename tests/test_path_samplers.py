"""Every registered sampler on every Gaussian path (VE, VP, sub-VP, cosine, flow matching with and without
shift, a tabulated cosine ᾱ of 1000 points): fitted orders against declared ones on exact mixtures, the
refusals and their reasons (solvers/requirements.py), how samplers start where α_T = 0, and the
probability-flow likelihood on the cosine and flow paths against the exact log-density.

The per-path order table in docs/paths.md is what these tests fit (measured with the same step counts)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from models.gaussian import GaussianMixture
from models.paths import CosinePath, FlowPath, TabulatedPath, cosine_alphas_cumprod
from models.sde import VESDE, VPSDE, SubVPSDE
from solvers import (
    SAMPLERS,
    BrownianNoise,
    ProbabilityFlowLikelihood,
    Problem,
    SeededNoise,
    make_sampler,
    sampler_config,
    sampler_options,
)
from solvers.requirements import check, needs, refusal

MU, S0 = 0.3, 0.5
TABLE = cosine_alphas_cumprod(1000)
# The tabulated path's last interval holds the 0.999 clip of β (log ᾱ drops by 6.9 in 1/N): samplers in
# t are pre-asymptotic there at these step counts (pf_heun 1.1–1.3 over 16–256 steps at T = 1, measured
# 2026-12-07), so the orders are fitted from T = 0.99; λ- and σ-space samplers do not see the table.
PATHS = {"ve": VESDE(sigma_max=5.0), "vp": VPSDE(), "subvp": SubVPSDE(), "cosine": CosinePath(),
         "flow": FlowPath(), "flow_shift3": FlowPath(shift=3.0), "tabulated": TabulatedPath(TABLE, eps=1e-3, T=0.99)}
T_BELOW = 0.999  # where α_T = 0 (flow at T = 1), samplers that need α_T > 0 run from here


def run_path(key: str, sampler):
    """The path a sampler runs on: the path itself, or (flow at T = 1) the same path from T = 0.999."""
    path = PATHS[key]
    if refusal(sampler, path) is not None and path.alpha_zero_at_T:
        path = dataclasses.replace(path, T=T_BELOW)
    return path


def exact_flow(sde, x_T):
    """Probability-flow map of N(μ, s₀² I) data on any Gaussian path:
    x_eps = m_eps + (σ̃_eps/σ̃_T)(x_T − m_T), m = α μ, σ̃² = α² s₀² + σ²."""
    alpha, sigma = sde.marginal(torch.tensor([sde.T, sde.eps], dtype=torch.float64))
    st = (alpha**2 * S0**2 + sigma**2).sqrt()
    return alpha[1] * MU + st[1] / st[0] * (x_T - alpha[0] * MU)


def fitted_order(ns, errs):
    return -np.polyfit(np.log(np.array(ns) - 1), np.log(errs), 1)[0]


DOC = Path(__file__).resolve().parents[1] / "docs" / "paths.md"
DOC_COLUMNS = {"ve": "ve", "vp": "vp", "subvp": "subvp", "cosine": "cosine", "flow": "flow",
               "flow, shift 3": "flow_shift3", "tabulated": "tabulated"}


def documented_order(row: str, key: str) -> float:
    """The fitted order docs/paths.md states for ``row`` (its first cell) on path ``key``."""
    lines = [ln for ln in DOC.read_text().splitlines() if ln.startswith("| sampler | declared |")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == row and len(cells) == len(header):
            col = header.index(next(h for h, k in DOC_COLUMNS.items() if k == key))
            return float(re.match(r"[\d.]+", cells[col]).group())
    raise KeyError(f"docs/paths.md has no order row {row!r}")


def assert_documented(row: str, key: str, order: float) -> None:
    """The docs' number is this test's measurement (to 0.02: BLAS and platform round-off)."""
    assert abs(documented_order(row, key) - order) < 0.02, (row, key, order, documented_order(row, key))


# ---- deterministic fixed-grid samplers: global order on the exact Gaussian flow ----------------------
NS = [17, 33, 65, 129, 257]
DETERMINISTIC = {  # name: (options, expected order if not the declared one, and why)
    "pf_euler": ({}, None),
    "pf_heun": ({}, None),
    "ddim": ({}, None),
    "edm_heun": ({}, None),
    "edm_stochastic": ({}, 2.0),  # S_churn = 0 by default: it is EDM's Heun (declared 1 for churn > 0)
    "dpm_solver": ({}, None),
    "dpm_solver_pp": ({}, None),
    "dpm_solver_pp_uniform": ({"schedule": "uniform"}, None),  # the variant that starts at α_T = 0
    "unipc": ({}, None),
    "ipndm": ({}, None),
    "lms": ({}, "at_least"),  # order ≥ 2: LMS-4 shows its multistep order (≈ 3–3.8) at these steps
    "reverse_diffusion_pf": ({"probability_flow": True, "discretization": "transition"}, None),
}
DOC_ROWS = {"edm_stochastic": "edm_stochastic (S_churn = 0: Heun, expected 2)",
            "dpm_solver": "dpm_solver (singlestep 3)",
            "dpm_solver_pp": "dpm_solver_pp (2M, log_snr)", "dpm_solver_pp_uniform": "dpm_solver_pp, schedule uniform",
            "lms": "lms (asserted ≥ 1.7: LMS-4 pre-asymptotic)",
            "reverse_diffusion_pf": "reverse_diffusion, probability flow, transition",
            "euler_maruyama*": "euler_maruyama *",
            "reverse_diffusion*": "reverse_diffusion * (table; transition off VE/VP/sub-VP)",
            "ancestral_sampling*": "ancestral_sampling *",
            "pc*": "pc * (corrector none; predictor euler_maruyama off VE/VP/sub-VP)", "ddim*": "ddim * (eta 1)",
            "dpm_solver_pp_sde*": "dpm_solver_pp_sde * (order 1, uniform)",
            "scipy_ode": "scipy_ode (RK45), vs NFE", "torchdiffeq_ode": "torchdiffeq_ode (dopri5), vs NFE",
            "dpm_solver_adaptive": "dpm_solver_adaptive (noise), vs NFE",
            "dpm_solver_adaptive_data": "dpm_solver_adaptive (data), vs NFE"}
# Where the declared order shows only at more steps (measured 2026-12-07, local orders over 16–256 steps):
STEPS = {("pf_heun", "subvp"): [65, 129, 257, 513],  # 2.84, 2.69, 2.16, 2.00
         ("dpm_solver_pp_uniform", "subvp"): [65, 129, 257, 513],  # 2.35, 2.69, 2.39, 2.17
         ("reverse_diffusion_pf", "cosine"): [513, 1025, 2049]}  # 0.29 … 0.70 below 256 steps
# Reverse diffusion's transition step x − (a − 1)x + ½ v s with a = α_t/α_next is first order only once
# the step is short against α_T/|α̇_T|: α_T = 1e-3 (flow from 0.999) and 5.7e-3 (table from 0.99) need
# far more steps than a unit test takes (local orders 0.3–0.8 up to 4096 steps on flow, measured).
NOT_REACHED = {("reverse_diffusion_pf", "flow"), ("reverse_diffusion_pf", "flow_shift3"),
               ("reverse_diffusion_pf", "tabulated")}
DET_CASES = [(n, p) for n in DETERMINISTIC for p in PATHS if (n, p) not in NOT_REACHED]


def registry_name(case: str) -> str:
    return {"dpm_solver_pp_uniform": "dpm_solver_pp", "reverse_diffusion_pf": "reverse_diffusion"}.get(case, case)


@pytest.mark.parametrize("case, key", DET_CASES, ids=[f"{p}-{n}" for n, p in DET_CASES])
def test_deterministic_order_on_every_path(case, key):
    opts, expected = DETERMINISTIC[case]
    name = registry_name(case)
    ns = STEPS.get((case, key), NS)
    sde = run_path(key, make_sampler(name, n_steps=ns[0], **opts))
    gm = GaussianMixture.isotropic(sde, MU, S0, shape=(1, 2))
    problem = Problem(gm)
    noise = SeededNoise(range(4))
    x_T = problem.prior_sample(4, noise, dtype=torch.float64)
    errs = []
    for n in ns:
        sampler = make_sampler(name, n_steps=n, denoise="none", **opts)
        check(sampler, sde)
        problem.counter.reset()
        sol = sampler.sample(problem, x_T, noise)
        assert sol.stats.nfe == problem.counter.nfe == sampler.expected_nfe
        errs.append((sol.x - exact_flow(sde, x_T)).abs().max().item())
    order = fitted_order(ns, errs)
    assert_documented(DOC_ROWS.get(case, case), key, order)
    if expected == "at_least":
        assert order > sampler.order - 0.3, errs
    else:
        assert abs(order - (sampler.order if expected is None else expected)) < 0.3, (order, errs)


# ---- stochastic fixed-grid samplers: strong order on one Brownian path -----------------------------------
STOCHASTIC = {
    "euler_maruyama": {},
    "reverse_diffusion": {},  # score_sde's table where the path has one, else the exact transition
    "ancestral_sampling": {},
    "pc": {"corrector": "none"},  # the predictor's order (the Langevin corrector is MCMC: no strong order)
    "ddim": {"eta": 1.0},
    # the Brownian path lives on a uniform grid in t; solver_order 1 (2M is declared strong order 1 too, but
    # its fitted order over 32–128 steps ranges from 0.97 (VP) to 2.0 (sub-VP): its drift error dominates)
    "dpm_solver_pp_sde": {"schedule": "uniform", "solver_order": 1},
}


def stochastic_options(name: str, sde) -> dict:
    opts = dict(STOCHASTIC[name])
    has_table = callable(getattr(sde, "discretize", None))
    if name in ("reverse_diffusion", "ancestral_sampling") and not has_table:
        opts["discretization"] = "transition"
    if name == "pc" and not has_table:
        opts["predictor"] = "euler_maruyama"
    return opts


def _runs(name: str, key: str) -> bool:
    """Whether the sampler runs on the path (from T = 0.999 where α_T = 0); else a table refusal."""
    sampler = make_sampler(name, n_steps=33, **stochastic_options(name, PATHS[key]))
    return refusal(sampler, run_path(key, sampler)) is None


ST_CASES = [(n, p) for n in STOCHASTIC for p in PATHS if _runs(n, p)]


@pytest.mark.parametrize("name, key", ST_CASES, ids=[f"{p}-{n}" for n, p in ST_CASES])
def test_stochastic_strong_order_on_every_path(name, key):
    """Each sampler against itself on 1025 points of the same Brownian path (mean absolute error)."""
    sde = PATHS[key]
    opts = stochastic_options(name, sde)
    sampler = make_sampler(name, n_steps=33, denoise="none", **opts)
    sde = run_path(key, sampler)
    gm = GaussianMixture.isotropic(sde, MU, S0, shape=(2,))
    problem = Problem(gm)
    B = 16
    x_T = torch.randn(B, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * sde.prior_std()

    def solve(n):
        noise = BrownianNoise((B, 2), seed=11, t_min=sde.eps, t_max=sde.T, n_fine=1024)
        return make_sampler(name, n_steps=n, denoise="none", **opts).sample(problem, x_T, noise).x

    ref = solve(1025)
    ns = [33, 65, 129]
    errs = [(solve(n) - ref).abs().mean().item() for n in ns]
    assert_documented(DOC_ROWS[name + "*"], key, fitted_order(ns, errs))
    assert abs(fitted_order(ns, errs) - sampler.order) < 0.3, errs


@pytest.mark.parametrize("key", ["cosine"])
def test_torchsde_strong_order_on_new_paths(key):
    """torchsde's own loop and Brownian interval (VP in test_convergence.py). On flow from T = 0.999
    (f = −1/(1 − t) = −1000 there) 16–64 steps are pre-asymptotic: fitted 1.52 with 8 samples (measured
    2026-12-07), as the project's Euler–Maruyama over 16–32 steps."""
    sampler = make_sampler("torchsde", n_steps=17, denoise="none", seed=7)
    sde = run_path(key, sampler)
    problem = Problem(GaussianMixture.isotropic(sde, MU, S0, shape=(2,)))
    x_T = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def solve(n):
        return make_sampler("torchsde", n_steps=n, denoise="none", seed=7).sample(
            problem, x_T, SeededNoise(range(4))).x

    ref = solve(513)
    ns = [17, 33, 65]
    errs = [(solve(n) - ref).abs().mean().item() for n in ns]
    assert abs(fitted_order(ns, errs) - 1.0) < 0.3, errs


# ---- adaptive samplers -------------------------------------------------------------------------------------
ADAPTIVE = {"scipy_ode": {}, "torchdiffeq_ode": {}, "dpm_solver_adaptive": {},
            "dpm_solver_adaptive_data": {"prediction": "data"}}
AD_CASES = [(n, p) for n in ADAPTIVE for p in PATHS]


@pytest.mark.parametrize("case, key", AD_CASES, ids=[f"{p}-{n}" for n, p in AD_CASES])
def test_adaptive_ode_order_against_nfe(case, key):
    """Error on the exact flow against (per-sample) NFE over tolerances 1e-3 … 1e-6: it falls at least as
    fast as NFE^(−declared order) (fitted ≥ declared − 0.5; RK45's and dopri5's fitted 5.5–9.9)."""
    opts = ADAPTIVE[case]
    name = case.removesuffix("_data")
    sde = run_path(key, make_sampler(name, **opts))
    gm = GaussianMixture.isotropic(sde, MU, S0, shape=(1, 2))
    problem = Problem(gm)
    noise = SeededNoise(range(4))
    x_T = problem.prior_sample(4, noise, dtype=torch.float64)
    errs, nfes = [], []
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):
        sampler = make_sampler(name, denoise="none", rtol=tol, atol=tol, **opts)
        sol = sampler.sample(problem, x_T, noise)
        assert str(sol.status) == "ok"
        per = sol.stats.nfe_per_sample
        nfes.append(sol.stats.nfe if per is None else per.double().mean().item())
        errs.append((sol.x - exact_flow(sde, x_T)).abs().max().item())
    order = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    assert_documented(DOC_ROWS[case], key, order)
    assert order > sampler.order - 0.5 and errs[-1] < 1e-4, (order, errs, nfes)


@pytest.mark.parametrize("name", ["adaptive_em", "adaptive_improved_euler"])
@pytest.mark.parametrize("key", ["cosine", "flow", "tabulated"])
def test_adaptive_sde_samplers_match_the_mixture(name, key):
    """Gotta Go Fast's adaptive SDE solvers (noise drawn per attempt: no strong order to fit) sample the
    exact mixture: mean and std per dimension within Monte-Carlo error + 0.03."""
    sampler = make_sampler(name, rtol=1e-2, atol=1e-2)
    sde = run_path(key, sampler)
    means = torch.tensor([[-0.5, 0.4], [0.4, -0.2]], dtype=torch.float64)
    gm = GaussianMixture(means, torch.tensor([0.15, 0.2]), sde, weights=torch.tensor([0.3, 0.7]))
    problem = Problem(gm)
    n = 600
    noise = SeededNoise(range(n))
    x = sampler.sample(problem, problem.prior_sample(n, noise, torch.float64), noise).x
    mean, std = gm.mean(), gm.covariance().diag().sqrt()
    assert ((x.mean(0) - mean).abs() < 4 * std / n**0.5 + 0.03).all(), (x.mean(0), mean)
    assert ((x.std(0) - std).abs() < 4 * std / (2 * n) ** 0.5 + 0.03).all(), (x.std(0), std)


# ---- refusals ------------------------------------------------------------------------------------------------
TABLES = {"reverse_diffusion", "ancestral_sampling", "pc"}  # score_sde's tables (default options)
# start at α_T = 0 with defaults (adm_ancestral: its exact-posterior step needs α_next only, with (x̂₀, ε̂)
# from the model)
STARTERS = {"pf_euler", "pf_heun", "scipy_ode", "torchdiffeq_ode", "adm_ancestral"}
REFUSED = {  # sampler names refused with their default options, per path (at its default T)
    "ve": set(),
    "vp": {"annealed_langevin"},
    "subvp": {"annealed_langevin", "ancestral_sampling"},
    "cosine": TABLES | {"annealed_langevin"},
    "tabulated": TABLES | {"annealed_langevin"},
    "flow": set(SAMPLERS) - STARTERS,
    "flow_shift3": set(SAMPLERS) - STARTERS,
}


@pytest.mark.parametrize("key", list(REFUSED))
def test_refusals_by_path(key):
    """Which registered samplers (default options) each path refuses, each with a reason naming the need."""
    sde = PATHS[key]
    refused = {}
    for name in SAMPLERS:
        why = refusal(make_sampler(name), sde)
        if why is not None:
            refused[name] = why
            assert sampler_config(make_sampler(name))["class"] in why and f"{sde.kind!r} path" in why
    assert set(refused) == REFUSED[key], sorted(refused)
    if sde.alpha_zero_at_T:
        assert all("α_T > 0" in why or "tables" in why or "VE path" in why for why in refused.values())


def test_refused_at_alpha_zero_means_nonfinite_or_an_error():
    """The α_T > 0 refusals are needed: run anyway from flow's T = 1 (α = 0), each of those samplers
    raises, returns non-finite samples or stops with a non-finite status (the adaptive ones)."""
    sde = FlowPath()
    gm = GaussianMixture.isotropic(sde, MU, S0, shape=(1, 2))
    finite = []
    for name in sorted(set(SAMPLERS) - STARTERS):
        sampler = make_sampler(name, **({"n_steps": 8} if "n_steps" in sampler_options(name) else {}))
        if needs(sampler) and "alpha_T" not in needs(sampler):
            continue  # refused for a table or VE, not for α_T
        problem = Problem(gm)
        noise = SeededNoise(range(3))
        x_T = problem.prior_sample(3, noise, dtype=torch.float64)
        try:
            with torch.no_grad():
                sol = sampler.sample(problem, x_T, noise)
        except (ValueError, RuntimeError, ZeroDivisionError, OverflowError):
            continue
        if bool(torch.isfinite(sol.x).all()) and str(sol.status) == "ok":
            finite.append(name)
    assert finite == [], finite


@pytest.mark.parametrize("name, opts", [("pf_euler", {}), ("pf_heun", {}), ("scipy_ode", {}),
                                        ("torchdiffeq_ode", {}), ("dpm_solver_pp", {"schedule": "uniform"})])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_samplers_start_from_pure_noise_at_alpha_zero(name, opts, shift):
    """From flow's T = 1 (α = 0, λ = −inf): finite samples, close to the exact flow map, declared NFE."""
    sde = FlowPath(shift=shift)
    gm = GaussianMixture.isotropic(sde, MU, S0, shape=(1, 2))
    problem = Problem(gm)
    noise = SeededNoise(range(4))
    x_T = problem.prior_sample(4, noise, dtype=torch.float64)
    sampler = make_sampler(name, denoise="none", **opts, **({"n_steps": 65} if "rtol" not in opts and name in (
        "pf_euler", "pf_heun", "dpm_solver_pp") else {}))
    check(sampler, sde)
    sol = sampler.sample(problem, x_T, noise)
    assert bool(torch.isfinite(sol.x).all())
    assert (sol.x - exact_flow(sde, x_T)).abs().max() < 0.1  # orders: the tests above
    if sampler.expected_nfe is not None:  # declared where the options fix it (None: adaptive)
        assert sol.stats.nfe == sampler.expected_nfe


# ---- likelihood on the cosine and flow paths ---------------------------------------------------------------
class ExactPrior:
    """The mixture's own p_T (so that the only error left is the ODE's)."""

    def __init__(self, gm, T):
        self.gm, self.T = gm, T

    def log_prob(self, z):
        return self.gm.log_prob(z, self.T)


@pytest.mark.parametrize("key", ["cosine", "flow", "flow_shift3"])
def test_bits_per_dim_on_the_exact_mixture(key):
    """Probability-flow bits/dim (exact divergence, RK45 at rtol = atol = 1e-8) within 1e-4 of the exact
    −log p_eps(x)/(D ln 2) + offset. On flow at T = 1 the default prior N(0, I) is exact; on cosine
    (T = 0.9946, α_T = 0.0084) the mixture's own p_T is the prior."""
    sde = PATHS[key]
    means = torch.tensor([[-0.5, 0.4], [0.4, -0.2]], dtype=torch.float64)
    gm = GaussianMixture(means, torch.tensor([0.15, 0.2]), sde, weights=torch.tensor([0.3, 0.7]))
    prior = None if sde.alpha_zero_at_T else ExactPrior(gm, sde.T)
    problem = Problem(gm, prior=prior)
    x = gm.sample(6, generator=torch.Generator().manual_seed(5))
    lik = ProbabilityFlowLikelihood(divergence="exact", rtol=1e-8, atol=1e-8, eps=1e-5)
    res = lik(problem, x, levels=256)
    exact = -gm.log_prob(x, 1e-5) / (2 * np.log(2)) + res.offset
    assert str(res.status) == "ok"
    assert (res.bpd - exact).abs().max() < 1e-4, (res.bpd - exact)
