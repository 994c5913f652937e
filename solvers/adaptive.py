"""Adaptive step-size SDE solvers of "Gotta Go Fast When Generating Data with Score-Based Models"
(Jolicoeur-Martineau et al. 2021, Algorithm 1), and the adaptive driver they share with adaptive
DPM-Solver (:mod:`solvers.dpm_adaptive`), split diffrax-style into three parts:

* stepping rules with an embedded pair (:class:`ImprovedEulerRule`, :class:`LambaEMRule`): one
  attempted step from t to t_next per sample, returning the candidate, the state the tolerance is
  measured on (``Step.x_check``) and the local error estimate ``Step.error``; a rule also says how
  far a sample is from the end (``span``) and where a step of size h lands (``advance``), so that h
  may be measured in t (Gotta Go Fast) or in λ (DPM-Solver);
* the step-size controller (:class:`IntegralController`): scaled error norm, accept/reject and the
  next h;
* the driver (:class:`Adaptive`): per-sample t and h, the loop until every sample reaches eps, the
  final denoising, and the statistics.

Conventions (REFERENCE §2.1, §2.3, §2.4 and the fixtures README §3.7):

* One z ~ N(0, I) per attempt and sample, shared by both stages, drawn afresh after a rejection.
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
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Solution, SolveStats, Status, Step, check_choice, check_positive, finite_status
from solvers.denoise import DEFAULT_DENOISE, check_denoise, final_denoise

__all__ = ["IntegralController", "Adaptive", "ImprovedEulerRule", "LambaEMRule", "AdaptiveImprovedEuler",
           "AdaptiveEM", "ERROR_NORMS", "X_PREV", "ADAPTIVE_DENOISE", "PRECISIONS"]

ERROR_NORMS = ("l2_scaled", "l2", "linf")
X_PREV = ("accepted_proposal", "current", "none")
ADAPTIVE_DENOISE = ("tweedie", "ggf", "none")
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


# ---- step-size control ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IntegralController:
    """Per-sample accept/reject and next step size from a local error estimate (GGF §3.2, Alg. 1;
    Lu et al. 2022, Algorithm 4).

    An integral controller (no proportional term, as both papers): h_next = θ·h·E₂^(−r). It sees only
    the error estimate and the state the tolerance is measured on; the driver caps h at what is left.

    Args:
        rtol: ε_rel (GGF sweeps 0.01–0.1).
        atol: ε_abs (GGF: 0.0078 for [−1, 1] data, 0.0039 for [0, 1] data; config default 0.01).
        safety: θ.
        exponent: r (GGF: 0.9, hard-coded in the PyTorch port); None: 1/order of the rule's
            higher-order solution (DPM-Solver's 1/k).
        norm: 'l2_scaled' (RMS over the sample's dimensions, the default), 'l2' or 'linf'.
        h_min: smallest step the controller may propose before the solve stops with Status.DT_MIN
            (0 disables it, as GGF, which defines h_min = 1e-10 but never uses it).
    """

    rtol: float = 1e-2
    atol: float = 1e-2
    safety: float = 0.9
    exponent: float | None = 0.9
    norm: str = "l2_scaled"
    h_min: float = 0.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("rtol", "atol", "safety"):
            check_positive(name, key, getattr(self, key))
        if self.exponent is not None:
            check_positive(name, "exponent", self.exponent)
        check_choice(name, "norm", self.norm, ERROR_NORMS)
        if not (isinstance(self.h_min, int | float) and self.h_min >= 0):
            raise ValueError(f"{name}: h_min must be a number >= 0, got {self.h_min!r}")

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


# ---- the driver ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Adaptive:
    """Driver of the adaptive samplers: per-sample t and h, one controller, counted per-sample NFE.

    A subclass provides ``rule``: an embedded pair with ``order``, ``stochastic`` (one normal draw
    per attempt and sample), ``end_tol``, ``span(problem, t)`` (what is left to the end, in the unit
    of h), ``advance(problem, t, h, last)`` (t_next) and ``step(problem, x, t, t_next, state, z) ->
    Step`` with ``error`` and ``x_check``; ``step`` also gets ``h=`` (the step in the rule's unit: in
    float32, t − t_next has lost h's low bits).

    Args:
        controller: the :class:`IntegralController` (grids give its fields flat: rtol, atol, …).
        h_init: first step of every sample (GGF: 0.01; 0.5 for the CIFAR-10/Church VE models).
        x_prev: 'accepted_proposal' (default), 'current' or 'none'; see the module docstring.
        per_sample_eval: evaluate the score only on the still-running samples (default), so the
            work follows the mean per-sample NFE; False evaluates the whole batch every iteration as
            GGF does. Both give the same samples for the same noise.
        max_steps: iteration limit (Status.MAX_STEPS, no denoising).
        denoise: 'tweedie' (default), 'ggf' (GGF's) or 'none'.
        precision: 'float64' (default) or 'float32' (t, h and E₂ as the GGF PyTorch port keeps them).

    Statistics: ``nfe`` = counted calls on the batch; ``nfe_per_sample`` [B] = the calls that
    evaluated each sample's row, read from the counter at every attempt (in batch mode every sample
    is evaluated every iteration); ``n_steps`` = iterations (the slowest sample's attempts);
    ``n_accepted``/``n_rejected`` = accepted/rejected steps summed over the samples. The error norm is
    per sample (``extra['error_norm_scope'] = 'per_sample'``).
    """

    controller: IntegralController = IntegralController()
    h_init: float = 1e-2
    x_prev: str = "accepted_proposal"
    per_sample_eval: bool = True
    max_steps: int = 100_000
    denoise: str = DEFAULT_DENOISE
    precision: str = "float64"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.controller, IntegralController):
            raise ValueError(f"{name}: controller must be an IntegralController, got {self.controller!r}")
        check_positive(name, "h_init", self.h_init)
        check_choice(name, "x_prev", self.x_prev, X_PREV)
        check_choice(name, "per_sample_eval", self.per_sample_eval, (True, False))
        check_positive(name, "max_steps", self.max_steps, integer=True)
        check_denoise(name, self.denoise, ADAPTIVE_DENOISE)
        check_choice(name, "precision", self.precision, tuple(PRECISIONS))

    @property
    def order(self) -> float:
        return self.rule.order

    @property
    def nfe_per_step(self) -> int:
        return self.rule.nfe_per_step

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution:
        rule, ctrl, counter = self.rule, self.controller, problem.counter
        nfe0, rows0 = counter.nfe, counter.rows
        B, device, dtype = x_init.shape[0], x_init.device, PRECISIONS[self.precision]
        t = torch.full((B,), float(problem.sde.T), dtype=dtype, device=device)
        h = torch.full_like(t, self.h_init)
        x, x_prev = x_init.clone(), x_init.clone()
        evals = torch.zeros(B, dtype=torch.long, device=device)
        n_acc, n_rej = torch.zeros_like(evals), torch.zeros_like(evals)
        iterations, status, message = 0, Status.OK, ""
        with torch.no_grad():
            state = rule.init(problem, x, None)
            while True:
                left = rule.span(problem, t).to(dtype)  # [B] what is left, in the unit of h
                running = left > rule.end_tol
                if not bool(running.any()):
                    break
                if iterations >= self.max_steps:
                    status = Status.MAX_STEPS
                    message = f"max_steps={self.max_steps} reached with {int(running.sum())} of {B} samples unfinished"
                    break
                iterations += 1
                # Select the samples to evaluate: the running ones, or the whole batch (GGF).
                idx = running.nonzero().squeeze(1) if self.per_sample_eval else torch.arange(B, device=device)
                xs, ts, xps, ls = x[idx], t[idx], x_prev[idx], left[idx]
                hs = torch.minimum(h[idx], ls.clamp(min=0))  # the last step lands on the end
                ts_next = rule.advance(problem, ts, hs, hs >= ls)
                z = noise.normal(tuple(xs.shape), dtype=x.dtype, device=device,
                                 index=idx if self.per_sample_eval else None) if rule.stochastic else None
                # Attempt one step; count the calls it made, each on every selected row.
                calls, rows = counter.nfe, counter.rows
                rows_problem = problem.select_rows(idx) if self.per_sample_eval else problem  # labels follow
                out = rule.step(rows_problem, xs, ts, ts_next, state, z, h=hs)
                calls, rows = counter.nfe - calls, counter.rows - rows
                if rows != calls * len(idx):
                    raise RuntimeError(f"{type(self).__name__}: a step evaluated {rows} rows in {calls} calls "
                                       f"for {len(idx)} samples")
                evals[idx] += calls
                state = out.state
                # Let the controller judge it.
                ref = {"accepted_proposal": xps, "current": xs, "none": None}[self.x_prev]
                err = ctrl.error_norm(out.error, out.x_check, ref, dtype)
                accept, h_next = ctrl.propose(hs, err, rule.order)
                live = running[idx]  # finished samples evaluated in batch mode are left as they are
                accept = accept & live
                if not bool(torch.isfinite(err[live]).all()):
                    status, message = Status.NONFINITE, f"non-finite error estimate at iteration {iterations}"
                    break
                left_after = torch.where(accept, ls - hs, ls)
                if ctrl.h_min > 0 and bool((live & (h_next < ctrl.h_min) & (h_next < left_after)).any()):
                    status, message = Status.DT_MIN, f"step size below h_min={ctrl.h_min} at iteration {iterations}"
                    break
                acc_x = accept.reshape(-1, *(1,) * (xs.dim() - 1))  # [B, 1, ...] bool
                x[idx] = torch.where(acc_x, out.x, xs)
                x_prev[idx] = torch.where(acc_x, out.x_check, xps)
                t[idx] = torch.where(accept, ts_next, ts)
                h[idx] = torch.where(live, h_next, hs)
                n_acc[idx] += accept.long()
                n_rej[idx] += (live & ~accept).long()
            if status == Status.OK:
                calls = counter.nfe
                x = final_denoise(problem, x, self.denoise)
                evals += counter.nfe - calls  # the denoise evaluates every sample
        if status == Status.OK:
            status, message = finite_status(x)
        extra = {"iterations": iterations, "batch_size": B, "error_norm_scope": "per_sample",
                 "per_sample_eval": self.per_sample_eval, "x_prev": self.x_prev, "rows": counter.rows - rows0,
                 "accepted_per_sample_mean": n_acc.double().mean().item(),
                 "rejected_per_sample_mean": n_rej.double().mean().item()}
        stats = SolveStats(nfe=counter.nfe - nfe0, n_steps=iterations, n_accepted=int(n_acc.sum()),
                           n_rejected=int(n_rej.sum()), nfe_per_sample=evals, extra=extra)
        return Solution(x, stats, status, message)


# ---- Gotta Go Fast's stepping rules --------------------------------------------------------------
def _reverse_drift(problem: Problem, x: Tensor, t: Tensor) -> Tensor:
    """f_r(x, t) = f(x, t) − g(t)² s(x, t), [B, ...] (one score call)."""
    sde = problem.sde
    return sde.drift(x, t) - expand_like(sde.diffusion(t) ** 2, x) * problem.score(x, t)


@dataclass(frozen=True)
class _ReverseSDEPair:
    """What GGF's two rules share: steps of h in t from T down to eps, one normal draw per attempt,
    finished within 1e-6 of eps (GGF's loop condition). ``extrapolation``: continue from the
    higher-order state."""

    extrapolation: bool = True
    nfe_per_step: ClassVar[int] = 2
    order: ClassVar[float] = 1.0
    stochastic: ClassVar[bool] = True
    end_tol: ClassVar[float] = 1e-6

    def init(self, problem: Problem, x: Tensor, ts) -> None:
        del problem, x, ts

    def span(self, problem: Problem, t: Tensor) -> Tensor:
        return t - problem.sde.eps

    def advance(self, problem: Problem, t: Tensor, h: Tensor, last: Tensor) -> Tensor:
        del problem, last
        return t - h


@dataclass(frozen=True)
class ImprovedEulerRule(_ReverseSDEPair):
    """Stochastic Improved Euler (Heun) with an embedded Euler–Maruyama error estimate (GGF §3.1).

    Integrates: the reverse SDE. Order: strong 1 for the additive noise of the reverse SDE (the EM
    pair is strong 1 too; the drift part is second order). NFE per step: 2. SDEs: VE, VP, sub-VP.
    Source: Jolicoeur-Martineau et al. 2021, Algorithm 1 (``sde_improved_euler=True``).
    """

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, z: Tensor,
             h: Tensor | None = None) -> Step:
        g = problem.sde.diffusion
        h = t - t_next if h is None else h
        sqrt_h, h_x = expand_like(h.sqrt(), x), expand_like(h, x)
        k1 = -h_x * _reverse_drift(problem, x, t) + expand_like(g(t), x) * sqrt_h * z
        x_em = x + k1
        k2 = -h_x * _reverse_drift(problem, x_em, t_next) + expand_like(g(t_next), x) * sqrt_h * z
        x_heun = x + 0.5 * (k1 + k2)
        x_new, x_check = (x_heun, x_em) if self.extrapolation else (x_em, x_heun)
        return Step(x_new, x_new, state, error=0.5 * (k2 - k1), x_check=x_check)


@dataclass(frozen=True)
class LambaEMRule(_ReverseSDEPair):
    """Lamba's adaptive Euler–Maruyama: the drift re-evaluated at the noise-free EM point (GGF App.,
    ``sde_improved_euler=False``).

    x_mean = x − h f_r(x, t); f_r' = f_r(x_mean, t − h); with extrapolation x_mean = x − ½h(f_r + f_r');
    x_new = x_mean + g(t)√h z; E = ½h(f_r' − f_r); the tolerance is measured on x_mean.

    Integrates: the reverse SDE. Order: strong 1 (additive noise). NFE per step: 2. SDEs: VE, VP,
    sub-VP. Source: Lamba 2003 as used by Jolicoeur-Martineau et al. 2021.
    """

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, z: Tensor,
             h: Tensor | None = None) -> Step:
        h = t - t_next if h is None else h
        h_x = expand_like(h, x)
        d1 = _reverse_drift(problem, x, t)
        x_mean = x - h_x * d1
        d2 = _reverse_drift(problem, x_mean, t_next)
        if self.extrapolation:
            x_mean = x - 0.5 * h_x * (d1 + d2)
        x_new = x_mean + expand_like(problem.sde.diffusion(t) * h.sqrt(), x) * z
        return Step(x_new, x_mean, state, error=0.5 * h_x * (d2 - d1), x_check=x_mean)


@dataclass(frozen=True, kw_only=True)
class AdaptiveImprovedEuler(Adaptive):
    """Gotta Go Fast's adaptive sampler: stochastic Improved Euler with an EM error estimate.

    Integrates: the reverse SDE from T to eps with per-sample step sizes, then the final denoise.
    Order: strong 1 (additive noise). NFE per step: 2 (per attempt, rejections included) + 1 denoise.
    SDEs: VE, VP, sub-VP. Source: Jolicoeur-Martineau et al. 2021, Algorithm 1 (REFERENCE §2.1);
    options in :class:`Adaptive` and :class:`IntegralController`; ``extrapolation``: continue from the
    higher-order state (default, GGF) or from the lower one.
    """

    extrapolation: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(type(self).__name__, "extrapolation", self.extrapolation, (True, False))

    @property
    def rule(self) -> ImprovedEulerRule:
        return ImprovedEulerRule(extrapolation=self.extrapolation)


@dataclass(frozen=True, kw_only=True)
class AdaptiveEM(AdaptiveImprovedEuler):
    """Gotta Go Fast's adaptive sampler with Lamba's EM rule (``sde_improved_euler=False``).

    Integrates: the reverse SDE from T to eps with per-sample step sizes, then the final denoise.
    Order: strong 1 (additive noise). NFE per step: 2 + 1 denoise. SDEs: VE, VP, sub-VP. Source:
    Jolicoeur-Martineau et al. 2021 (REFERENCE §2.1, "Option sde_improved_euler=False").
    """

    @property
    def rule(self) -> LambaEMRule:
        return LambaEMRule(extrapolation=self.extrapolation)
