"""The probability-flow ODE with torchdiffeq's solvers: on-device, no numpy round trip.

:func:`integrate_torchdiffeq` wraps ``torchdiffeq.odeint`` for a flat torch right-hand side and
records the solver's steps through torchdiffeq's public callbacks (``callback_step``,
``callback_accept_step``, ``callback_reject_step``); the likelihood (``solvers/likelihood.py``) uses
it as its on-device backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from solvers import requirements
from solvers.base import Problem, Solution, SolveStats, Status, check_choice, check_positive, finite_status
from solvers.denoise import DEFAULT_DENOISE, denoise_nfe
from solvers.ode_common import ODE_DENOISE, check_tolerances, flat_drift, ode_denoise

__all__ = ["TorchdiffeqProbabilityFlow", "TorchdiffeqResult", "integrate_torchdiffeq", "TORCHDIFFEQ_METHODS"]

# method → (order, adaptive, right-hand-side evaluations per step, start-up evaluations).
# Adaptive Runge–Kutta methods evaluate f(t0, y0) and once more to select the initial step (2 start-up
# calls), then (stages − 1) calls per attempted step (first-same-as-last). Fixed-grid methods have no
# start-up call. Measured by counting (tests/test_ode.py). The Adams methods are left out: torchdiffeq
# runs them with a variable number of calls per step.
TORCHDIFFEQ_METHODS: dict[str, tuple[int, bool, int, int]] = {
    "dopri8": (8, True, 13, 2),
    "dopri5": (5, True, 6, 2),
    "bosh3": (3, True, 3, 2),
    "fehlberg2": (2, True, 2, 2),
    "adaptive_heun": (2, True, 1, 2),
    "euler": (1, False, 1, 0),
    "midpoint": (2, False, 2, 0),
    "heun2": (2, False, 2, 0),
    "heun3": (3, False, 3, 0),
    "rk4": (4, False, 4, 0),
}


class _StepRecorder:
    """The ODE function handed to odeint, with torchdiffeq's step callbacks counting steps."""

    def __init__(self, fun: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fun = fun
        self.n_steps = 0

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        return self.fun(t, y)

    def callback_step(self, t0, y0, dt) -> None:
        del t0, y0, dt
        self.n_steps += 1


class _AdaptiveStepRecorder(_StepRecorder):
    def __init__(self, fun: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__(fun)
        self.n_accepted = 0
        self.n_rejected = 0

    def callback_accept_step(self, t0, y0, dt) -> None:
        del t0, y0, dt
        self.n_accepted += 1

    def callback_reject_step(self, t0, y0, dt) -> None:
        del t0, y0, dt
        self.n_rejected += 1


@dataclass
class TorchdiffeqResult:
    y: Tensor  # [n] state at t1, in y0's dtype
    n_steps: int  # attempted steps (torchdiffeq's callback_step)
    n_accepted: int
    n_rejected: int
    status: int  # 0 ok, -1 failed (torchdiffeq raised)
    message: str


def integrate_torchdiffeq(fun: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t0: float, t1: float, *,
                          method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, n_steps: int | None = None,
                          max_steps: int = 100_000) -> TorchdiffeqResult:
    """Integrate dy/dt = fun(t, y) from t0 to t1 with ``torchdiffeq.odeint`` (state stays in y0's dtype).

    Args:
        fun: ``(t [0-d tensor], y [n]) -> dy/dt [n]``.
        y0: [n] initial state; its dtype is the integration dtype.
        t0, t1: start and end (t1 < t0 integrates backwards).
        method: one of ``TORCHDIFFEQ_METHODS``.
        rtol, atol: tolerances of the adaptive methods.
        n_steps: number of uniform steps of a fixed-grid method (required there, refused otherwise).
        max_steps: attempted-step limit of the adaptive methods (failure beyond it).
    """
    check_choice("integrate_torchdiffeq", "method", method, tuple(TORCHDIFFEQ_METHODS))
    adaptive = TORCHDIFFEQ_METHODS[method][1]
    t = torch.tensor([t0, t1], dtype=torch.float64, device=y0.device)
    if adaptive:
        recorder: _StepRecorder = _AdaptiveStepRecorder(fun)
        # step_t makes the solver land on t1 instead of stepping past it and interpolating back: past
        # eps the SDE coefficients are undefined (VP at t < 0 has no σ_t).
        options = {"max_num_steps": max_steps, "step_t": t[1:].clone()}
    else:
        recorder = _StepRecorder(fun)
        grid = torch.linspace(t0, t1, n_steps + 1, dtype=torch.float64, device=y0.device)
        options = {"grid_constructor": lambda func, y, tt: grid.to(tt.dtype)}
    try:
        with torch.no_grad():
            ys = odeint(recorder, y0, t, rtol=rtol, atol=atol, method=method, options=options)
        status, message, y = 0, "", ys[-1]
    except AssertionError as err:  # torchdiffeq signals failures (max_num_steps, dt underflow) by assert
        status, message, y = -1, f"torchdiffeq {method}: {err}", y0
    n_acc = getattr(recorder, "n_accepted", recorder.n_steps)
    n_rej = getattr(recorder, "n_rejected", 0)
    return TorchdiffeqResult(y=y, n_steps=recorder.n_steps, n_accepted=n_acc, n_rejected=n_rej, status=status,
                             message=message)


@dataclass(frozen=True, kw_only=True)
class TorchdiffeqProbabilityFlow:
    """Probability-flow ODE from T to eps with a torchdiffeq solver, on the state's device.

    Integrates: the probability-flow ODE dx/dt = f(x, t) − ½ g(t)² s(x, t) (Song et al. 2021, Eq. 13).
    Order: the method's (``TORCHDIFFEQ_METHODS``: dopri5 5, bosh3 3, fehlberg2 2, adaptive_heun 2,
    rk4 4, midpoint 2, euler 1, …). NFE per step: the method's stages less one for the adaptive
    first-same-as-last methods (dopri5 6, bosh3 3, fehlberg2 2, adaptive_heun 1 — rejected steps
    included), plus 2 start-up calls (f(T, x_T) and the initial-step selection); fixed-grid methods:
    the stages (euler 1, midpoint 2, rk4 4) and no start-up call. The counted NFE includes every call.
    SDEs: VE, VP, sub-VP. Reference: torchdiffeq ``odeint`` (Chen et al. 2018); the drift and the
    flattened-batch layout follow score_sde's ODE sampler, so with an adaptive method the whole batch
    shares one step size and one error norm: the samples and the NFE then depend on the batch size
    and composition (``batch_invariant`` False, put in the run's identity and record by the harness).
    ``per_sample=True`` solves each sample alone (batch-invariant; NFE of each sample counted around
    its own solve). The fixed-grid methods are batch-invariant either way.

    Args:
        method: a key of ``TORCHDIFFEQ_METHODS`` (default 'dopri5').
        rtol, atol: tolerances (adaptive methods only).
        n_steps: uniform steps for the fixed-grid methods (required there, refused for adaptive ones).
        dtype: integration dtype, 'float32' or 'float64'; default (None) the dtype of ``x_init``. The
            drift is always evaluated in ``x_init``'s dtype (the model's).
        denoise, num_scales: as :class:`~solvers.scipy_ode.ScipyProbabilityFlow`.
        max_steps: attempted-step limit of the adaptive methods (Status.SOLVER_FAILED beyond it).
        per_sample: one solve per sample instead of one for the flattened batch.
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    n_steps: int | None = None
    dtype: str | None = None
    denoise: str = DEFAULT_DENOISE
    num_scales: int = 1000
    max_steps: int = 100_000
    per_sample: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_choice(name, "method", self.method, tuple(TORCHDIFFEQ_METHODS))
        check_choice(name, "per_sample", self.per_sample, (False, True))
        check_tolerances(name, self.rtol, self.atol)
        check_choice(name, "dtype", self.dtype, (None, "float32", "float64"))
        check_choice(name, "denoise", self.denoise, ODE_DENOISE)
        check_positive(name, "num_scales", self.num_scales, integer=True)
        check_positive(name, "max_steps", self.max_steps, integer=True)
        if self.adaptive and self.n_steps is not None:
            raise ValueError(f"{name}: n_steps is for the fixed-grid methods; {self.method!r} is adaptive "
                             f"(set rtol/atol instead)")
        if not self.adaptive:
            if self.n_steps is None:
                raise ValueError(f"{name}: fixed-grid method {self.method!r} needs n_steps")
            check_positive(name, "n_steps", self.n_steps, integer=True)

    @property
    def adaptive(self) -> bool:
        return TORCHDIFFEQ_METHODS[self.method][1]

    @property
    def order(self) -> float:
        return float(TORCHDIFFEQ_METHODS[self.method][0])

    @property
    def nfe_per_step(self) -> int:
        """Evaluations per (attempted) step, besides the start-up ones of the adaptive methods."""
        return TORCHDIFFEQ_METHODS[self.method][2]

    @property
    def expected_nfe(self) -> int | None:
        """The fixed-grid methods' NFE on the batch (steps × stages + the denoise's call); None for the
        adaptive methods and for one solve per sample (its calls grow with the batch)."""
        if self.adaptive or self.per_sample:
            return None
        return self.n_steps * self.nfe_per_step + denoise_nfe(self.denoise)

    @property
    def needs(self) -> tuple[str, ...]:
        """Score_sde's tables for its 'reverse_diffusion' denoise; else none (the drift takes its velocity
        form where α_T = 0: from pure noise)."""
        return ("tables",) if self.denoise == "reverse_diffusion" else ()

    @property
    def batch_invariant(self) -> bool:
        """Whether sample i is the same at any batch size: fixed grids, or one solve per sample."""
        return self.per_sample or not self.adaptive

    @property
    def per_sample_loop(self) -> bool:
        """Whether the batch is solved one sample at a time in Python (see ``ScipyODE.per_sample_loop``)."""
        return self.per_sample

    def _solve(self, problem: Problem, x: Tensor) -> tuple[Tensor, TorchdiffeqResult]:
        sde = problem.sde
        dtype = getattr(torch, self.dtype) if self.dtype else x.dtype
        rhs = flat_drift(problem, tuple(x.shape), x.dtype)
        res = integrate_torchdiffeq(rhs, x.reshape(-1).to(dtype), sde.T, sde.eps, method=self.method,
                                    rtol=self.rtol, atol=self.atol, n_steps=self.n_steps, max_steps=self.max_steps)
        return res.y.reshape(x.shape).to(x.dtype), res

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution:
        del noise  # deterministic
        requirements.check(self, problem.sde)  # before any score call
        counter = problem.counter
        nfe0, B = counter.nfe, x_init.shape[0]
        parts = [slice(i, i + 1) for i in range(B)] if self.per_sample else [slice(None)]
        outs, per_nfe = [], []
        for sl in parts:
            part = x_init[sl]
            before = counter.rows
            outs.append(self._solve(problem.select_rows(sl), part))  # the labels follow the rows
            # Rows evaluated during this solve, per sample in it (each call sees every sample of the part).
            per_nfe += [(counter.rows - before) // part.shape[0]] * part.shape[0]
        x = torch.cat([o[0] for o in outs])
        results = [o[1] for o in outs]
        failed = [r for r in results if r.status != 0]
        rows = counter.rows
        with torch.no_grad():
            x = ode_denoise(problem, x, "none" if failed else self.denoise, self.num_scales)
        denoise_nfe = (counter.rows - rows) // B
        extra = {"batch_size": B, "method": self.method, "denoise_nfe": denoise_nfe, "per_sample": self.per_sample,
                 "startup_nfe": TORCHDIFFEQ_METHODS[self.method][3]}
        stats = SolveStats(nfe=counter.nfe - nfe0, n_steps=sum(r.n_steps for r in results),
                           n_accepted=sum(r.n_accepted for r in results),
                           n_rejected=sum(r.n_rejected for r in results),
                           nfe_per_sample=torch.tensor(per_nfe, dtype=torch.long) + denoise_nfe, extra=extra)
        if failed:
            message = failed[0].message if len(results) == 1 else \
                f"{len(failed)} of {len(results)} solves: {failed[0].message}"
            return Solution(x, stats, Status.SOLVER_FAILED, message)
        status, message = finite_status(x)
        return Solution(x, stats, status, message)
