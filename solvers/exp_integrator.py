"""The exponential-integrator formulas shared by DPM-Solver, DPM-Solver++, UniPC and adaptive
DPM-Solver, in the half log-SNR λ_t = log(α_t/σ_t) on every SDE through its marginal (α_t, σ_t).

With h = λ_next − λ_t and the model output expanded in λ around λ_t (derivatives m^{(k)}), the exact
solutions of the ODE's linear part give (Lu et al. 2022, Eq. 3.4; Lu et al. 2022b, Eq. 8–9)

    noise prediction ε̂ = −σ s:   x_next = (α_next/α_t) x − σ_next Σ_k h^{k+1} φ_{k+1}(h)  ε̂^{(k)}
    data prediction x̂₀:         x_next = (σ_next/σ_t) x + α_next Σ_k h^{k+1} φ_{k+1}(−h) x̂₀^{(k)}

with φ_k of :func:`solvers.denoiser.phi` (φ₁(z) = (e^z − 1)/z). Truncating at k = n − 1 and
estimating the derivatives from extra evaluations inside the step (singlestep: :func:`singlestep`)
or from the previous steps' outputs (multistep: :func:`lambda_derivatives`) gives order n.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem
from solvers.denoiser import data_prediction, noise_prediction, phi, time_of_log_snr

__all__ = ["PREDICTIONS", "model_output", "exp_integrator_step", "lambda_derivatives", "singlestep",
           "dpm_solver_2", "dpm_solver_3"]

PREDICTIONS = ("noise", "data")


def model_output(problem: Problem, x: Tensor, t: Tensor, prediction: str) -> Tensor:
    """ε̂(x, t) or x̂₀(x, t), [B, ...] (one score call)."""
    return noise_prediction(problem, x, t) if prediction == "noise" else data_prediction(problem, x, t)


def exp_integrator_step(problem: Problem, prediction: str, x: Tensor, t: Tensor, t_next: Tensor, h: Tensor,
                        terms: list[Tensor], weights: list[Tensor] | None = None) -> Tensor:
    """x_next from x at t, given the model output and its λ-derivatives ``terms`` = [m, m', m'', ...] at t.

    ``h`` = λ_next − λ_t [B]. The weight of term k is h^{k+1} φ_{k+1}(±h) unless ``weights`` overrides it.
    """
    alpha_t, sigma_t = problem.marginal(t)
    alpha_n, sigma_n = problem.marginal(t_next)
    if prediction == "data":
        lin, c, z = sigma_n / sigma_t, alpha_n, -h
    else:
        lin, c, z = alpha_n / alpha_t, -sigma_n, h
    out = expand_like(lin, x) * x
    for k, d in enumerate(terms):
        w = h ** (k + 1) * phi(k + 1, z) if weights is None else weights[k]
        if k == 0 and weights is None and prediction == "data":
            # From λ_t = −inf (α_t = 0) h φ₁(−h) = 1 − e^{−h} is 1 (inf·0 as written): the DDIM step
            # x_next = (σ_next/σ_t) x + α_next x̂₀ is finite there.
            w = torch.where(torch.isinf(h), torch.ones_like(w), w)
        out = out + expand_like(c * w, x) * d
    return out


def lambda_derivatives(lams: list[Tensor], outs: list[Tensor]) -> list[Tensor]:
    """[m, m', m''] at lams[0] of the polynomial through (λ_j, m_j), newest first (Newton divided differences)."""
    terms = [outs[0]]
    if len(outs) >= 2:
        dd01 = (outs[0] - outs[1]) / expand_like(lams[0] - lams[1], outs[0])
        terms.append(dd01)
    if len(outs) >= 3:
        dd12 = (outs[1] - outs[2]) / expand_like(lams[1] - lams[2], outs[0])
        dd012 = (dd01 - dd12) / expand_like(lams[0] - lams[2], outs[0])
        terms[1] = dd01 + dd012 * expand_like(lams[0] - lams[1], outs[0])
        terms.append(2 * dd012)
    return terms


def singlestep(problem: Problem, pred: str, x: Tensor, t: Tensor, t_next: Tensor, lam: Tensor, h: Tensor,
               m0: Tensor, order: int) -> Tensor:
    """One singlestep DPM-Solver(++) step of order 1–3 from t to t_next (order − 1 calls besides m0)."""
    if order == 1:
        return exp_integrator_step(problem, pred, x, t, t_next, h, [m0])
    if order == 2:
        return dpm_solver_2(problem, pred, x, t, t_next, lam, h, m0, r1=0.5)[0]
    return dpm_solver_3(problem, pred, x, t, t_next, lam, h, m0)[0]


def dpm_solver_2(problem: Problem, pred: str, x: Tensor, t: Tensor, t_next: Tensor, lam: Tensor, h: Tensor,
                 m0: Tensor, r1: float) -> tuple[Tensor, Tensor]:
    """DPM-Solver-2 / DPM-Solver++(2S) from t to t_next (1 call at s₁ = t(λ + r₁h)): (x_next, m(s₁))."""
    s1 = time_of_log_snr(problem.sde, lam + r1 * h)
    u1 = exp_integrator_step(problem, pred, x, t, s1, r1 * h, [m0])
    m1 = model_output(problem, u1, s1, pred)
    # The difference (m₁ − m₀)/(r₁h) estimates m'; Algorithm 1 weights it by ½ h φ₁ (not h φ₂).
    w0 = h * phi(1, -h if pred == "data" else h)
    x_next = exp_integrator_step(problem, pred, x, t, t_next, h, [m0, m1 - m0], [w0, w0 / (2 * r1)])
    return x_next, m1


def dpm_solver_3(problem: Problem, pred: str, x: Tensor, t: Tensor, t_next: Tensor, lam: Tensor, h: Tensor,
                 m0: Tensor, r1: float = 1 / 3, r2: float = 2 / 3) -> tuple[Tensor, Tensor]:
    """DPM-Solver-3 (Lu et al. 2022, Algorithm 2) from t to t_next (2 calls): (x_next, m(s₁))."""
    s1 = time_of_log_snr(problem.sde, lam + r1 * h)
    s2 = time_of_log_snr(problem.sde, lam + r2 * h)
    u1 = exp_integrator_step(problem, pred, x, t, s1, r1 * h, [m0])
    m1 = model_output(problem, u1, s1, pred)
    d1 = (m1 - m0) / expand_like(r1 * h, x)  # ≈ m'
    u2 = exp_integrator_step(problem, pred, x, t, s2, r2 * h, [m0, d1])
    m2 = model_output(problem, u2, s2, pred)
    d2 = (m2 - m0) / expand_like(r2 * h, x)  # ≈ m' (the choice r₂ = ⅔ cancels the m'' error)
    return exp_integrator_step(problem, pred, x, t, t_next, h, [m0, d2]), m1


