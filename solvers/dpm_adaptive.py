"""Adaptive DPM-Solver (Lu et al. 2022, §4.2 and Algorithm 4 of App. C): an embedded pair of
singlestep DPM-Solvers stepping in λ, under the adaptive controller of :mod:`solvers.adaptive`
(exponent 1/k), per sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from solvers.adaptive import IntegralController
from solvers.base import Problem, Step, check_choice
from solvers.denoiser import log_snr, phi, time_of_log_snr
from solvers.exp_integrator import PREDICTIONS, dpm_solver_2, dpm_solver_3, exp_integrator_step, model_output
from solvers.multistep import check_order

__all__ = ["DPMSolverAdaptive"]


@dataclass(frozen=True)
class DPMSolverAdaptive:
    """DPM-Solver with adaptive step size (Lu et al. 2022, §4.2 and Algorithm 4 of App. C), per sample.

    Each attempt from λ_s with step h (in λ) computes an embedded pair sharing its evaluations:
    DPM-Solver-12 (``solver_order=2``: DPM-Solver-1 and -2 with r₁ = ½, 2 calls) or DPM-Solver-23
    (``solver_order=3``: DPM-Solver-2 with r₁ = ⅓ and DPM-Solver-3, 3 calls). With
    δ = max(atol, rtol · max(|x_lower|, |x_prev|)) elementwise and E = RMS((x_higher − x_lower)/δ)
    per sample, the step is accepted if E ≤ 1 (x ← x_higher, x_prev ← x_lower), and in all cases
    h ← θ h E^{−1/solver_order}, capped at λ_eps − λ_s. Each sample has its own λ and h (the
    reference code shares one h across the batch); only running samples are evaluated.

    Integrates: the probability-flow ODE, in λ. Order: ``solver_order`` (error estimate of order
    ``solver_order − 1``). NFE per attempt: ``solver_order`` (+1 for ``denoise='tweedie'``);
    ``stats.nfe`` counts batch calls, ``stats.nfe_per_sample`` each sample's. SDEs: VE, VP, sub-VP.

    Args:
        solver_order: 2 (DPM-Solver-12) or 3 (DPM-Solver-23, default).
        prediction: 'noise' (paper) or 'data'.
    The controller's defaults are the paper's for images: rtol 0.05, atol 0.0078 on [−1, 1] data,
    θ = 0.9, exponent 1/solver_order, h_init (in λ) 0.05, max_steps 1000; other options as
    :class:`solvers.adaptive.IntegralController`.
    """

    solver_order: int = 3
    prediction: str = "noise"

    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # f(T), g²(T) or σ_ve(T): finite only where α_T > 0
    controller: ClassVar[IntegralController] = IntegralController(rtol=0.05, atol=0.0078, exponent=None,
                                                                   h_init=0.05, max_steps=1000)
    end_tol: ClassVar[float] = 0.0  # the last step lands exactly on eps

    def __post_init__(self) -> None:
        check_order(type(self).__name__, self.solver_order, (2, 3))
        check_choice(type(self).__name__, "prediction", self.prediction, PREDICTIONS)

    @property
    def order(self) -> float:
        return float(self.solver_order)

    @property
    def nfe_per_step(self) -> int:
        return self.solver_order

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def span(self, problem: Problem, t: Tensor) -> Tensor:
        return log_snr(problem.sde, torch.full_like(t, problem.sde.eps)) - log_snr(problem.sde, t)

    def advance(self, problem: Problem, t: Tensor, h: Tensor, last: Tensor) -> Tensor:
        t_next = time_of_log_snr(problem.sde, log_snr(problem.sde, t) + h).to(t.dtype)
        return torch.where(last, torch.full_like(t, problem.sde.eps), t_next)

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise,
             h: Tensor | None = None) -> Step:
        del noise  # deterministic
        pred, lam = self.prediction, log_snr(problem.sde, t)
        h = log_snr(problem.sde, t_next) - lam if h is None else h.to(lam.dtype)
        m0 = model_output(problem, x, t, pred)
        if self.solver_order == 2:
            x_lower = exp_integrator_step(problem, pred, x, t, t_next, h, [m0])
            x_higher, _ = dpm_solver_2(problem, pred, x, t, t_next, lam, h, m0, r1=0.5)
        else:
            x_higher, m1 = dpm_solver_3(problem, pred, x, t, t_next, lam, h, m0)
            # DPM-Solver-2 with r₁ = ⅓ reuses m(s₁) of the third-order step.
            w0 = h * phi(1, -h if pred == "data" else h)
            x_lower = exp_integrator_step(problem, pred, x, t, t_next, h, [m0, m1 - m0], [w0, w0 * 1.5])
        return Step(x_higher, x_higher, state, error=x_higher - x_lower, x_check=x_lower)
