"""DPM-Solver-fast (Lu et al. 2022, §3.4 and App. D.1): singlestep DPM-Solver-1, -2 and -3 mixed so that a
budget of NFE model calls is spent exactly, as the official code's ``DPM_Solver.sample(method='singlestep')``
does; and its fixed-order ``method='singlestep_fixed'``.

Reference: LuChengTHU/dpm-solver ``dpm_solver_pytorch.py`` at commit 52bc3fb (read, not copied):
``get_orders_and_timesteps_for_singlestep_solver``, ``sample`` and the singlestep updates.

* Orders (:func:`singlestep_orders`): order 3 with NFE = 3m + r takes K = m + 1 steps, [3]·(K − 2) + [2, 1]
  (r = 0), [3]·(K − 1) + [1] (r = 1) or [3]·(K − 1) + [2] (r = 2); order 2 takes [2]·(NFE/2) (even) or
  [2]·⌊NFE/2⌋ + [1] (odd); order 1 NFE steps of DPM-Solver-1 (DDIM). ``singlestep_fixed`` takes ⌊NFE/k⌋
  steps of order k (k·⌊NFE/k⌋ calls).
* Times (:class:`NFEBudget`): with the schedule 'log_snr' (the official 'logSNR' skip type) the K steps are
  uniform in λ and each step's intermediate times split it uniformly in λ (r₁ = ½; r₁ = ⅓, r₂ = ⅔). With any
  other schedule, a grid of NFE + 1 points (k·⌊NFE/k⌋ + 1 for ``singlestep_fixed``) is taken from the
  schedule and each step spans as many of its intervals as its order, the points inside being its
  intermediate times: the official 'time_uniform' skip type (its outer times
  ``get_time_steps(NFE)[cumsum(orders)]``, its inner ones uniform in t between them) is the schedule
  'uniform'; diffusers' ``DPMSolverSinglestepScheduler`` (orders from ``get_order_list``, intermediate
  times its timesteps) is a spacing of :mod:`solvers.spacing` with ``final_sigma='sigma_min'``.
  (``singlestep_fixed`` on 'log_snr' is the same rule: K·k + 1 points uniform in λ.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step, check_choice, check_positive
from solvers.denoise import denoise_nfe
from solvers.denoiser import log_snr, phi, time_of_log_snr
from solvers.exp_integrator import PREDICTIONS, exp_integrator_step, model_output
from solvers.fixed import ON_GRID, FixedSteps, FixedWalk
from solvers.grids import SCHEDULES
from solvers.multistep import check_order
from solvers.spacing import SPACINGS

__all__ = ["DPMSolverFast", "NFEBudget", "singlestep_orders", "FAST_METHODS", "SOLVER_TYPES"]

FAST_METHODS = ("singlestep", "singlestep_fixed")
SOLVER_TYPES = ("dpmsolver", "taylor")


def singlestep_orders(nfe: int, order: int, method: str = "singlestep") -> list[int]:
    """The order of each step of singlestep DPM-Solver of maximal ``order`` given ``nfe`` calls (module
    docstring); their sum is ``nfe`` ('singlestep') or k·⌊nfe/k⌋ ('singlestep_fixed')."""
    if method == "singlestep_fixed":
        return [order] * (nfe // order)
    m, r = divmod(nfe, order)
    if order == 3:
        return [3] * (m - 1) + [2, 1] if r == 0 else [3] * m + [r]
    if order == 2:
        return [2] * m + [1] * r
    return [1] * nfe


# ---- the controller: K steps and their intermediate times from a budget of calls -----------------
@dataclass(frozen=True)
class NFEBudget:
    """Singlestep DPM-Solver's steps for a budget of ``nfe_budget`` calls (module docstring).

    Args:
        nfe_budget: the official ``steps``: model calls of the solve, before the final ``denoise``.
        schedule: a key of :data:`solvers.grids.SCHEDULES` or :data:`solvers.spacing.SPACINGS`; 'log_snr'
            (default) is the official 'logSNR' rule, 'uniform' its 'time_uniform'.
        steps_offset: diffusers' ``steps_offset`` (spacings 'leading' and 'leading_n1' only).
    A spacing's grid ends at the first trained level (diffusers' ``final_sigmas_type='sigma_min'``).
    """

    nfe_budget: int = 20
    schedule: str = "log_snr"
    steps_offset: int = 0

    adaptive: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_positive("NFEBudget", "nfe_budget", self.nfe_budget, integer=True)
        check_choice("NFEBudget", "schedule", self.schedule, (*SCHEDULES, *SPACINGS))
        self._fine(2)  # FixedSteps checks steps_offset against the schedule

    def _fine(self, points: int) -> FixedSteps:
        """The schedule's grid of ``points`` points from T (a spacing's: ``points − 1`` calls to σ_min)."""
        if self.schedule in SPACINGS:
            return FixedSteps(n_steps=max(points - 1, 2), schedule=self.schedule, steps_offset=self.steps_offset,
                              final_sigma="sigma_min")
        return FixedSteps(n_steps=points, schedule=self.schedule, steps_offset=self.steps_offset)

    @property
    def needs(self) -> tuple[str, ...]:
        return self._fine(2).needs

    def check(self, owner: str, method, denoise: str) -> None:
        FixedSteps().check(owner, method, denoise)
        if not method.step_orders(self.nfe_budget):
            raise ValueError(f"{owner}: nfe_budget={self.nfe_budget} is below one step of order "
                             f"{method.solver_order} ({method.method})")

    def expected_nfe(self, method, denoise: str) -> int:
        """Declared NFE: the orders' sum + the denoise's calls (tests compare it with the counter)."""
        return sum(method.step_orders(self.nfe_budget)) + denoise_nfe(denoise)

    def times(self, problem: Problem, orders: list[int], method: str) -> list[Tensor]:
        """Each step's times [k + 1] float64, from its start through its k − 1 intermediate times to its end."""
        sde = problem.sde
        if self.schedule == "log_snr" and method == "singlestep":
            # The official 'logSNR' rule: K steps uniform in λ, each split uniformly in λ.
            outer = SCHEDULES["log_snr"](len(orders) + 1, sde.T, sde.eps, sde=sde)
            lam = log_snr(sde, outer)
            steps = []
            for i, k in enumerate(orders):
                fractions = torch.arange(1, k, dtype=torch.float64) / k
                inner = time_of_log_snr(sde, lam[i] + (lam[i + 1] - lam[i]) * fractions)
                steps.append(torch.cat([outer[i:i + 1], inner, outer[i + 1:i + 2]]))
            return steps
        fine = self._fine(sum(orders) + 1).grid(problem)
        ends = [0, *torch.cumsum(torch.tensor(orders), 0).tolist()]
        return [fine[a:b + 1] for a, b in zip(ends[:-1], ends[1:], strict=True)]

    def start(self, problem: Problem, x: Tensor, noise, method) -> FixedWalk:
        orders = method.step_orders(self.nfe_budget)
        times = [ts.to(x.device)[:, None].expand(-1, x.shape[0]) for ts in self.times(problem, orders, method.method)]
        walk = FixedWalk(self, problem, x, noise, torch.stack([ts[0] for ts in times] + [times[-1][-1]]))
        walk.orders, walk.times = orders, times
        return walk


