"""DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"): the
multistep exponential integrator with the noise prediction ε̂ extrapolated by a polynomial through the
last p outputs (the paper's Adams–Bashforth family, §4), run by the multistep driver (:mod:`solvers.multistep`).
The polynomial's variable (``basis``) is log ρ as diffusers' ``DEISMultistepScheduler``
(``algorithm_type='deis'``, ``solver_type='logrho'``), t (the paper's tAB) or ρ (ρAB), ρ = σ_t/α_t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from models.sde import expand_like
from solvers import multistep
from solvers.base import check_choice
from solvers.denoiser import time_of_log_snr, time_of_sigma
from solvers.exp_integrator import exp_integrator_step, lambda_derivatives
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["DEIS", "BASES", "deis_coefficients"]

BASES = ("log_rho", "t", "rho")
QUADRATURE_NODES = 32  # Gauss–Legendre in log ρ: the integrands are smooth there (near machine precision)
_GAUSS = tuple(torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(QUADRATURE_NODES))


def deis_coefficients(sde, nodes: list[Tensor], rho: Tensor, rho_next: Tensor, basis: str) -> list[Tensor]:
    """∫_{ρ}^{ρ_next} ℓ_j(v(ρ')) dρ' for each Lagrange basis polynomial ℓ_j through ``nodes`` (v_j, newest
    first, [B] each) in the variable v = t (``basis='t'``) or v = ρ ('rho'), [B] each.

    Computed by Gauss–Legendre quadrature (:data:`QUADRATURE_NODES` nodes) in u = log ρ, where dρ = e^u du
    and t(u) is smooth on every path (the reference, qsh-zh/deis ``get_one_coef_per_step_fn``, sums the
    integrand in t at 10 000 left end points, an O(1/10 000) rule; tests/test_deis.py compares both)."""
    xi, w = (a.to(rho.device) for a in _GAUSS)
    lo, hi = torch.log(rho), torch.log(rho_next)  # [B]
    u = 0.5 * (hi + lo) + 0.5 * (hi - lo) * xi[:, None]  # [K, B]
    weight = 0.5 * (hi - lo) * w[:, None] * torch.exp(u)  # dρ = e^u du
    v = time_of_sigma(sde, torch.exp(u)) if basis == "t" else torch.exp(u)
    out = []
    for j, v_j in enumerate(nodes):
        ell = torch.ones_like(v)
        for m, v_m in enumerate(nodes):
            if m != j:
                ell = ell * (v - v_m) / (v_j - v_m)
        out.append((weight * ell).sum(0))
    return out


@dataclass(frozen=True)
class DEIS:
    """DEIS-AB-p: x_next/α_next = x/α_t + ∫_{ρ_t}^{ρ_next} P dρ, with ρ = σ/α (σ_ve) and P the Lagrange
    polynomial through the last p noise predictions ε̂_j: the exponential integrator in ρ with ε̂
    extrapolated by Adams–Bashforth (Zhang & Chen 2023, §4, Eq. 14–15). ``basis`` is P's variable:

    * 'log_rho' (default): P in log ρ, diffusers' choice; the coefficients ∫ ℓ_j(log ρ) dρ are exact (below);
    * 't': P in t, the paper's tAB-p (qsh-zh/deis ``get_sampler_t_ab``): the paper writes the coefficient
      as ∫ Ψ(t_next, τ) ½ g²(τ)/σ_τ ℓ_j(τ) dτ, which is α_next ∫ ℓ_j(τ) dρ(τ) on every Gaussian path
      (½ g²/σ = α dρ/dt, Ψ = α_next/α_τ);
    * 'rho': P in ρ, the paper's ρAB-p (``get_sampler_rho_ab``).

    For 't' and 'rho' the coefficients are integrated numerically (:func:`deis_coefficients`), once per
    step; p = 1 is DDIM for every basis (ℓ₀ = 1: the coefficient is ρ_next − ρ_t).

    Since log ρ = −λ and dρ = −e^{−λ} dλ, this is the noise-prediction exponential integrator
    x_next = (α_next/α_t) x − σ_next Σ_k h^{k+1} φ_{k+1}(h) P^{(k)}(λ_t), with the λ-derivatives of the
    same polynomial (:func:`solvers.exp_integrator.lambda_derivatives`), which is how it is computed
    here. p = 1 is DDIM; a p = 3 step is a multistep DPM-Solver-3 step with noise prediction, while
    p = 2 differs from DPM-Solver-2M (the exact h²φ₂(h) weight on ε̂', where 2M takes ½ h φ₁(h)).

    The model output is ε̂ = −σ s; diffusers converts the network's output to x̂₀ and back to
    ε̂ = (x − α x̂₀)/σ (the same ε̂ without thresholding, which the harness does not apply).

    Integrates: the probability-flow ODE, in λ (ε̂ polynomial in ``basis``). Order: ``solver_order`` with
    ``warmup='singlestep'``; with the reference's lower-order warm-up (first step first order, local
    error O(h²)) min(``solver_order``, 2) asymptotically, as DPM-Solver++(3M) (fitted in
    tests/test_deis.py). NFE per step: 1 (+ (p − 1)² with ``warmup='singlestep'``). SDEs: VE, VP, sub-VP.
    Reference: diffusers 0.42.1, ``schedulers/scheduling_deis_multistep.py`` (``DEISMultistepScheduler``),
    run side by side in tests/test_deis.py (``basis='log_rho'``); qsh-zh/deis at commit a30709f,
    ``th_deis/multistep.py`` and ``th_deis/sampler.py`` (read, not copied: the coefficients' formula and
    its lower-order warm-up; ``lower_order_final=False`` is its choice), tested on known answers in
    tests/test_deis.py (``basis='t'``, ``'rho'``).

    Args:
        solver_order: p = 1, 2 or 3 (diffusers' default 2; 3 recommended there for unconditional sampling).
        lower_order_final: order ≤ steps left on the last two steps of grids of fewer than
            ``lower_order_final_below`` = 15 steps, as diffusers (``len(self.timesteps) < 15``; its
            last step goes to the first trained level, ``final_sigma='sigma_min'`` here, so its timesteps
            are the grid's steps).
        warmup: 'lower_order' (diffusers, qsh-zh/deis) or 'singlestep' (see :mod:`solvers.multistep`).
        basis: 'log_rho', 't' (tAB) or 'rho' (ρAB), above.
    """

    solver_order: int = 3
    prediction: str = "noise"
    lower_order_final: bool = True
    warmup: str = "lower_order"
    basis: str = "log_rho"

    nfe_per_step: ClassVar[int] = 1
    lower_order_final_below: ClassVar[int] = 15  # diffusers' DEISMultistepScheduler
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # ε̂ = −σ s and α_next/α_t: finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="log_snr")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        multistep.check_multistep(self, predictions=("noise",))
        check_choice(type(self).__name__, "basis", self.basis, BASES)

    @property
    def order(self) -> float:
        """``solver_order``, but at most 2 with the lower-order warm-up (its first step is first order)."""
        p = self.solver_order
        return float(p if self.warmup == "singlestep" else min(p, 2))

    check = multistep.check
    init = multistep.init
    step = multistep.step
    warmup_nfe = multistep.warmup_nfe
    correct = multistep.no_correction

    def update(self, problem, x, t, t_next, lams, outs, lam_next, noise):
        del noise
        if self.basis == "log_rho":
            # The interpolating polynomial of ε̂ in λ = −log ρ, integrated exactly (class docstring).
            h = lam_next - lams[0]
            return exp_integrator_step(problem, "noise", x, t, t_next, h, lambda_derivatives(lams, outs))
        # tAB / ρAB: x_next = (α_next/α_t) x + α_next Σ_j ε̂_j ∫ ℓ_j dρ, the polynomial's nodes in t or ρ = e^{−λ}.
        rhos = [torch.exp(-lam) for lam in lams]
        nodes = [time_of_log_snr(problem.sde, lam) for lam in lams] if self.basis == "t" else rhos
        alpha_t, alpha_n = problem.marginal(t)[0], problem.marginal(t_next)[0]
        coefs = deis_coefficients(problem.sde, nodes, rhos[0], torch.exp(-lam_next), self.basis)
        x_next = expand_like(alpha_n / alpha_t, x) * x
        for c, eps in zip(coefs, outs, strict=True):
            x_next = x_next + expand_like(alpha_n * c, x) * eps
        return x_next
