"""Adaptive step-size SDE solvers of "Gotta Go Fast When Generating Data with Score-Based Models"
(Jolicoeur-Martineau et al. 2021, Algorithm 1), split diffrax-style into three parts:

* steppers (:class:`ImprovedEulerStepper`, :class:`LambaEMStepper`): one attempted step from t to
  t − h per sample, returning the candidate, the state the tolerance is measured on (``x_check``) and
  the local error estimate ``Step.error``;
* the step-size controller (:class:`PIController`): scaled error norm, accept/reject and the next h;
* the driver (:class:`AdaptiveImprovedEuler`, :class:`AdaptiveEM`): per-sample t and h, the loop
  until every sample reaches eps, the final denoising, and the statistics.

Conventions (REFERENCE §2.1, §2.3, §2.4 and the fixtures README §3.7):

* One z ~ N(0, I) per attempt and sample, shared by both stages, drawn afresh after a rejection.
* Improved Euler: K1 = −h f_r(x, t) + g(t)√h z, K2 = −h f_r(x + K1, t − h) + g(t − h)√h z with the
  reverse drift f_r = f − g² s; E = ½(K2 − K1). With extrapolation (default) the candidate is the
  Heun state x + ½(K1 + K2) and the tolerance is measured on the EM proposal x + K1; without, the
  other way round.
* δ = max(ε_abs, ε_rel · max(|x_prev|, |x_check|)) elementwise; E₂ = ‖E/δ‖ per sample ('l2_scaled':
  √(mean (E/δ)²) over C·H·W; 'l2'; 'linf'). Accept if E₂ ≤ 1.
* h ← min(max(t − eps, 0), θ h E₂^(−r)) for accepted *and* rejected samples (θ = 0.9, r = 0.9).
* The loop runs while any |t − eps| > 1e-6; then Tweedie x + σ(eps)² s(x, eps) (GGF's form).

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
from solvers.fixed import tweedie

__all__ = ["PIController", "AdaptiveStep", "ImprovedEulerStepper", "LambaEMStepper", "AdaptiveImprovedEuler",
           "AdaptiveEM", "ERROR_NORMS", "X_PREV", "ADAPTIVE_DENOISE"]

ERROR_NORMS = ("l2_scaled", "l2", "linf")
X_PREV = ("accepted_proposal", "current", "none")
ADAPTIVE_DENOISE = ("tweedie_ggf", "tweedie", "none")
T_TOL = 1e-6  # a sample is finished when |t − eps| <= T_TOL (GGF's loop condition)


# ---- step-size control ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PIController:
    """Per-sample accept/reject and next step size from a local error estimate (GGF §3.2, Alg. 1).

    The controller of the paper is integral-only (no proportional term): h_next = θ·h·E₂^(−r),
    capped so that no step passes eps. It sees only the error estimate, the state the tolerance is
    measured on, and the time left; the stepping rule lives in the steppers.

    Args:
        rtol: ε_rel (GGF sweeps 0.01–0.1).
        atol: ε_abs (GGF: 0.0078 for [−1, 1] data, 0.0039 for [0, 1] data; config default 0.01).
        safety: θ.
        exponent: r (the PyTorch port hard-codes 0.9 whatever its argument).
        norm: 'l2_scaled' (RMS over the sample's dimensions, the default), 'l2' or 'linf'.
        h_min: smallest step the controller may propose before the solve stops with Status.DT_MIN
            (0 disables it, as GGF, which defines h_min = 1e-10 but never uses it).
    """

    rtol: float = 1e-2
    atol: float = 1e-2
    safety: float = 0.9
    exponent: float = 0.9
    norm: str = "l2_scaled"
    h_min: float = 0.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("rtol", "atol", "safety", "exponent"):
            check_positive(name, key, getattr(self, key))
        check_choice(name, "norm", self.norm, ERROR_NORMS)
        if not (isinstance(self.h_min, int | float) and self.h_min >= 0):
            raise ValueError(f"{name}: h_min must be a number >= 0, got {self.h_min!r}")

    def error_norm(self, error: Tensor, x_check: Tensor, x_prev: Tensor | None) -> Tensor:
        """E₂ = ‖E / δ‖ per sample, δ = max(atol, rtol·max(|x_prev|, |x_check|)); [B] float64."""
        ref = x_check.abs() if x_prev is None else torch.maximum(x_prev.abs(), x_check.abs())
        ratio = (error / (self.rtol * ref).clamp(min=self.atol)).flatten(1).double()
        if self.norm == "l2_scaled":
            return ratio.pow(2).mean(1).sqrt()
        if self.norm == "l2":
            return ratio.pow(2).sum(1).sqrt()
        return ratio.abs().amax(1)

    def propose(self, h: Tensor, error: Tensor, t_left: Tensor) -> tuple[Tensor, Tensor]:
        """(accept [B] bool, h_next [B]) from the step h [B], the scaled error E₂ [B] and t − eps [B].

        h_next = min(max(t_new − eps, 0), θ·h·E₂^(−r)) with t_new = t − h if accepted, else t; a zero
        step stays zero.
        """
        accept = error <= 1
        left = torch.where(accept, t_left - h, t_left).clamp(min=0.0)
        h_ctrl = torch.where(h > 0, self.safety * h * error.pow(-self.exponent), torch.zeros_like(h))
        return accept, torch.minimum(left, h_ctrl)


# ---- steppers ------------------------------------------------------------------------------------
@dataclass
class AdaptiveStep(Step):
    x_check: Tensor | None = None  # [B, ...] state the relative tolerance is measured on


def _reverse_drift(problem: Problem, x: Tensor, t: Tensor) -> Tensor:
    """f_r(x, t) = f(x, t) − g(t)² s(x, t), [B, ...] (one score call)."""
    sde = problem.sde
    return sde.drift(x, t) - expand_like(sde.diffusion(t) ** 2, x) * problem.score(x, t)


@dataclass(frozen=True)
class _EmbeddedPairStepper:
    """A stepping rule with an embedded error estimate: ``step(problem, x, t, t_next, z)`` attempts
    t → t_next (per-sample t_next = t − h) with the one shared normal draw z [B, ...] and returns an
    :class:`AdaptiveStep`. ``extrapolation``: continue from the higher-order state."""

    extrapolation: bool = True
    nfe_per_step: ClassVar[int] = 2
    order: ClassVar[float] = 1.0


@dataclass(frozen=True)
class ImprovedEulerStepper(_EmbeddedPairStepper):
    """Stochastic Improved Euler (Heun) with an embedded Euler–Maruyama error estimate (GGF §3.1).

    Integrates: the reverse SDE. Order: strong 1 for the additive noise of the reverse SDE (the EM
    pair is strong 1 too; the drift part is second order). NFE per step: 2. SDEs: VE, VP, sub-VP.
    Source: Jolicoeur-Martineau et al. 2021, Algorithm 1 (``sde_improved_euler=True``).
    """

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, z: Tensor) -> AdaptiveStep:
        sde = problem.sde
        h = t - t_next
        sqrt_h = expand_like(h.sqrt(), x)
        h_x = expand_like(h, x)
        k1 = -h_x * _reverse_drift(problem, x, t) + expand_like(sde.diffusion(t), x) * sqrt_h * z
        x_em = x + k1
        k2 = -h_x * _reverse_drift(problem, x_em, t_next) + expand_like(sde.diffusion(t_next), x) * sqrt_h * z
        x_heun = x + 0.5 * (k1 + k2)
        error = 0.5 * (k2 - k1)
        x_new, x_check = (x_heun, x_em) if self.extrapolation else (x_em, x_heun)
        return AdaptiveStep(x=x_new, x_mean=x_new, error=error, x_check=x_check)


@dataclass(frozen=True)
class LambaEMStepper(_EmbeddedPairStepper):
    """Lamba's adaptive Euler–Maruyama: the drift re-evaluated at the noise-free EM point (GGF App.,
    ``sde_improved_euler=False``).

    x_mean = x − h f_r(x, t); f_r' = f_r(x_mean, t − h); with extrapolation x_mean = x − ½h(f_r + f_r');
    x_new = x_mean + g(t)√h z; E = ½h(f_r' − f_r); the tolerance is measured on x_mean.

    Integrates: the reverse SDE. Order: strong 1 (additive noise). NFE per step: 2. SDEs: VE, VP,
    sub-VP. Source: Lamba 2003 as used by Jolicoeur-Martineau et al. 2021.
    """

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, z: Tensor) -> AdaptiveStep:
        sde = problem.sde
        h = t - t_next
        h_x = expand_like(h, x)
        d1 = _reverse_drift(problem, x, t)
        x_mean = x - h_x * d1
        d2 = _reverse_drift(problem, x_mean, t_next)
        if self.extrapolation:
            x_mean = x - 0.5 * h_x * (d1 + d2)
        x_new = x_mean + expand_like(sde.diffusion(t) * h.sqrt(), x) * z
        return AdaptiveStep(x=x_new, x_mean=x_mean, error=0.5 * h_x * (d2 - d1), x_check=x_mean)


# ---- driver ----------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _AdaptiveSampler:
    """Options and loop shared by the adaptive samplers (see the module docstring for the algorithm).

    Args:
        rtol, atol, safety, exponent, norm, h_min: the :class:`PIController`'s.
        h_init: first step of every sample (GGF: 0.01; 0.5 for the CIFAR-10/Church VE models).
        extrapolation: continue from the higher-order state (default, GGF) or from the lower one.
        x_prev: 'accepted_proposal' (default), 'current' or 'none'; see the module docstring.
        per_sample_eval: evaluate the score only on the still-running samples (default), so the
            work follows the mean per-sample NFE; False evaluates the whole batch every iteration as
            GGF does. Both give the same samples for the same noise.
        max_steps: iteration limit (Status.MAX_STEPS, no denoising).
        denoise: 'tweedie_ggf' (default, GGF's x + σ_eps² s), 'tweedie' ((x + σ_eps² s)/α_eps) or
            'none'. 1 counted call.

    Statistics: ``nfe`` = counted calls on the batch = 2·iterations (+1 denoise) in both modes;
    ``nfe_per_sample`` [B] = the real evaluations of each sample (2 per attempt in per-sample mode,
    2 per iteration in batch mode, +1 denoise); ``n_steps`` = iterations (the slowest sample's
    attempts); ``n_accepted``/``n_rejected`` = accepted/rejected steps summed over the samples. The
    error norm is per sample (``extra['error_norm_scope'] = 'per_sample'``).
    """

    rtol: float = 1e-2
    atol: float = 1e-2
    safety: float = 0.9
    exponent: float = 0.9
    norm: str = "l2_scaled"
    h_min: float = 0.0
    h_init: float = 1e-2
    extrapolation: bool = True
    x_prev: str = "accepted_proposal"
    per_sample_eval: bool = True
    max_steps: int = 100_000
    denoise: str = "tweedie_ggf"

    nfe_per_step: ClassVar[int] = 2
    order: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        self.controller  # validates the controller's options  # noqa: B018
        check_positive(name, "h_init", self.h_init)
        check_choice(name, "extrapolation", self.extrapolation, (True, False))
        check_choice(name, "x_prev", self.x_prev, X_PREV)
        check_choice(name, "per_sample_eval", self.per_sample_eval, (True, False))
        check_positive(name, "max_steps", self.max_steps, integer=True)
        check_choice(name, "denoise", self.denoise, ADAPTIVE_DENOISE)

    @property
    def controller(self) -> PIController:
        return PIController(rtol=self.rtol, atol=self.atol, safety=self.safety, exponent=self.exponent,
                            norm=self.norm, h_min=self.h_min)

    @property
    def stepper(self):
        raise NotImplementedError

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution:
        sde, counter = problem.sde, problem.counter
        stepper, ctrl = self.stepper, self.controller
        nfe0, rows0 = counter.nfe, counter.rows
        B, device = x_init.shape[0], x_init.device
        eps = sde.eps
        t = torch.full((B,), float(sde.T), dtype=torch.float64, device=device)
        h = torch.full_like(t, min(self.h_init, sde.T - eps))
        x, x_prev = x_init.clone(), x_init.clone()
        evals = torch.zeros(B, dtype=torch.long, device=device)
        n_acc, n_rej = torch.zeros_like(evals), torch.zeros_like(evals)
        iterations, status, message = 0, Status.OK, ""
        with torch.no_grad():
            while True:
                running = (t - eps).abs() > T_TOL  # [B]
                if not bool(running.any()):
                    break
                if iterations >= self.max_steps:
                    status = Status.MAX_STEPS
                    message = f"max_steps={self.max_steps} reached with {int(running.sum())} of {B} samples unfinished"
                    break
                iterations += 1
                # Select the samples to evaluate: the running ones, or the whole batch (GGF).
                idx = running.nonzero().squeeze(1) if self.per_sample_eval else torch.arange(B, device=device)
                xs, ts, hs, xps = x[idx], t[idx], h[idx], x_prev[idx]
                z = noise.normal(tuple(xs.shape), dtype=x.dtype, device=device,
                                 index=idx if self.per_sample_eval else None)
                # Attempt one step, then let the controller judge it.
                out = stepper.step(problem, xs, ts, ts - hs, z)
                ref = {"accepted_proposal": xps, "current": xs, "none": None}[self.x_prev]
                err = ctrl.error_norm(out.error, out.x_check, ref)
                accept, h_next = ctrl.propose(hs, err, ts - eps)
                live = running[idx]  # finished samples evaluated in batch mode are left as they are
                accept = accept & live
                if not bool(torch.isfinite(err[live]).all()):
                    status, message = Status.NONFINITE, f"non-finite error estimate at iteration {iterations}"
                    break
                if ctrl.h_min > 0 and bool((live & (h_next < ctrl.h_min) & (h_next < ts - eps)).any()):
                    status, message = Status.DT_MIN, f"step size below h_min={ctrl.h_min} at iteration {iterations}"
                    break
                acc_x = accept.reshape(-1, *(1,) * (xs.dim() - 1))  # [B, 1, ...] bool
                x[idx] = torch.where(acc_x, out.x, xs)
                x_prev[idx] = torch.where(acc_x, out.x_check, xps)
                t[idx] = torch.where(accept, ts - hs, ts)
                h[idx] = torch.where(live, h_next, hs)
                evals[idx] += self.nfe_per_step
                n_acc[idx] += accept.long()
                n_rej[idx] += (live & ~accept).long()
            if status == Status.OK and self.denoise != "none":
                t_eps = torch.full_like(t, eps)
                x = tweedie(problem, x, t_eps, divide_by_alpha=self.denoise == "tweedie")
                evals += 1
        if status == Status.OK:
            status, message = finite_status(x)
        extra = {"iterations": iterations, "batch_size": B, "error_norm_scope": "per_sample",
                 "per_sample_eval": self.per_sample_eval, "x_prev": self.x_prev, "rows": counter.rows - rows0,
                 "accepted_per_sample_mean": n_acc.double().mean().item(),
                 "rejected_per_sample_mean": n_rej.double().mean().item()}
        stats = SolveStats(nfe=counter.nfe - nfe0, n_steps=iterations, n_accepted=int(n_acc.sum()),
                           n_rejected=int(n_rej.sum()), nfe_per_sample=evals, extra=extra)
        return Solution(x, stats, status, message)


@dataclass(frozen=True, kw_only=True)
class AdaptiveImprovedEuler(_AdaptiveSampler):
    """Gotta Go Fast's adaptive sampler: stochastic Improved Euler with an EM error estimate.

    Integrates: the reverse SDE from T to eps with per-sample step sizes, then Tweedie denoising.
    Order: strong 1 (additive noise). NFE per step: 2 (per attempt, rejections included) + 1 denoise.
    SDEs: VE, VP, sub-VP. Source: Jolicoeur-Martineau et al. 2021, Algorithm 1 (REFERENCE §2.1);
    options in :class:`_AdaptiveSampler`.
    """

    @property
    def stepper(self) -> ImprovedEulerStepper:
        return ImprovedEulerStepper(extrapolation=self.extrapolation)


@dataclass(frozen=True, kw_only=True)
class AdaptiveEM(_AdaptiveSampler):
    """Gotta Go Fast's adaptive sampler with Lamba's EM rule (``sde_improved_euler=False``).

    Integrates: the reverse SDE from T to eps with per-sample step sizes, then Tweedie denoising.
    Order: strong 1 (additive noise). NFE per step: 2 + 1 denoise. SDEs: VE, VP, sub-VP. Source:
    Jolicoeur-Martineau et al. 2021 (REFERENCE §2.1, "Option sde_improved_euler=False"); options in
    :class:`_AdaptiveSampler`.
    """

    @property
    def stepper(self) -> LambaEMStepper:
        return LambaEMStepper(extrapolation=self.extrapolation)