@dataclass
class Plan:
    """The state of a solve: each step's order and times [k + 1, B], and the index of the next step."""

    orders: list[int]
    times: list[Tensor]
    i: int = 0


# ---- the method -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DPMSolverFast:
    """Singlestep DPM-Solver(++) of orders 1–3 for a budget of calls (module docstring).

    One step of order k from s to t (h = λ_t − λ_s) evaluates the model output m at s and at its k − 1
    intermediate times s_j (r_j = (λ_{s_j} − λ_s)/h), the state at s₁ by DPM-Solver-1 and at s₂ by the
    second-order update through m(s₁) (Lu et al. 2022, Algorithm 2); then, with ``solver_type``:

    * 'dpmsolver' (official default): order 2: ½ h φ₁ weight on (m₁ − m₀)/r₁ (Algorithm 1); order 3: the
      exact h²φ₂ weight on m' ≈ (m₂ − m₀)/(r₂h) (Algorithm 2);
    * 'taylor': order 2: h²φ₂ on (m₁ − m₀)/(r₁h); order 3: m' and m'' from the three outputs (their
      interpolating polynomial in λ), weights h²φ₂ and h³φ₃.

    Data prediction (``prediction='data'``) is DPM-Solver++: order 2 is DPM-Solver++(2S) (Lu et al. 2022b,
    Algorithm 1). diffusers' ``DPMSolverSinglestepScheduler``: its 'heun' is 'taylor'; its 'midpoint' is
    'dpmsolver' at orders 1–2, but its order-3 steps reach s₂ with the midpoint weight ½ h φ₁ instead
    (tests/test_dpm_fast.py measures the difference).

    Integrates: the probability-flow ODE, in λ. Order: ``solver_order`` (for 'singlestep' where the last
    step is not first order: NFE ≡ 2 mod 3 at order 3, even NFE at order 2; a last step of order 1 makes
    it 2, as tests/test_dpm_fast.py fits). NFE per step: the step's order (``nfe_per_step`` declares the
    largest); the solve spends the budget (:func:`singlestep_orders`). SDEs: VE, VP, sub-VP.

    Args:
        solver_order: 1, 2 or 3 (the official default for 'singlestep': 3).
        method: 'singlestep' (the order mix) or 'singlestep_fixed'.
        prediction: 'noise' (DPM-Solver) or 'data' (DPM-Solver++).
        solver_type: 'dpmsolver' or 'taylor' (as the official code).
    """

    solver_order: int = 3
    method: str = "singlestep"
    prediction: str = "noise"
    solver_type: str = "dpmsolver"

    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # ε̂ = −σ s, σ_t/σ_s and λ: finite only where α_T > 0
    controller: ClassVar[NFEBudget] = NFEBudget()
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_order(name, self.solver_order)
        check_choice(name, "method", self.method, FAST_METHODS)
        check_choice(name, "prediction", self.prediction, PREDICTIONS)
        check_choice(name, "solver_type", self.solver_type, SOLVER_TYPES)

    @property
    def order(self) -> float:
        """``solver_order`` (class docstring: 2 where the mix ends with a first-order step)."""
        return float(self.solver_order)

    @property
    def nfe_per_step(self) -> int:
        """The largest step's calls; a step of order k makes k (the solve: the orders' sum)."""
        return self.solver_order

    def step_orders(self, nfe: int) -> list[int]:
        return singlestep_orders(nfe, self.solver_order, self.method)

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> Plan:
        del problem, x
        return Plan(walk.orders, walk.times)

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state: Plan, noise) -> Step:
        del noise  # deterministic
        pred, sde, times = self.prediction, problem.sde, state.times[state.i]
        lam = log_snr(sde, t)
        h = log_snr(sde, t_next) - lam
        outs, rs = [model_output(problem, x, t, pred)], []
        for s in times[1:-1]:  # the intermediate times: the state there, then m there
            r = (log_snr(sde, s) - lam) / h
            terms = [outs[0]]  # DPM-Solver-1 to s₁; to s₂ with m' ≈ (m₁ − m₀)/(r₁h)
            if rs:
                terms.append((outs[1] - outs[0]) / expand_like(rs[0] * h, x))
            outs.append(model_output(problem, exp_integrator_step(problem, pred, x, t, s, r * h, terms), s, pred))
            rs.append(r)
        x_next = exp_integrator_step(problem, pred, x, t, t_next, h, *self._terms(outs, rs, h, pred))
        return Step(x_next, x_next, Plan(state.orders, state.times, state.i + 1))

    def _terms(self, outs: list[Tensor], rs: list[Tensor], h: Tensor, pred: str) -> tuple[list, list | None]:
        """The final update's terms [m, m', m''] (λ-derivative estimates) and weights (None: h^{k+1} φ_{k+1})."""
        m0 = outs[0]
        if len(outs) == 1:
            return [m0], None
        d = [(m - m0) / expand_like(r, m0) for m, r in zip(outs[1:], rs, strict=True)]  # D1_j = (m_j − m₀)/r_j
        if self.solver_type == "dpmsolver":
            if len(outs) == 2:  # Algorithm 1: ½ h φ₁(±h) on D1_1
                w0 = h * phi(1, -h if pred == "data" else h)
                return [m0, d[0]], [w0, w0 / 2]
            return [m0, d[1] / expand_like(h, m0)], None  # Algorithm 2: h²φ₂ on D1_2/h
        if len(outs) == 2:
            return [m0, d[0] / expand_like(h, m0)], None
        r1, r2 = (expand_like(r, m0) for r in rs)
        d1 = (r2 * d[0] - r1 * d[1]) / (r2 - r1)  # ≈ h m'
        d2 = 2 * (d[1] - d[0]) / (r2 - r1)  # ≈ h² m''
        hh = expand_like(h, m0)
        return [m0, d1 / hh, d2 / hh**2], None
