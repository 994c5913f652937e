"""DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps") and DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models"): exponential integrators of the probability-flow
ODE in λ (formulas in :mod:`solvers.exp_integrator`), run by the multistep driver
(:mod:`solvers.multistep`). Adaptive DPM-Solver is :mod:`solvers.dpm_adaptive`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers import multistep
from solvers.base import Problem, Step, check_choice, check_positive
from solvers.denoiser import phi
from solvers.exp_integrator import exp_integrator_step, lambda_derivatives
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["DPMSolver", "DPMSolverPP", "DPMSolverPPSDE", "METHODS"]

METHODS = ("singlestep", "multistep")


# ---- DPM-Solver / DPM-Solver++ ------------------------------------------------------------------
@dataclass(frozen=True)
class DPMSolver:
    """DPM-Solver of order 1–3, singlestep or multistep, with noise or data prediction.

    Integrates: the probability-flow ODE, in λ. Order: ``solver_order`` (multistep with the default
    lower-order warm-up: min(``solver_order``, 2) asymptotically, see :mod:`solvers.multistep`).
    NFE per step: ``solver_order`` (singlestep) or 1 (multistep; + (p − 1)² with
    ``warmup='singlestep'``). SDEs: VE, VP, sub-VP.

    * singlestep, order 1: DPM-Solver-1 (Lu et al. 2022, Eq. 3.7) = DDIM.
    * singlestep, order 2: DPM-Solver-2 (Lu et al. 2022, Algorithm 1, r₁ = ½) for noise prediction;
      DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1) for data prediction.
    * singlestep, order 3: DPM-Solver-3 (Lu et al. 2022, Algorithm 2, r₁ = ⅓, r₂ = ⅔), and its
      data-prediction analogue.
    * multistep, order 2: Lu et al. 2022b, Algorithm 2 (DPM-Solver++(2M)); for noise prediction the
      same with ε̂ (DPM-Solver-2M). x_next = lin·x + c·(e^{±h} − 1)[(1 + 1/(2r)) m_i − 1/(2r) m_{i−1}].
    * multistep, order 3: the order-3 truncation of the λ-Taylor expansion above (Lu et al. 2022b,
      Eq. 9), with m' and m'' from Newton divided differences of the last three outputs (3M).

    Singlestep steps always use ``solver_order``; ``lower_order_final`` applies to multistep only.
    Intermediate times of singlestep steps come from inverting λ (the SDE's closed form, float64).

    Args:
        solver_order: 1, 2 or 3.
        method: 'singlestep' or 'multistep'.
        prediction: 'noise' (DPM-Solver) or 'data' (DPM-Solver++).
        lower_order_final: lower orders on the last steps of multistep grids of fewer than
            ``lower_order_final_below`` steps.
        lower_order_final_below: 10, as the official DPM-Solver code (``dpm_solver_pytorch.py``:
            ``lower_order_final and steps < 10``) for DPM-Solver and DPM-Solver++ alike; 15 is
            diffusers' ``DPMSolverMultistepScheduler`` (``len(timesteps) < 15``, its steps counted
            with the final one: tests/test_diffusers_live.py).
        warmup: 'lower_order' (reference codes) or 'singlestep' (multistep only; see solvers.multistep).
        variant_3m: the multistep order-3 update: 'taylor' (the λ-Taylor truncation above: weight
            h³φ₃ on m'') or 'reference' (the official DPM-Solver code's 3M, which diffusers'
            ``DPMSolverMultistepScheduler`` and k-diffusion follow: half that weight on m''; its
            D2 = h²·m''/2 is weighted by (φ₂ − ½)/h-type coefficients). The two agree to second order;
            tests/test_diffusers_live.py runs 'reference' beside diffusers and measures the difference.
    """

    solver_order: int = 3
    method: str = "singlestep"
    prediction: str = "noise"
    lower_order_final: bool = True
    warmup: str = "lower_order"
    lower_order_final_below: int = 10
    variant_3m: str = "taylor"
    batch_invariant: ClassVar[bool] = True
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="log_snr")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        multistep.check_multistep(self)
        check_choice(type(self).__name__, "method", self.method, METHODS)
        check_positive(type(self).__name__, "lower_order_final_below", self.lower_order_final_below, integer=True)
        check_choice(type(self).__name__, "variant_3m", self.variant_3m, ("taylor", "reference"))

    @property
    def order(self) -> float:
        """Global order: ``solver_order``, but at most 2 for multistep with the lower-order warm-up."""
        if self.method == "multistep" and self.warmup == "lower_order":
            return float(min(self.solver_order, 2))
        return float(self.solver_order)

    @property
    def nfe_per_step(self) -> int:
        return self.solver_order if self.method == "singlestep" else 1

    @property
    def needs(self) -> tuple[str, ...]:
        """Multistep DPM-Solver++ with the lower-order warm-up starts from λ = −inf (its first step is
        the DDIM step x = (σ_next/σ_T) x_T + α_next x̂₀): only its grid may need α_T > 0. The others
        evaluate σ_ve or noise-prediction weights at T."""
        starts_at_zero = self.prediction == "data" and self.method == "multistep" and self.warmup == "lower_order"
        return () if starts_at_zero else ("alpha_T",)

    def warmup_nfe(self, n: int) -> int:
        return 0 if self.method == "singlestep" else multistep.warmup_nfe(self, n)

    check = multistep.check
    init = multistep.init
    correct = multistep.no_correction

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        return multistep.step(self, problem, x, t, t_next, state, noise, singlestep_only=self.method == "singlestep")

    def update(self, problem, x, t, t_next, lams, outs, lam_next, noise):
        del noise
        h = lam_next - lams[0]
        if len(outs) == 2:  # DPM-Solver++(2M), Algorithm 2: weight ½ h φ₁ on h·m'.
            w0 = h * phi(1, -h if self.prediction == "data" else h)
            terms = [outs[0], outs[0] - outs[1]]
            return exp_integrator_step(problem, self.prediction, x, t, t_next, h, terms,
                                       [w0, w0 * 0.5 * h / (lams[0] - lams[1])])
        terms = lambda_derivatives(lams, outs)
        if len(outs) == 3 and self.variant_3m == "reference":  # the official 3M: half the Taylor weight on m''
            z = -h if self.prediction == "data" else h
            weights = [h ** (k + 1) * phi(k + 1, z) for k in range(3)]
            return exp_integrator_step(problem, self.prediction, x, t, t_next, h, terms, weights[:2] + [weights[2] / 2])
        return exp_integrator_step(problem, self.prediction, x, t, t_next, h, terms)


@dataclass(frozen=True)
class DPMSolverPP(DPMSolver):
    """DPM-Solver++ (Lu et al. 2022b): DPM-Solver with data prediction x̂₀, multistep by default.

    Integrates: the probability-flow ODE, in λ. Order: ``solver_order`` (2: DPM-Solver++(2M),
    Algorithm 2; 3: 3M, of order 3 with ``warmup='singlestep'`` and asymptotically 2 with the
    reference codes' lower-order warm-up). NFE per step: 1 (multistep) or ``solver_order``
    (singlestep: 2S, Algorithm 1). SDEs: VE, VP, sub-VP. Options as :class:`DPMSolver`.
    """

    solver_order: int = 2
    method: str = "multistep"
    prediction: str = "data"


@dataclass(frozen=True)
class DPMSolverPPSDE:
    """SDE-DPM-Solver++ (Lu et al. 2022b, §5/App.: SDE-DPM-Solver++1 and ++(2M)), data prediction.

    The reverse SDE written in λ has the linear part's exact solution
    x_next = (σ_next/σ_t) e^{−h} x + 2 α_next ∫ e^{−2(λ_next − λ)} x̂₀(λ) dλ + σ_next √(1 − e^{−2h}) z;
    expanding x̂₀ in λ gives weights 2 h^{k+1} φ_{k+1}(−2h) (k = 0: 1 − e^{−2h}); order 2 takes x̂₀'
    from the last two outputs (multistep).

    Integrates: the reverse SDE. Order: strong 1 (declared 1 for both orders; ``solver_order`` = 2
    only reduces the drift's error). NFE per step: 1. SDEs: VE, VP, sub-VP. One noise draw per step.

    Args:
        solver_order: 1, 2 or 3 (3: k-diffusion's ``sample_dpmpp_3m_sde``, whose weight on x̂₀'' is
            half the expansion's, as the official DPM-Solver 3M: ``variant_3m``).
        lower_order_final: order 1 on the last step of grids of fewer than 15 steps, as diffusers'
            ``DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++')``, the reference code of
            this variant (the official DPM-Solver code has no SDE solver).
        solver_type: the order-2 update's x̂₀' term: 'heun' (the expansion above, 2h²φ₂(−2h)·x̂₀';
            diffusers' and k-diffusion's ``solver_type='heun'``) or 'midpoint' (½(1 − e^{−2h})·h·x̂₀',
            the default of diffusers and of k-diffusion's ``sample_dpmpp_2m_sde``). Order 3 uses the
            expansion's x̂₀' weight, as k-diffusion's 3M SDE.
        variant_3m: 'reference' (k-diffusion, default) or 'taylor' (the full expansion weight on x̂₀'').
    """

    solver_order: int = 2
    prediction: str = "data"
    lower_order_final: bool = True
    warmup: str = "lower_order"
    solver_type: str = "heun"
    variant_3m: str = "reference"

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    lower_order_final_below: ClassVar[float] = 15  # diffusers' DPMSolverMultistepScheduler
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # f(T), g²(T) or σ_ve(T): finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="log_snr")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        multistep.check_multistep(self, orders=(1, 2, 3), predictions=("data",), warmups=("lower_order",))
        check_choice(type(self).__name__, "solver_type", self.solver_type, ("heun", "midpoint"))
        check_choice(type(self).__name__, "variant_3m", self.variant_3m, ("taylor", "reference"))

    check = multistep.check
    init = multistep.init
    step = multistep.step
    correct = multistep.no_correction

    def update(self, problem, x, t, t_next, lams, outs, lam_next, noise):
        h = lam_next - lams[0]
        sigma_t = problem.marginal(t)[1]
        alpha_n, sigma_n = problem.marginal(t_next)
        terms = lambda_derivatives(lams, outs)
        x_next = expand_like(sigma_n / sigma_t * torch.exp(-h), x) * x
        for k, d in enumerate(terms):
            if k == 1 and self.solver_type == "midpoint" and len(terms) == 2:
                weight = -torch.expm1(-2 * h) * h / 2
            else:
                weight = 2 * h ** (k + 1) * phi(k + 1, -2 * h)
            if k == 2 and self.variant_3m == "reference":
                weight = weight / 2
            x_next = x_next + expand_like(alpha_n * weight, x) * d
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        return x_next + expand_like(sigma_n * (-torch.expm1(-2 * h)).sqrt(), x) * z


