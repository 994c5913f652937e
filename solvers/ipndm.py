"""iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator", §4 and
App. B): PNDM's pseudo-linear-multistep update with a lower-order warm start instead of PNDM's
Runge–Kutta one — the multistep baseline of DEIS and later fast-sampler papers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from models.sde import expand_like
from solvers import multistep
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["IPNDM"]

# Adams–Bashforth weights on ε̂_i, ε̂_{i−1}, … for uniform steps (Zhang & Chen 2023, Eq. 30).
AB_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@dataclass(frozen=True)
class IPNDM:
    """iPNDM: the DDIM step x_next = α_next (x/α_t + (σ_ve,next − σ_ve,t) ε') with ε' the
    Adams–Bashforth combination of the last ``solver_order`` noise predictions ε̂ = −σ_t s.

    Integrates: the probability-flow ODE in σ_ve = σ_t/α_t (there dx_ve/dσ_ve = ε̂). Order: 2 on the
    schedules here (the weights are those of uniform steps and the warm-up starts at order 1: the
    fitted order is in tests/test_new_samplers.py). NFE per step: 1. SDEs: VE, VP, sub-VP. Warm-up:
    order min(p, i + 1) at step i; no lower-order final steps (the reference iPNDM keeps order p to
    the end: ``lower_order_final=False`` by default).

    Args:
        solver_order: 1–4 (default 4, the paper's).
    """

    solver_order: int = 4
    prediction: str = "noise"
    lower_order_final: bool = False
    warmup: str = "lower_order"

    nfe_per_step: ClassVar[int] = 1
    lower_order_final_below: ClassVar[float] = math.inf
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # f(T), g²(T) or σ_ve(T): finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="karras")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        multistep.check_multistep(self, orders=(1, 2, 3, 4), predictions=("noise",), warmups=("lower_order",))

    @property
    def order(self) -> float:
        return 1.0 if self.solver_order == 1 else 2.0

    check = multistep.check
    init = multistep.init
    step = multistep.step
    warmup_nfe = multistep.warmup_nfe
    correct = multistep.no_correction

    def update(self, problem, x, t, t_next, lams, outs, lam_next, noise):
        del lams, lam_next, noise
        eps = sum(w * e for w, e in zip(AB_WEIGHTS[len(outs)], outs))
        (alpha, sigma), (alpha_n, sigma_n) = problem.marginal(t), problem.marginal(t_next)
        x_ve = x / expand_like(alpha, x) + expand_like(sigma_n / alpha_n - sigma / alpha, x) * eps
        return expand_like(alpha_n, x) * x_ve
