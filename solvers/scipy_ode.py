"""The probability-flow ODE with SciPy's explicit Runge–Kutta solvers: score_sde's ODE sampler.

This is the only module of scorebench that converts tensors to numpy: :func:`integrate_scipy`
wraps a torch right-hand side for SciPy, and both the ODE sampler and the likelihood
(``solvers/likelihood.py``) go through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.integrate
import torch
from torch import Tensor

from solvers import requirements
from solvers.base import Problem, Solution, SolveStats, Status, check_choice, check_positive, finite_status
from solvers.denoise import DEFAULT_DENOISE
from solvers.ode_common import ODE_DENOISE, check_tolerances, flat_drift, ode_denoise

__all__ = ["ScipyProbabilityFlow", "ScipyResult", "integrate_scipy", "SCIPY_METHODS"]

# method → (order, right-hand-side evaluations per attempted step). Explicit methods only: the implicit
# ones (Radau, BDF, LSODA) would estimate a (B·D)×(B·D) Jacobian by finite differences. Each solve
# also makes 2 start-up evaluations (f(t0, y0) and one inside the initial step selection). The
# evaluations per step are documentation and a test's expectation; attempted steps are counted.
SCIPY_METHODS: dict[str, tuple[int, int]] = {"RK23": (3, 3), "RK45": (5, 6), "DOP853": (8, 12)}
SCIPY_STARTUP_NFE = 2


class _CountsAttempts:
    """Counts attempted and rejected steps where SciPy decides them: each attempt of an explicit
    Runge–Kutta step estimates its error norm once, and SciPy rejects the attempt when it is >= 1."""

    n_attempted = 0
    n_rejected = 0

    def _estimate_error_norm(self, K, h, scale):
        norm = super()._estimate_error_norm(K, h, scale)
        self.n_attempted += 1
        self.n_rejected += int(not norm < 1)
        return norm


class _RK23(_CountsAttempts, scipy.integrate.RK23):
    pass


class _RK45(_CountsAttempts, scipy.integrate.RK45):
    pass


class _DOP853(_CountsAttempts, scipy.integrate.DOP853):
    pass


_COUNTING_SOLVERS = {"RK23": _RK23, "RK45": _RK45, "DOP853": _DOP853}


@dataclass
class ScipyResult:
    """End state and statistics of one SciPy solve."""

    y: Tensor  # [n] float64, state at t1 (on the device of y0)
    nfev: int  # right-hand-side evaluations, as SciPy counts them
    n_accepted: int
    n_attempted: int  # accepted + rejected, counted at SciPy's error-norm evaluations
    n_rejected: int  # attempts whose error norm was >= 1
    status: int  # 0 reached t1, -1 failed, 1 stopped by max_steps
    message: str
    t: Tensor  # [n_accepted + 1] float64 accepted times, t0 first


def integrate_scipy(fun: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t0: float, t1: float, *, method: str = "RK45",
                    rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 100_000) -> ScipyResult:
    """Integrate dy/dt = fun(t, y) from t0 to t1 with SciPy on a flat float64 state.

    Drives SciPy's ``OdeSolver`` class directly: this is the loop ``solve_ivp`` runs (same steps, same
    ``nfev``), without ``solve_ivp``'s copy of the state at every step (600 MB for a CIFAR-10 batch of
    128 over 200 steps).

    Args:
        fun: ``(t [0-d float64 tensor], y [n] float64) -> dy/dt [n]`` on ``y0``'s device.
        y0: [n] initial state (any float dtype; integrated in float64).
        t0, t1: start and end time (t1 < t0 integrates backwards).
        method: one of ``SCIPY_METHODS``.
        rtol, atol: SciPy's tolerances.
        max_steps: accepted-step limit (status 1 when reached).
    """
    check_choice("integrate_scipy", "method", method, tuple(SCIPY_METHODS))
    device = y0.device

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        y_t = torch.from_numpy(np.array(y, dtype=np.float64)).to(device)
        with torch.no_grad():
            dy = fun(torch.tensor(t, dtype=torch.float64, device=device), y_t)
        return dy.detach().to(torch.float64).cpu().numpy()

    y_np = y0.detach().to(torch.float64).cpu().numpy().copy()
    solver = _COUNTING_SOLVERS[method](rhs, t0, y_np, t1, rtol=rtol, atol=atol)
    ts = [t0]
    status, message = 0, "The solver successfully reached the end of the integration interval."
    while solver.status == "running":
        if len(ts) > max_steps:
            status, message = 1, f"max_steps={max_steps} accepted steps reached at t={solver.t:.6g}"
            break
        err = solver.step()
        if solver.status == "failed":
            status, message = -1, str(err)
            break
        ts.append(solver.t)
    return ScipyResult(
        y=torch.from_numpy(np.array(solver.y, dtype=np.float64)).to(device), nfev=int(solver.nfev),
        n_accepted=len(ts) - 1, n_attempted=solver.n_attempted, n_rejected=solver.n_rejected,
        status=status, message=message, t=torch.tensor(ts, dtype=torch.float64))


@dataclass(frozen=True, kw_only=True)
class ScipyProbabilityFlow:
    """Probability-flow ODE from T to eps with SciPy RK45 (score_sde's ``get_ode_sampler``).

    Integrates: the probability-flow ODE dx/dt = f(x, t) − ½ g(t)² s(x, t) (Song et al. 2021, Eq. 13).
    Order: 5 (RK45, Dormand–Prince; 3 for RK23, 8 for DOP853). NFE per step: 6 for RK45 per attempted
    step (3 RK23, 12 DOP853) plus 2 start-up evaluations; NFE is adaptive and reported from the
    counter, never from a formula. SDEs: VE, VP, sub-VP. Reference: score_sde ``sampling.py``
    ``get_ode_sampler`` (REFERENCE §1.5).

    As score_sde, the whole batch is one flattened float64 state with one step size (error norm over
    the whole batch), so the NFE and the samples depend on the batch size and composition:
    ``batch_invariant`` is False, which the harness puts in the run's identity and record
    (``stats.extra['batch_size']`` records the batch). The drift is evaluated in the model's dtype
    (the dtype of ``x_init``: float32 as score_sde). ``per_sample=True`` solves each sample alone
    instead (batch-invariant; each sample's NFE counted around its own solve in
    ``stats.nfe_per_sample``, ``stats.nfe`` the total number of calls).

    Args:
        method: 'RK45' (default, the paper's), 'RK23' or 'DOP853'.
        rtol, atol: SciPy tolerances (score_sde: 1e-5 both).
        denoise: final step at eps, the default of every sampler (``solvers.denoise.DEFAULT_DENOISE``,
            'tweedie'); 'none' (score_sde's ``get_ode_sampler`` default), 'reverse_diffusion' (score_sde's
            ``noise_removal``: one reverse-diffusion mean step with the N = ``num_scales`` table) or
            'ggf'. Each costs 1 counted call
            (score_sde does not count its denoise call).
        num_scales: N of the discrete table used by ``denoise='reverse_diffusion'``.
        per_sample: one solve per sample instead of one for the batch.
        max_steps: accepted-step limit per solve (Status.MAX_STEPS).
    """

    method: str = "RK45"
    rtol: float = 1e-5
    atol: float = 1e-5
    denoise: str = DEFAULT_DENOISE
    num_scales: int = 1000
    per_sample: bool = False
    max_steps: int = 100_000

    adaptive: ClassVar[bool] = True
    expected_nfe: ClassVar[None] = None  # adaptive: chosen by SciPy's error control

    @property
    def order(self) -> float:
        return float(SCIPY_METHODS[self.method][0])

    @property
    def nfe_per_step(self) -> int:
        """Evaluations per attempted step (6 for RK45), besides the 2 start-up ones."""
        return SCIPY_METHODS[self.method][1]

    @property
    def needs(self) -> tuple[str, ...]:
        """Score_sde's tables for its 'reverse_diffusion' denoise; else none (the drift takes its velocity
        form where α_T = 0: from pure noise)."""
        return ("tables",) if self.denoise == "reverse_diffusion" else ()

    @property
    def batch_invariant(self) -> bool:
        """Whether sample i is the same at any batch size: only with one solve per sample."""
        return self.per_sample

    @property
    def per_sample_loop(self) -> bool:
        """Whether the batch is solved one sample at a time in Python (its cost grows with the batch even
        when the score is cheap; the sweep orders its work by it)."""
        return self.per_sample

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_choice(name, "method", self.method, tuple(SCIPY_METHODS))
        check_tolerances(name, self.rtol, self.atol)
        check_choice(name, "denoise", self.denoise, ODE_DENOISE)
        check_positive(name, "num_scales", self.num_scales, integer=True)
        check_choice(name, "per_sample", self.per_sample, (False, True))
        check_positive(name, "max_steps", self.max_steps, integer=True)

    def _solve(self, problem: Problem, x: Tensor) -> tuple[Tensor, ScipyResult]:
        sde = problem.sde
        rhs = flat_drift(problem, tuple(x.shape), x.dtype)
        res = integrate_scipy(rhs, x.reshape(-1), sde.T, sde.eps, method=self.method, rtol=self.rtol,
                              atol=self.atol, max_steps=self.max_steps)
        return res.y.reshape(x.shape).to(x.dtype), res

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution:
        del noise  # deterministic
        requirements.check(self, problem.sde)  # before any score call
        counter = problem.counter
        nfe0, B = counter.nfe, x_init.shape[0]
        if self.per_sample:
            outs, per_nfe = [], []
            for i in range(B):
                before = counter.rows
                outs.append(self._solve(problem.select_rows(slice(i, i + 1)), x_init[i : i + 1]))
                per_nfe.append(counter.rows - before)  # rows evaluated during sample i's own solve
            x = torch.cat([o[0] for o in outs])
            results = [o[1] for o in outs]
        else:
            before = counter.rows
            x, res = self._solve(problem, x_init)
            results = [res]
            rows = counter.rows - before  # every call evaluates all B samples
            per_nfe = [rows // B] * B
        failed = [r for r in results if r.status != 0]
        rows = counter.rows
        with torch.no_grad():
            x = ode_denoise(problem, x, self.denoise if not failed else "none", self.num_scales)
        denoise_nfe = (counter.rows - rows) // B
        nfev = [r.nfev for r in results]
        per = torch.tensor(per_nfe, dtype=torch.long) + denoise_nfe
        n_acc = sum(r.n_accepted for r in results)
        n_att = sum(r.n_attempted for r in results)
        n_rej = sum(r.n_rejected for r in results)
        extra = {"nfev": sum(nfev), "batch_size": B, "per_sample": self.per_sample, "method": self.method,
                 "scipy_status": min(r.status for r in results),
                 "scipy_message": results[0].message if not failed else failed[0].message,
                 "denoise_nfe": denoise_nfe}
        stats = SolveStats(nfe=counter.nfe - nfe0, n_steps=n_att, n_accepted=n_acc, n_rejected=n_rej,
                           nfe_per_sample=per, extra=extra)
        if failed:
            status = Status.MAX_STEPS if all(r.status == 1 for r in failed) else Status.SOLVER_FAILED
            return Solution(x, stats, status, f"{len(failed)} of {len(results)} solves: {failed[0].message}")
        status, message = finite_status(x)
        return Solution(x, stats, status, message)
