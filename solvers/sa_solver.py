"""SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion
Models"): a multistep predictor–corrector for the family of reverse SDEs with stochasticity τ,

    dx = [f x − ½(1 + τ²) g² ∇log p] dt + τ g dw̄      (τ = 0: the probability-flow ODE; τ = 1: the reverse SDE),

solved in λ with the linear part exact and the model output replaced by its Lagrange polynomial through
past outputs (the stochastic Adams–Bashforth predictor, SA-Predictor) or through past outputs and the
output at the predicted point (the stochastic Adams–Moulton corrector, SA-Corrector), integrated exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers import multistep
from solvers.base import Problem, Step, check_choice
from solvers.denoiser import log_snr, phi, ve_sigma
from solvers.exp_integrator import model_output
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["SASolver", "SAState", "sa_step", "VARIANTS"]

VARIANTS = ("few_steps", "more_steps")


def _quadrature(h: Tensor, r: Tensor, z: Tensor) -> Tensor:
    """Weights q [B, P] with Σ_k q_k r_k^m = m! h φ_{m+1}(z), m = 0 … P − 1: ∫₀^h e^{(z/h)(h−u)} ℓ_k(u) du / h^0
    for the Lagrange basis ℓ_k of the nodes u_k = r_k h (r [B, P])."""
    P = r.shape[1]
    g = torch.stack([math.factorial(m) * h * phi(m + 1, z) for m in range(P)], dim=1)  # [B, P]
    if P == 1:
        return g
    R = torch.stack([r**m for m in range(P)], dim=1)  # [B, P (m), P (k)]
    return torch.linalg.solve(R, g)


def sa_step(problem: Problem, prediction: str, x: Tensor, t: Tensor, t_next: Tensor, lam: Tensor, lam_next: Tensor,
            lams: list[Tensor], outs: list[Tensor], tau: Tensor, z: Tensor, modified_order_2: bool) -> Tensor:
    """x at λ = ``lam`` → λ_next with the polynomial through (``lams``, ``outs``) (newest first), stochasticity
    ``tau`` [B] and the standard normal ``z``; with h = λ_next − λ and c = 1 + τ²:

    data prediction x̂₀:   x_next = e^{−τ²h}(σ_next/σ) x + c α_next Σ_k q_k x̂₀_k + σ_next √(1 − e^{−2τ²h}) z,
                          q: the quadrature of e^{−c(h−u)} on the nodes (Σ_k q_k r_k^m = m! h φ_{m+1}(−ch));
    noise prediction ε̂:   x_next = (α_next/α) x − c σ_next Σ_k q_k ε̂_k + τ σ_next √(e^{2h} − 1) z,
                          q: the quadrature of e^{h−u} (m! h φ_{m+1}(h)).

    ``modified_order_2`` (data prediction, two nodes): adds c α_next h² (½ − φ₂(−ch)) (m_0 − m_1)/(λ_0 − λ_1),
    an O(h³) term of the official code's few-step variant and of diffusers (module docstring of SASolver).
    """
    h = lam_next - lam
    c = 1 + tau**2
    alpha, sigma = problem.marginal(t)
    alpha_n, sigma_n = problem.marginal(t_next)
    r = torch.stack([(lam_k - lam) / h for lam_k in lams], dim=1)  # [B, P]
    if prediction == "data":
        q = c[:, None] * alpha_n[:, None] * _quadrature(h, r, -c * h)
        lin = torch.exp(-(tau**2) * h) * sigma_n / sigma
        std = sigma_n * (-torch.expm1(-2 * tau**2 * h)).sqrt()
    else:
        q = -c[:, None] * sigma_n[:, None] * _quadrature(h, r, h)
        lin = alpha_n / alpha
        std = tau * sigma_n * torch.expm1(2 * h).sqrt()
    x_next = expand_like(lin, x) * x + expand_like(std, x) * z
    for k, out in enumerate(outs):
        x_next = x_next + expand_like(q[:, k], x) * out
    if modified_order_2 and prediction == "data" and len(outs) == 2:
        extra = c * alpha_n * h**2 * (0.5 - phi(2, -c * h)) / (lams[0] - lams[1])
        x_next = x_next + expand_like(extra, x) * (outs[0] - outs[1])
    return x_next


@dataclass
class SAState:
    """The grid's λ [n + 1, B], the next step's index, past outputs (newest first), and what the corrector
    of the next step needs of this one: (x, t, λ, noise z, τ, corrector order)."""

    lams: Tensor
    i: int = 0
    lam_past: list = field(default_factory=list)
    out_past: list = field(default_factory=list)
    memo: tuple | None = None


@dataclass(frozen=True)
class SASolver:
    """SA-Solver: SA-Predictor of order p, SA-Corrector of order c, stochasticity τ(σ).

    Step i (1 NFE): evaluate the model at the predicted x_i; correct x_i with the SA-Corrector from the
    previous step's start, through the previous outputs and this one, with that step's noise z and τ (the
    corrected state is not re-evaluated); draw z_i; predict x_{i+1} with the SA-Predictor from the last p
    outputs. No corrector follows the last predictor. Orders: the predictor's min(p, i + 1), the
    corrector's min(c, i + 2) (warm-up), and with ``lower_order_final`` at most the steps left (+1 for the
    corrector), as diffusers. τ(σ) = ``tau`` where ``tau_sigma_min`` ≤ σ_ve ≤ ``tau_sigma_max`` at the
    step's start, else 0 (diffusers' ``tau_func``, given here in σ instead of the timestep).

    Integrates: the reverse SDE with stochasticity τ (τ = 0: the probability-flow ODE), in λ. Order: with
    τ = 0, min(c, p + 1), at most 3 (the first step is corrected to order 2: local error O(h³)) and at most
    2 with ``lower_order_final`` (its last step is an uncorrected first-order predictor); fitted in
    tests/test_sa_solver.py. With τ > 0: 1 (declared; stochastic). NFE per step: 1. SDEs: any path with
    α_T > 0. One noise draw per step (``noise.increment``), also where τ = 0.

    Reference: diffusers 0.42.1 ``schedulers/scheduling_sasolver.py`` (``SASolverScheduler``), run side by
    side in tests/test_sa_solver.py; scxue/SA-Solver ``sa_solver.py`` (commit 876f3dd, read, not copied).
    diffusers always takes the official few-step variant's order-2 modification (``variant='few_steps'``;
    'more_steps': the official ``sample_more_steps``, without it), evaluates τ at the step's start (the
    official code at its end, and takes its last step with τ = 0), and computes the coefficients as
    monomial integrals ∫ e^{cλ} λ^k dλ in absolute λ (here: the same integrals in the step's own
    variable, :func:`sa_step`).

    Args:
        predictor_order: p = 1 … 4 (diffusers' default 2; the paper's 3 for unconditional sampling).
        corrector_order: c = 1 … 4 (diffusers' default 2; the paper's 4 for unconditional sampling).
        tau: τ ≥ 0 (diffusers' default: 1 on timesteps 200–800 of its table).
        tau_sigma_min, tau_sigma_max: the σ_ve interval where τ applies (default everywhere).
        prediction: 'data' (diffusers' default, ``algorithm_type='data_prediction'``) or 'noise'.
        lower_order_final: diffusers' (on every grid).
        variant: 'few_steps' (diffusers, default) or 'more_steps' (see above).
    """

    predictor_order: int = 2
    corrector_order: int = 2
    tau: float = 1.0
    tau_sigma_min: float = 0.0
    tau_sigma_max: float = math.inf
    prediction: str = "data"
    lower_order_final: bool = True
    variant: str = "few_steps"

    nfe_per_step: ClassVar[int] = 1
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="log_snr")
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("predictor_order", "corrector_order"):
            v = getattr(self, key)
            if isinstance(v, bool) or v not in (1, 2, 3, 4):
                raise ValueError(f"{name}: invalid {key}={v!r}; expected one of: 1, 2, 3, 4")
        for key in ("tau", "tau_sigma_min", "tau_sigma_max"):
            v = getattr(self, key)
            if not isinstance(v, int | float) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"{name}: {key} must be a number >= 0, got {v!r}")
        if not self.tau_sigma_min <= self.tau_sigma_max:
            raise ValueError(f"{name}: need tau_sigma_min <= tau_sigma_max, got {self.tau_sigma_min} > "
                             f"{self.tau_sigma_max}")
        check_choice(name, "prediction", self.prediction, ("data", "noise"))
        multistep.check_bool(name, "lower_order_final", self.lower_order_final)
        check_choice(name, "variant", self.variant, VARIANTS)

    @property
    def order(self) -> float:
        """See the class docstring."""
        if self.tau > 0:
            return 1.0
        return float(min(self.corrector_order, self.predictor_order + 1, 2 if self.lower_order_final else 3))

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> SAState:
        del x
        return SAState(log_snr(problem.sde, walk.grid))

    def tau_at(self, problem: Problem, t: Tensor) -> Tensor:
        """τ at the times t [B]."""
        sigma = ve_sigma(problem.sde, t)
        inside = (sigma >= self.tau_sigma_min) & (sigma <= self.tau_sigma_max)
        return torch.where(inside, torch.full_like(sigma, float(self.tau)), torch.zeros_like(sigma))

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state: SAState, noise) -> Step:
        i, n = state.i, len(state.lams) - 1
        lam, lam_next = state.lams[i], state.lams[i + 1]
        modified = self.variant == "few_steps"
        out = model_output(problem, x, t, self.prediction)
        if state.memo is not None:  # SA-Corrector of the previous step, with its noise and τ
            x_prev, t_prev, lam_prev, z_prev, tau_prev, c_prev = state.memo
            lams_c = [lam, *state.lam_past][:c_prev]
            outs_c = [out, *state.out_past][:c_prev]
            x = sa_step(problem, self.prediction, x_prev, t_prev, t, lam_prev, lam, lams_c, outs_c, tau_prev, z_prev,
                        modified)
        keep = max(self.predictor_order, self.corrector_order - 1)
        lams = [lam, *state.lam_past][:keep]
        outs = [out, *state.out_past][:keep]
        done = min(i, keep)  # diffusers' lower_order_nums: outputs before this one, for the warm-up
        p, c = self.predictor_order, self.corrector_order
        if self.lower_order_final:
            p, c = min(p, n - i), min(c, n - i + 1)
        p, c = min(p, done + 1), min(c, done + 2)
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        tau = self.tau_at(problem, t)
        x_next = sa_step(problem, self.prediction, x, t, t_next, lam, lam_next, lams[:p], outs[:p], tau, z, modified)
        return Step(x_next, x_next, SAState(state.lams, i + 1, lams, outs, (x, t, lam, z, tau, c)))
