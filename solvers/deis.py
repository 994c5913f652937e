"""DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"): the
multistep exponential integrator with the noise prediction ε̂ extrapolated by a polynomial through the
last p outputs (the paper's Adams–Bashforth family, §4), in log ρ as diffusers' ``DEISMultistepScheduler``
(``algorithm_type='deis'``, ``solver_type='logrho'``), run by the multistep driver (:mod:`solvers.multistep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from solvers import multistep
from solvers.exp_integrator import exp_integrator_step, lambda_derivatives
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["DEIS"]


@dataclass(frozen=True)
class DEIS:
    """DEIS-AB-p in log ρ: x_next/α_next = x/α_t + ∫_{ρ_t}^{ρ_next} P(log ρ) dρ, with ρ = σ/α (σ_ve) and
    P the Lagrange polynomial through the last p noise predictions (log ρ_j, ε̂_j): the exponential
    integrator in ρ with ε̂ extrapolated by Adams–Bashforth (Zhang & Chen 2023, §4), with diffusers'
    choice of log ρ as the interpolation variable; the coefficients are the exact integrals ∫ ℓ_j(log ρ) dρ.

    Since log ρ = −λ and dρ = −e^{−λ} dλ, this is the noise-prediction exponential integrator
    x_next = (α_next/α_t) x − σ_next Σ_k h^{k+1} φ_{k+1}(h) P^{(k)}(λ_t), with the λ-derivatives of the
    same polynomial (:func:`solvers.exp_integrator.lambda_derivatives`), which is how it is computed
    here. p = 1 is DDIM; a p = 3 step is a multistep DPM-Solver-3 step with noise prediction, while
    p = 2 differs from DPM-Solver-2M (the exact h²φ₂(h) weight on ε̂', where 2M takes ½ h φ₁(h)).

    The model output is ε̂ = −σ s; diffusers converts the network's output to x̂₀ and back to
    ε̂ = (x − α x̂₀)/σ (the same ε̂ without thresholding, which the harness does not apply).

    Integrates: the probability-flow ODE, in λ (ε̂ polynomial in log ρ). Order: ``solver_order`` with
    ``warmup='singlestep'``; with the reference's lower-order warm-up (first step first order, local
    error O(h²)) min(``solver_order``, 2) asymptotically, as DPM-Solver++(3M) (fitted in
    tests/test_deis.py). NFE per step: 1 (+ (p − 1)² with ``warmup='singlestep'``). SDEs: VE, VP, sub-VP.
    Reference: diffusers 0.42.1, ``schedulers/scheduling_deis_multistep.py`` (``DEISMultistepScheduler``),
    run side by side in tests/test_deis.py; the paper's other variants (polynomials in t, ``tAB``, or ρ,
    ``ρAB``, with numerically integrated coefficients, qsh-zh/deis) are not implemented.

    Args:
        solver_order: p = 1, 2 or 3 (diffusers' default 2; 3 recommended there for unconditional sampling).
        lower_order_final: order ≤ steps left on the last two steps of grids of fewer than
            ``lower_order_final_below`` = 15 steps, as diffusers (``len(self.timesteps) < 15``; its
            last step goes to the first trained level, ``final_sigma='sigma_min'`` here, so its timesteps
            are the grid's steps).
        warmup: 'lower_order' (diffusers) or 'singlestep' (see :mod:`solvers.multistep`).
    """

    solver_order: int = 3
    prediction: str = "noise"
    lower_order_final: bool = True
    warmup: str = "lower_order"

    nfe_per_step: ClassVar[int] = 1
    lower_order_final_below: ClassVar[int] = 15  # diffusers' DEISMultistepScheduler
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # ε̂ = −σ s and α_next/α_t: finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="log_snr")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        multistep.check_multistep(self, predictions=("noise",))

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
        # The interpolating polynomial of ε̂ in λ = −log ρ, integrated exactly (class docstring).
        return exp_integrator_step(problem, "noise", x, t, t_next, lam_next - lams[0], lambda_derivatives(lams, outs))
