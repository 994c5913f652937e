"""The adaptive step-size controller of "Gotta Go Fast When Generating Data with Score-Based Models"
(Jolicoeur-Martineau et al. 2021, Algorithm 1) and adaptive DPM-Solver (Lu et al. 2022, Algorithm 4):
per-sample t and h, accepted or rejected on the method's error estimate, run by the one loop of
:mod:`solvers.solve` (diffrax's split):

* the methods are embedded pairs (:mod:`solvers.ggf`, :mod:`solvers.dpm_adaptive`): one attempted
  step from t to t_next per sample, returning the candidate, the state the tolerance is measured on
  (``Step.x_check``) and the local error estimate ``Step.error``; a method also says how far a sample
  is from the end (``span``) and where a step of size h lands (``advance``), so that h may be
  measured in t (Gotta Go Fast) or in λ (DPM-Solver), and within what the solve is finished
  (``end_tol``);
* the controller (:class:`IntegralController`): scaled error norm, accept/reject, the next h, and
  (:class:`AdaptiveWalk`) the per-sample bookkeeping of one solve and its statistics.

Conventions (REFERENCE §2.1, §2.3, §2.4 and the fixtures README §3.7):

* One z ~ N(0, I) per attempt and sample, shared by both stages, drawn afresh after a rejection: the
  noise source the walk hands the method (:class:`RowNoise`) draws it at the method's ``increment``.
* Improved Euler: K1 = −h f_r(x, t) + g(t)√h z, K2 = −h f_r(x + K1, t − h) + g(t − h)√h z with the
  reverse drift f_r = f − g² s; E = ½(K2 − K1). With extrapolation (default) the candidate is the
  Heun state x + ½(K1 + K2) and the tolerance is measured on the EM proposal x + K1; without, the
  other way round.
* δ = max(ε_abs, ε_rel · max(|x_prev|, |x_check|)) elementwise; E₂ = ‖E/δ‖ per sample ('l2_scaled':
  √(mean (E/δ)²) over C·H·W; 'l2'; 'linf'). Accept if E₂ ≤ 1.
* h ← θ h E₂^(−r) for accepted *and* rejected samples (θ = 0.9, r = 0.9), capped at t − eps before
  the next attempt (the same numbers as GGF's min(max(t − eps, 0), θ h E₂^(−r)) after the step).
* The loop runs while any |t − eps| > 1e-6; then the final ``denoise`` (GGF's own is 'ggf',
  x + σ(eps)² s(x, eps); the default is every sampler's 'tweedie').
* ``precision='float32'`` keeps per-sample t, h and the error norm in float32, as the PyTorch port
  does (its outputs are then reproduced on VE too, where an E₂ within rounding of 1 can otherwise
  send a sample another way); float64 is the default.

``x_prev`` — the one place the references disagree. ``'accepted_proposal'`` (default): x_prev is the
previous accepted x_check (the EM proposal), initialised with the prior sample, as Algorithm 1 of the
paper is written, as the PyTorch port ``sde_sampling_torch.py`` runs it and as the fixtures record.
``'current'``: x_prev is the current x, as the JAX code that produced the paper's numbers runs it
(its ``NoneCorrector`` overwrites x_prev every iteration); measured effect ≤ ~2 % in NFE.
``'none'``: δ = max(ε_abs, ε_rel |x_check|) (GGF's ``error_use_prev=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from solvers.base import Problem, SolveStats, Status, check_choice, check_positive
from solvers.denoise import check_denoise
from solvers.solve import Attempt

__all__ = ["IntegralController", "AdaptiveWalk", "RowNoise", "ERROR_NORMS", "X_PREV", "ADAPTIVE_DENOISE",
           "PRECISIONS"]

ERROR_NORMS = ("l2_scaled", "l2", "linf")
X_PREV = ("accepted_proposal", "current", "none")
ADAPTIVE_DENOISE = ("tweedie", "ggf", "none")
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


# ---- step-size control ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IntegralController:
    """Per-sample accept/reject and next step size from a local error estimate (GGF §3.2, Alg. 1;
    Lu et al. 2022, Algorithm 4), and the per-sample walk of a solve.

    An integral controller (no proportional term, as both papers): h_next = θ·h·E₂^(−r), computed from
    the error estimate and the state the tolerance is measured on only; the walk caps h at what is left.

    Args:
        rtol: ε_rel (GGF sweeps 0.01–0.1).
        atol: ε_abs (GGF: 0.0078 for [−1, 1] data, 0.0039 for [0, 1] data; config default 0.01).
        safety: θ.
        exponent: r (GGF: 0.9, hard-coded in the PyTorch port); None: 1/order of the rule's
            higher-order solution (DPM-Solver's 1/k).
        norm: 'l2_scaled' (RMS over the sample's dimensions, the default), 'l2' or 'linf'.
        h_min: smallest step the controller may propose before the solve stops with Status.DT_MIN
            (0 disables it, as GGF, which defines h_min = 1e-10 but never uses it).
        h_init: first step of every sample, in the method's variable (GGF: 0.01; 0.5 for the
            CIFAR-10/Church VE models).
        x_prev: 'accepted_proposal' (default), 'current' or 'none'; see the module docstring.
        per_sample_eval: evaluate the score only on the still-running samples (default), so the
            work follows the mean per-sample NFE; False evaluates the whole batch every iteration as
            GGF does. Both give the same samples for the same noise.
        max_steps: iteration limit (Status.MAX_STEPS, no denoising).
        precision: 'float64' (default) or 'float32' (t, h and E₂ as the GGF PyTorch port keeps them).

    Statistics: ``nfe`` = counted calls on the batch; ``nfe_per_sample`` [B] = the calls that
    evaluated each sample's row, read from the counter at every attempt (in batch mode every sample
    is evaluated every iteration); ``n_steps`` = iterations (the slowest sample's attempts);
    ``n_accepted``/``n_rejected`` = accepted/rejected steps summed over the samples. The error norm is
    per sample (``extra['error_norm_scope'] = 'per_sample'``).
    """

    rtol: float = 1e-2
    atol: float = 1e-2
    safety: float = 0.9
    exponent: float | None = 0.9
    norm: str = "l2_scaled"
    h_min: float = 0.0
    h_init: float = 1e-2
    x_prev: str = "accepted_proposal"
    per_sample_eval: bool = True
    max_steps: int = 100_000
    precision: str = "float64"

    adaptive = True
    needs = ()  # the methods say what they need from the path

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("rtol", "atol", "safety", "h_init"):
            check_positive(name, key, getattr(self, key))
        if self.exponent is not None:
            check_positive(name, "exponent", self.exponent)
        check_choice(name, "norm", self.norm, ERROR_NORMS)
        if not (isinstance(self.h_min, int | float) and self.h_min >= 0):
            raise ValueError(f"{name}: h_min must be a number >= 0, got {self.h_min!r}")
        check_choice(name, "x_prev", self.x_prev, X_PREV)
        check_choice(name, "per_sample_eval", self.per_sample_eval, (True, False))
        check_positive(name, "max_steps", self.max_steps, integer=True)
        check_choice(name, "precision", self.precision, tuple(PRECISIONS))

    def check(self, owner: str, method, denoise: str) -> None:
        """ValueError unless ``denoise`` is one the adaptive solve can end with."""
        del method
        check_denoise(owner, denoise, ADAPTIVE_DENOISE)

    def start(self, problem: Problem, x: Tensor, noise, method) -> AdaptiveWalk:
        return AdaptiveWalk(self, method, problem, x, noise)

    def error_norm(self, error: Tensor, x_check: Tensor, x_prev: Tensor | None,
                   dtype: torch.dtype = torch.float64) -> Tensor:
        """E₂ = ‖E / δ‖ per sample, δ = max(atol, rtol·max(|x_prev|, |x_check|)); [B] in ``dtype``."""
        ref = x_check.abs() if x_prev is None else torch.maximum(x_prev.abs(), x_check.abs())
        ratio = (error / (self.rtol * ref).clamp(min=self.atol)).flatten(1).to(dtype)
        if self.norm == "l2_scaled":
            return ratio.pow(2).mean(1).sqrt()
        if self.norm == "l2":
            return ratio.pow(2).sum(1).sqrt()
        return ratio.abs().amax(1)

    def propose(self, h: Tensor, error: Tensor, order: float = 1.0) -> tuple[Tensor, Tensor]:
        """(accept [B] bool, h_next [B]) from the step h [B] and the scaled error E₂ [B]:
        accept iff E₂ ≤ 1; h_next = θ·h·max(E₂, 1e-10)^(−r), r = ``exponent`` or 1/``order``."""
        r = self.exponent if self.exponent is not None else 1.0 / order
        return error <= 1, self.safety * h * error.clamp(min=1e-10).pow(-r)


class RowNoise:
    """The noise source of the rows ``idx`` of one attempt: ``increment`` is the attempt's one normal
    draw per sample (both stages of a pair share it; a rejected attempt's next try draws afresh)."""

    def __init__(self, noise, idx: Tensor | None) -> None:
        self.noise, self.idx = noise, idx

    def increment(self, t: Tensor, t_next: Tensor, shape, dtype=torch.float32, device=None) -> Tensor:
        del t, t_next
        return self.noise.normal(tuple(shape), dtype=dtype, device=device, index=self.idx)


class AdaptiveWalk:
    """One adaptive solve: per-sample t, h, x_prev, counted per-sample evaluations and steps."""

    grid = None  # no grid: the method's init sees none
    t_end = None  # every row ends at eps, where the final denoise evaluates

    def __init__(self, ctrl: IntegralController, method, problem: Problem, x: Tensor, noise) -> None:
        self.ctrl, self.method, self.problem, self.noise = ctrl, method, problem, noise
        self.counter = problem.counter
        self.rows0 = self.counter.rows
        B, device, dtype = x.shape[0], x.device, PRECISIONS[ctrl.precision]
        self.B, self.dtype = B, dtype
        self.t = torch.full((B,), float(problem.sde.T), dtype=dtype, device=device)
        self.h = torch.full_like(self.t, ctrl.h_init)
        self.x, self.x_prev = x.clone(), x.clone()
        self.evals = torch.zeros(B, dtype=torch.long, device=device)
        self.n_acc, self.n_rej = torch.zeros_like(self.evals), torch.zeros_like(self.evals)
        self.iterations, self.status, self.message = 0, Status.OK, ""

    def attempt(self, x: Tensor) -> Attempt | None:
        method, ctrl = self.method, self.ctrl
        if self.status != Status.OK:  # stopped by the last judgement
            return None
        left = method.span(self.problem, self.t).to(self.dtype)  # [B] what is left, in the unit of h
        running = left > method.end_tol
        if not bool(running.any()):
            return None
        if self.iterations >= ctrl.max_steps:
            self.status = Status.MAX_STEPS
            self.message = (f"max_steps={ctrl.max_steps} reached with {int(running.sum())} of {self.B} "
                            f"samples unfinished")
            return None
        self.iterations += 1
        # Select the samples to evaluate: the running ones, or the whole batch (GGF).
        idx = running.nonzero().squeeze(1) if ctrl.per_sample_eval else torch.arange(self.B, device=x.device)
        ts, ls = self.t[idx], left[idx]
        hs = torch.minimum(self.h[idx], ls.clamp(min=0))  # the last step lands on the end
        ts_next = method.advance(self.problem, ts, hs, hs >= ls)
        rows = self.problem.select_rows(idx) if ctrl.per_sample_eval else self.problem  # labels follow
        self.idx, self.live, self.left_rows = idx, running[idx], ls  # the attempt's rows
        self.nfe_before, self.rows_before = self.counter.nfe, self.counter.rows
        return Attempt(rows, x[idx], ts, ts_next, RowNoise(self.noise, idx if ctrl.per_sample_eval else None),
                       {"h": hs})

    def judge(self, attempt: Attempt, out) -> tuple[Tensor, Tensor]:
        """Count the attempt's calls, let the controller accept or reject each row, move the accepted."""
        ctrl, idx, x = self.ctrl, self.idx, self.x
        calls, rows = self.counter.nfe - self.nfe_before, self.counter.rows - self.rows_before
        if rows != calls * len(idx):
            raise RuntimeError(f"{type(self.method).__name__}: a step evaluated {rows} rows in {calls} calls "
                               f"for {len(idx)} samples")
        self.evals[idx] += calls
        xs, ts, hs, xps = attempt.x, attempt.t, attempt.kwargs["h"], self.x_prev[idx]
        ref = {"accepted_proposal": xps, "current": xs, "none": None}[ctrl.x_prev]
        err = ctrl.error_norm(out.error, out.x_check, ref, self.dtype)
        accept, h_next = ctrl.propose(hs, err, self.method.order)
        live = self.live  # finished samples evaluated in batch mode are left as they are
        accept = accept & live
        if not bool(torch.isfinite(err[live]).all()):
            self.status, self.message = Status.NONFINITE, f"non-finite error estimate at iteration {self.iterations}"
            return x, x
        left_after = torch.where(accept, self.left_rows - hs, self.left_rows)
        if ctrl.h_min > 0 and bool((live & (h_next < ctrl.h_min) & (h_next < left_after)).any()):
            self.status = Status.DT_MIN
            self.message = f"step size below h_min={ctrl.h_min} at iteration {self.iterations}"
            return x, x
        acc_x = accept.reshape(-1, *(1,) * (xs.dim() - 1))  # [b, 1, ...] bool
        x[idx] = torch.where(acc_x, out.x, xs)
        self.x_prev[idx] = torch.where(acc_x, out.x_check, xps)
        self.t[idx] = torch.where(accept, attempt.t_next, ts)
        self.h[idx] = torch.where(live, h_next, hs)
        self.n_acc[idx] += accept.long()
        self.n_rej[idx] += (live & ~accept).long()
        return x, x

    def denoised(self, calls: int) -> None:
        self.evals += calls  # the denoise evaluates every sample

    def stats(self, nfe: int) -> SolveStats:
        extra = {"iterations": self.iterations, "batch_size": self.B, "error_norm_scope": "per_sample",
                 "per_sample_eval": self.ctrl.per_sample_eval, "x_prev": self.ctrl.x_prev,
                 "rows": self.counter.rows - self.rows0,
                 "accepted_per_sample_mean": self.n_acc.double().mean().item(),
                 "rejected_per_sample_mean": self.n_rej.double().mean().item()}
        return SolveStats(nfe=nfe, n_steps=self.iterations, n_accepted=int(self.n_acc.sum()),
                          n_rejected=int(self.n_rej.sum()), nfe_per_sample=self.evals, extra=extra)
