"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"): a multistep exponential integrator (UniP) plus a corrector (UniC) that reuses the
model evaluation at the new point, so it raises the order by one at no extra NFE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers import multistep
from solvers.base import Problem, check_choice
from solvers.denoiser import phi
from solvers.exp_integrator import exp_integrator_step
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["UniPC", "UNIPC_VARIANTS"]

UNIPC_VARIANTS = ("bh1", "bh2")


def unified_update(problem: Problem, prediction: str, variant: str, x: Tensor, t: Tensor, t_next: Tensor,
                   lam: Tensor, lam_next: Tensor, m0: Tensor, others: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The update shared by UniP and UniC (Zhao et al. 2023, Algorithms 1–2; Eq. 8 and 9).

    x_next = [first-order step with m0] + c · B(h) Σ_m a_m D_m / r_m, with D_m = m_m − m0 and
    r_m = (λ_m − λ)/h for the other outputs (λ_m, m_m) (older ones for UniP; older ones and the new
    point, r = 1, for UniC), c = α_next (data prediction) or −σ_next (noise prediction). The a_m solve
    Σ_m a_m r_m^{k−1} = k! h φ_{k+1}(±h) / B(h), k = 1..K (the order conditions), except that a single
    coefficient is set to ½, the limit h → 0, as the paper does. B(h) = h ('bh1') or e^{±h} − 1 ('bh2').
    """
    h = lam_next - lam
    z = -h if prediction == "data" else h
    x_next = exp_integrator_step(problem, prediction, x, t, t_next, h, [m0])
    if not others:
        return x_next
    B_h = h if variant == "bh1" else h * phi(1, z)  # [B]
    r = torch.stack([(lam_m - lam) / h for lam_m, _ in others], dim=1)  # [B, K]
    K = r.shape[1]
    if K == 1:
        a = torch.full_like(r, 0.5)
    else:
        R = torch.stack([r**k for k in range(K)], dim=1)  # [B, K (k), K (m)]
        g = torch.stack([math.factorial(k) * h * phi(k + 1, z) / B_h for k in range(1, K + 1)], dim=1)
        a = torch.linalg.solve(R, g)  # [B, K]
    coef = problem.marginal(t_next)[0] if prediction == "data" else -problem.marginal(t_next)[1]
    for j, (_, m_j) in enumerate(others):
        x_next = x_next + expand_like(coef * B_h * a[:, j] / r[:, j], x) * (m_j - m0)
    return x_next


@dataclass(frozen=True)
class UniPC:
    """UniPC-p: the predictor UniP-p (p − 1 previous outputs) and the corrector UniC-p.

    Step i: evaluate the model at the predicted state x̃_i (1 NFE), correct x̃_i with UniC using that
    output and the history, keep the output (the corrected state is not re-evaluated, Zhao et al.
    2023, §3.2), then predict x̃_{i+1} with UniP from the corrected state. No corrector follows the
    last predictor (it would cost one more evaluation).

    Integrates: the probability-flow ODE, in λ. Order: ``solver_order`` + 1 with the corrector,
    ``solver_order`` without (with the default lower-order warm-up at most 3, resp. 2, see
    :attr:`order`). NFE per step: 1 (+ (p − 1)² with ``warmup='singlestep'``, whose steps are
    singlestep DPM-Solver-p and are not corrected). SDEs: VE, VP, sub-VP. Source: Zhao et al. 2023,
    Algorithms 1 (UniC) and 2 (UniP), with B(h) of §3.3 ('bh1': h, 'bh2': e^h − 1).

    Args:
        solver_order: p = 1, 2 or 3 (predictor order; the paper's default is 2, i.e. UniPC-2 of order 3).
        variant: 'bh1' (paper's choice for unconditional sampling at very few steps) or 'bh2'.
        use_corrector: apply UniC (default True).
        prediction: 'data' (default, as the paper's image results) or 'noise'.
        lower_order_final: order ≤ steps left on the last steps of every grid, as the official UniPC
            code (``uni_pc.py``: ``if lower_order_final: step_order = min(order, steps + 1 - step)``).
        warmup: 'lower_order' (the paper's code) or 'singlestep' (see :mod:`solvers.multistep`).
    """

    solver_order: int = 2
    prediction: str = "data"
    lower_order_final: bool = True
    warmup: str = "lower_order"
    variant: str = "bh2"
    use_corrector: bool = True

    nfe_per_step: ClassVar[int] = 1
    lower_order_final_below: ClassVar[float] = math.inf  # every grid, as the official UniPC code
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # f(T), g²(T) or σ_ve(T): finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="log_snr")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        multistep.check_multistep(self)
        name = type(self).__name__
        check_choice(name, "variant", self.variant, UNIPC_VARIANTS)
        multistep.check_bool(name, "use_corrector", self.use_corrector)

    @property
    def order(self) -> float:
        """p + 1 with the corrector (p without); with the lower-order warm-up at most 3 (2 without):
        the first step, UniP-1 + UniC-1, has local error O(h³)."""
        p = self.solver_order + self.use_corrector
        return float(p if self.warmup == "singlestep" else min(p, 2 + self.use_corrector))

    check = multistep.check
    init = multistep.init
    step = multistep.step
    warmup_nfe = multistep.warmup_nfe

    def update(self, problem, x, t, t_next, lams, outs, lam_next, noise):
        del noise
        # UniP: the older outputs (λ_{i−m}, m_{i−m}), m = 1..p−1.
        return unified_update(problem, self.prediction, self.variant, x, t, t_next, lams[0], lam_next, outs[0],
                              list(zip(lams[1:], outs[1:])))

    def correct(self, problem, x, out, memo):
        if memo is None or not self.use_corrector:
            return x
        # UniC: redo the previous step from its corrected start, with the new output at r = 1.
        x_prev, t_prev, t, lams, outs, lam = memo
        others = list(zip(lams[1:], outs[1:])) + [(lam, out)]
        return unified_update(problem, self.prediction, self.variant, x_prev, t_prev, t, lams[0], lam, outs[0],
                              others)
