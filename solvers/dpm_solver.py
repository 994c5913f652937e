"""DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps") and DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models"): exponential integrators of the probability-flow
ODE in the half log-SNR λ_t = log(α_t/σ_t), on every SDE through its marginal (α_t, σ_t).

With h = λ_next − λ_t and the model output expanded in λ around λ_t (derivatives m^{(k)}), the exact
solutions of the ODE's linear part give (Lu et al. 2022, Eq. 3.4; Lu et al. 2022b, Eq. 8–9)

    noise prediction ε̂ = −σ s:   x_next = (α_next/α_t) x − σ_next Σ_k h^{k+1} φ_{k+1}(h)  ε̂^{(k)}
    data prediction x̂₀:         x_next = (σ_next/σ_t) x + α_next Σ_k h^{k+1} φ_{k+1}(−h) x̂₀^{(k)}

with φ_k of :func:`solvers.denoiser.phi` (φ₁(z) = (e^z − 1)/z). Truncating at k = n − 1 and
estimating the derivatives from extra evaluations inside the step (singlestep) or from the previous
steps' outputs (multistep) gives a method of order n. :class:`DPMSolverAdaptive` pairs two
singlestep orders for an error estimate and adapts h per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Solution, SolveStats, Status, check_choice, check_positive, finite_status
from solvers.denoiser import data_prediction, log_snr, noise_prediction, phi, time_of_log_snr
from solvers.fixed import DENOISE, FixedGridSampler, tweedie

__all__ = ["DPMSolver", "DPMSolverPP", "DPMSolverPPSDE", "DPMSolverAdaptive", "MultistepSampler",
           "exp_integrator_step", "model_output", "PREDICTIONS"]

PREDICTIONS = ("noise", "data")
METHODS = ("singlestep", "multistep")
LOWER_ORDER_FINAL_BELOW = 15  # lower_order_final applies to grids of fewer steps (DPM-Solver's code)


def model_output(problem: Problem, x: Tensor, t: Tensor, prediction: str) -> Tensor:
    """ε̂(x, t) or x̂₀(x, t), [B, ...] (one score call)."""
    return noise_prediction(problem, x, t) if prediction == "noise" else data_prediction(problem, x, t)


def exp_integrator_step(problem: Problem, prediction: str, x: Tensor, t: Tensor, t_next: Tensor, h: Tensor,
                        terms: list[Tensor], weights: list[Tensor] | None = None) -> Tensor:
    """x_next from x at t, given the model output and its λ-derivatives ``terms`` = [m, m', m'', ...] at t.

    ``h`` = λ_next − λ_t [B]. The weight of term k is h^{k+1} φ_{k+1}(±h) unless ``weights`` overrides it.
    """
    alpha_t, sigma_t = problem.marginal(t)
    alpha_n, sigma_n = problem.marginal(t_next)
    if prediction == "data":
        lin, c, z = sigma_n / sigma_t, alpha_n, -h
    else:
        lin, c, z = alpha_n / alpha_t, -sigma_n, h
    out = expand_like(lin, x) * x
    for k, d in enumerate(terms):
        w = h ** (k + 1) * phi(k + 1, z) if weights is None else weights[k]
        out = out + expand_like(c * w, x) * d
    return out


def lambda_derivatives(lams: list[Tensor], outs: list[Tensor]) -> list[Tensor]:
    """[m, m', m''] at lams[0] of the polynomial through (λ_j, m_j), newest first (Newton divided differences)."""
    terms = [outs[0]]
    if len(outs) >= 2:
        dd01 = (outs[0] - outs[1]) / expand_like(lams[0] - lams[1], outs[0])
        terms.append(dd01)
    if len(outs) >= 3:
        dd12 = (outs[1] - outs[2]) / expand_like(lams[1] - lams[2], outs[0])
        dd012 = (dd01 - dd12) / expand_like(lams[0] - lams[2], outs[0])
        terms[1] = dd01 + dd012 * expand_like(lams[0] - lams[1], outs[0])
        terms.append(2 * dd012)
    return terms


def _check_order(owner: str, value, choices=(1, 2, 3)) -> None:
    check_choice(owner, "solver_order", value, choices)
    if isinstance(value, bool):
        raise ValueError(f"{owner}: solver_order must be an integer, got {value!r}")


def _check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")


# ---- the multistep driver -----------------------------------------------------------------------
WARMUPS = ("lower_order", "singlestep")


@dataclass(frozen=True, kw_only=True)
class MultistepSampler(FixedGridSampler):
    """Fixed grid, one model evaluation per step, a history of past outputs (DPM-Solver++ multistep,
    UniPC).

    Warm-up (the first p − 1 steps, before p outputs exist): ``warmup='lower_order'`` (the reference
    codes' choice, default) takes order min(p, i + 1) at step i with 1 NFE. Its first step is then
    first order, with local error O(h²), which caps the global order at 2 for p = 3 (LMM theory needs
    starting values of order p); ``warmup='singlestep'`` takes those p − 1 steps with singlestep
    DPM-Solver of order p instead (p NFE each), so the global order is p. With ``lower_order_final``
    and fewer than 15 steps the last steps use order ≤ steps left, as DPM-Solver's reference code does
    for stability at very few steps.
    """

    solver_order: int = 2
    prediction: str = "data"
    lower_order_final: bool = True
    warmup: str = "lower_order"
    schedule: str = "log_snr"

    conventions: ClassVar[tuple[str, ...]] = ("grid",)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        _check_order(name, self.solver_order)
        check_choice(name, "prediction", self.prediction, PREDICTIONS)
        _check_bool(name, "lower_order_final", self.lower_order_final)
        check_choice(name, "warmup", self.warmup, WARMUPS)

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return 1

    @property
    def expected_nfe(self) -> int:
        n = self.steps_taken
        warm = sum(self.warmup_order(i, n) - 1 for i in range(n) if self.warmup_order(i, n))
        return n * self.nfe_per_step + warm + (self.denoise in ("tweedie", "tweedie_ggf"))

    def _final_cap(self, p: int, i: int, n: int) -> int:
        return min(p, n - i) if self.lower_order_final and n < LOWER_ORDER_FINAL_BELOW else p

    def step_order(self, i: int, n: int) -> int:
        """Multistep order of step i of n."""
        return self._final_cap(min(self.solver_order, i + 1), i, n)

    def warmup_order(self, i: int, n: int) -> int:
        """Order of the singlestep warm-up taken at step i, or 0 (a multistep step)."""
        if self.warmup != "singlestep" or i >= self.solver_order - 1:
            return 0
        return self._final_cap(self.solver_order, i, n)

    def update(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, lams: list[Tensor],
               outs: list[Tensor], lam_next: Tensor, noise, mids: dict | None = None) -> Tensor:
        """x at t_next from x at t and the history (newest first, ``len(outs)`` = this step's order);
        ``mids`` maps r to the time at λ + r h (precomputed for singlestep steps)."""
        raise NotImplementedError

    def midpoint_ratios(self) -> tuple[float, ...]:
        """The r of the intermediate times t(λ + r h) that singlestep steps need."""
        return SINGLESTEP_RATIOS[self.solver_order] if self.warmup == "singlestep" else ()

    def revise(self, problem: Problem, x: Tensor, out: Tensor, memo) -> Tensor:
        """Hook run when the output ``out`` at the new state x is known (UniPC's corrector); ``memo`` is
        what the previous multistep step left (None at the first step and after a warm-up step)."""
        del problem, out, memo
        return x

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution:
        self.check(problem)
        counter = problem.counter
        nfe0 = counter.nfe
        B = x_init.shape[0]
        ts = self.grid(problem).to(x_init.device)[:, None].expand(-1, B)  # [n_steps, B]
        times = ts.unbind(0)  # one tensor per grid point (step i's t_next is step i + 1's t)
        lam = log_snr(problem.sde, ts)
        n = self.steps_taken
        # Intermediate times of singlestep steps, all at once (one inversion of λ for the whole grid).
        mid = {r: time_of_log_snr(problem.sde, lam[:-1] + r * (lam[1:] - lam[:-1])) for r in self.midpoint_ratios()}
        x = x_init
        lams: list[Tensor] = []
        outs: list[Tensor] = []  # newest first
        memo = None
        with torch.no_grad():
            for i in range(n):
                t, t_next = times[i], times[i + 1]
                out = model_output(problem, x, t, self.prediction)
                x = self.revise(problem, x, out, memo)
                lams.insert(0, lam[i])
                outs.insert(0, out)
                del lams[self.solver_order:], outs[self.solver_order:]
                q = self.warmup_order(i, n)
                if q:  # singlestep warm-up of order q (q − 1 extra calls)
                    x, memo = singlestep(problem, self.prediction, x, t, t_next, lam[i], lam[i + 1] - lam[i],
                                         out, q, {r: v[i] for r, v in mid.items()}), None
                    continue
                p = self.step_order(i, n)
                x_next = self.update(problem, x, t, t_next, lams[:p], outs[:p], lam[i + 1], noise,
                                     {r: v[i] for r, v in mid.items()})
                memo = (x, t, t_next, lams[:p], outs[:p], lam[i + 1])
                x = x_next
            if self.denoise in ("tweedie", "tweedie_ggf"):
                x = tweedie(problem, x, ts[-1], divide_by_alpha=self.denoise == "tweedie")
        status, message = finite_status(x)
        return Solution(x, SolveStats(nfe=counter.nfe - nfe0, n_steps=n, n_accepted=n), status, message)


SINGLESTEP_RATIOS = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}


def singlestep(problem: Problem, pred: str, x: Tensor, t: Tensor, t_next: Tensor, lam: Tensor, h: Tensor,
               m0: Tensor, order: int, mids: dict | None = None) -> Tensor:
    """One singlestep DPM-Solver(++) step of order 1–3 from t to t_next (order − 1 calls besides m0).

    ``mids`` maps r to the precomputed time t(λ + r h); missing ones are found by inverting λ.
    """
    mids = mids or {}
    if order == 1:
        return exp_integrator_step(problem, pred, x, t, t_next, h, [m0])
    if order == 2:
        return dpm_solver_2(problem, pred, x, t, t_next, lam, h, m0, r1=0.5, s1=mids.get(0.5))[0]
    return dpm_solver_3(problem, pred, x, t, t_next, lam, h, m0, s1=mids.get(1 / 3), s2=mids.get(2 / 3))[0]


# ---- DPM-Solver / DPM-Solver++ ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DPMSolver(MultistepSampler):
    """DPM-Solver of order 1–3, singlestep or multistep, with noise or data prediction.

    Integrates: the probability-flow ODE, in λ. Order: ``solver_order`` (multistep with the default
    lower-order warm-up: min(``solver_order``, 2) asymptotically, see :class:`MultistepSampler`).
    NFE per step: ``solver_order`` (singlestep) or 1 (multistep; + (p − 1)² with
    ``warmup='singlestep'``). SDEs: VE, VP, sub-VP.

    * singlestep, order 1: DPM-Solver-1 (Lu et al. 2022, Eq. 3.7) = DDIM.
    * singlestep, order 2: DPM-Solver-2 (Lu et al. 2022, Algorithm 1, r₁ = ½) for noise prediction;
      DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1) for data prediction.
    * singlestep, order 3: DPM-Solver-3 (Lu et al. 2022, Algorithm 2, r₁ = ⅓, r₂ = ⅔), and its
      data-prediction analogue.
    * multistep, order 2: Lu et al. 2022b, Algorithm 2 (DPM-Solver++(2M)); for noise prediction the
      same with ε̂ (DPM-Solver-2M). x_next = lin·x + c·(e^{±h} − 1)[(1 + 1/(2r)) m_i − 1/(2r) m_{i−1}].
    * multistep, order 3: the order-3 truncation of the λ-Taylor expansion above (Lu et al. 2022b,
      Eq. 9), with m' and m'' from Newton divided differences of the last three outputs (3M).

    Singlestep steps always use ``solver_order``; ``lower_order_final`` applies to multistep only.
    Intermediate times of singlestep steps come from inverting λ (the SDE's closed form, float64).

    Args:
        solver_order: 1, 2 or 3.
        method: 'singlestep' or 'multistep'.
        prediction: 'noise' (DPM-Solver) or 'data' (DPM-Solver++).
        lower_order_final: lower orders on the last steps of short (< 15 step) multistep grids.
        warmup: 'lower_order' (reference codes) or 'singlestep' (multistep only; see MultistepSampler).
    """

    solver_order: int = 3
    method: str = "singlestep"
    prediction: str = "noise"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(type(self).__name__, "method", self.method, METHODS)

    @property
    def order(self) -> float:  # type: ignore[override]
        """Global order: ``solver_order``, but at most 2 for multistep with the lower-order warm-up."""
        if self.method == "multistep" and self.warmup == "lower_order":
            return float(min(self.solver_order, 2))
        return float(self.solver_order)

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return self.solver_order if self.method == "singlestep" else 1

    def step_order(self, i: int, n: int) -> int:
        return self.solver_order if self.method == "singlestep" else super().step_order(i, n)

    def warmup_order(self, i: int, n: int) -> int:
        return 0 if self.method == "singlestep" else super().warmup_order(i, n)

    def midpoint_ratios(self) -> tuple[float, ...]:
        return SINGLESTEP_RATIOS[self.solver_order] if self.method == "singlestep" else super().midpoint_ratios()

    def update(self, problem, x, t, t_next, lams, outs, lam_next, noise, mids=None):
        del noise
        h = lam_next - lams[0]
        if self.method == "multistep":
            if len(outs) == 2:  # DPM-Solver++(2M), Algorithm 2: weight ½ h φ₁ on h·m'.
                w0 = h * phi(1, -h if self.prediction == "data" else h)
                terms = [outs[0], outs[0] - outs[1]]
                return exp_integrator_step(problem, self.prediction, x, t, t_next, h, terms,
                                           [w0, w0 * 0.5 * h / (lams[0] - lams[1])])
            return exp_integrator_step(problem, self.prediction, x, t, t_next, h, lambda_derivatives(lams, outs))
        return singlestep(problem, self.prediction, x, t, t_next, lams[0], h, outs[0], self.solver_order, mids)


def dpm_solver_2(problem: Problem, pred: str, x: Tensor, t: Tensor, t_next: Tensor, lam: Tensor, h: Tensor,
                 m0: Tensor, r1: float, s1: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """DPM-Solver-2 / DPM-Solver++(2S) from t to t_next (1 call at s₁ = t(λ + r₁h)): (x_next, m(s₁))."""
    s1 = time_of_log_snr(problem.sde, lam + r1 * h) if s1 is None else s1
    u1 = exp_integrator_step(problem, pred, x, t, s1, r1 * h, [m0])
    m1 = model_output(problem, u1, s1, pred)
    # The difference (m₁ − m₀)/(r₁h) estimates m'; Algorithm 1 weights it by ½ h φ₁ (not h φ₂).
    w0 = h * phi(1, -h if pred == "data" else h)
    x_next = exp_integrator_step(problem, pred, x, t, t_next, h, [m0, m1 - m0], [w0, w0 / (2 * r1)])
    return x_next, m1


def dpm_solver_3(problem: Problem, pred: str, x: Tensor, t: Tensor, t_next: Tensor, lam: Tensor, h: Tensor,
                 m0: Tensor, r1: float = 1 / 3, r2: float = 2 / 3, s1: Tensor | None = None,
                 s2: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """DPM-Solver-3 (Lu et al. 2022, Algorithm 2) from t to t_next (2 calls): (x_next, m(s₁))."""
    s1 = time_of_log_snr(problem.sde, lam + r1 * h) if s1 is None else s1
    s2 = time_of_log_snr(problem.sde, lam + r2 * h) if s2 is None else s2
    u1 = exp_integrator_step(problem, pred, x, t, s1, r1 * h, [m0])
    m1 = model_output(problem, u1, s1, pred)
    d1 = (m1 - m0) / expand_like(r1 * h, x)  # ≈ m'
    u2 = exp_integrator_step(problem, pred, x, t, s2, r2 * h, [m0, d1])
    m2 = model_output(problem, u2, s2, pred)
    d2 = (m2 - m0) / expand_like(r2 * h, x)  # ≈ m' (the choice r₂ = ⅔ cancels the m'' error)
    return exp_integrator_step(problem, pred, x, t, t_next, h, [m0, d2]), m1


@dataclass(frozen=True, kw_only=True)
class DPMSolverPP(DPMSolver):
    """DPM-Solver++ (Lu et al. 2022b): DPM-Solver with data prediction x̂₀, multistep by default.

    Integrates: the probability-flow ODE, in λ. Order: ``solver_order`` (2: DPM-Solver++(2M),
    Algorithm 2; 3: 3M, of order 3 with ``warmup='singlestep'`` and asymptotically 2 with the
    reference codes' lower-order warm-up). NFE per step: 1 (multistep) or ``solver_order``
    (singlestep: 2S, Algorithm 1). SDEs: VE, VP, sub-VP. Options as :class:`DPMSolver`.
    """

    solver_order: int = 2
    method: str = "multistep"
    prediction: str = "data"


@dataclass(frozen=True, kw_only=True)
class DPMSolverPPSDE(MultistepSampler):
    """SDE-DPM-Solver++ (Lu et al. 2022b, §5/App.: SDE-DPM-Solver++1 and ++(2M)), data prediction.

    The reverse SDE written in λ has the linear part's exact solution
    x_next = (σ_next/σ_t) e^{−h} x + 2 α_next ∫ e^{−2(λ_next − λ)} x̂₀(λ) dλ + σ_next √(1 − e^{−2h}) z;
    expanding x̂₀ in λ gives weights 2 h^{k+1} φ_{k+1}(−2h) (k = 0: 1 − e^{−2h}); order 2 takes x̂₀'
    from the last two outputs (multistep).

    Integrates: the reverse SDE. Order: strong 1 (declared 1 for both orders; ``solver_order`` = 2
    only reduces the drift's error). NFE per step: 1. SDEs: VE, VP, sub-VP. One noise draw per step.

    Args:
        solver_order: 1 or 2.
    """

    order: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_order(type(self).__name__, self.solver_order, (1, 2))
        check_choice(type(self).__name__, "warmup", self.warmup, ("lower_order",))
        if self.prediction != "data":
            raise ValueError(f"{type(self).__name__}: invalid prediction={self.prediction!r}; expected one of: data")

    def update(self, problem, x, t, t_next, lams, outs, lam_next, noise, mids=None):
        del mids
        h = lam_next - lams[0]
        sigma_t = problem.marginal(t)[1]
        alpha_n, sigma_n = problem.marginal(t_next)
        terms = lambda_derivatives(lams, outs)
        x_next = expand_like(sigma_n / sigma_t * torch.exp(-h), x) * x
        for k, d in enumerate(terms):
            x_next = x_next + expand_like(alpha_n * 2 * h ** (k + 1) * phi(k + 1, -2 * h), x) * d
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        return x_next + expand_like(sigma_n * (-torch.expm1(-2 * h)).sqrt(), x) * z


# ---- adaptive step size -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DPMSolverAdaptive:
    """DPM-Solver with adaptive step size (Lu et al. 2022, §4.2 and Algorithm 4 of App. C), per sample.

    Each attempt from λ_s with step h (in λ) computes a lower- and a higher-order solution sharing
    their evaluations: DPM-Solver-12 (``solver_order=2``: DPM-Solver-1 and -2 with r₁ = ½, 2 calls)
    or DPM-Solver-23 (``solver_order=3``: DPM-Solver-2 with r₁ = ⅓ and DPM-Solver-3, 3 calls). With
    δ = max(atol, rtol · max(|x_lower|, |x_prev|)) elementwise and E = RMS((x_higher − x_lower)/δ)
    per sample, the step is accepted if E ≤ 1 (x ← x_higher, x_prev ← x_lower), and in all cases
    h ← min(θ h E^{−1/solver_order}, λ_eps − λ_s). Each sample has its own λ and h (the reference code
    shares one h across the batch); only running samples are evaluated.

    Integrates: the probability-flow ODE, in λ. Order: ``solver_order`` (error estimate of order
    ``solver_order − 1``). NFE per attempt: ``solver_order`` (+1 for ``denoise='tweedie'``);
    ``stats.nfe`` counts batch calls, ``stats.nfe_per_sample`` each sample's. SDEs: VE, VP, sub-VP.

    Args:
        solver_order: 2 (DPM-Solver-12) or 3 (DPM-Solver-23, default).
        rtol, atol: tolerances (paper for images: rtol 0.05, atol 0.0078 on [−1, 1] data).
        h_init: first step in λ (paper: 0.05). safety: θ (paper: 0.9).
        prediction: 'noise' (paper) or 'data'.
        denoise: 'tweedie' (default), 'tweedie_ggf' or 'none'.
        max_steps: attempts before giving up (status 'max_steps').
    """

    solver_order: int = 3
    rtol: float = 0.05
    atol: float = 0.0078
    h_init: float = 0.05
    safety: float = 0.9
    prediction: str = "noise"
    denoise: str = "tweedie"
    max_steps: int = 1000

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_order(name, self.solver_order, (2, 3))
        for key in ("rtol", "atol", "h_init", "safety"):
            check_positive(name, key, getattr(self, key))
        check_positive(name, "max_steps", self.max_steps, integer=True)
        check_choice(name, "prediction", self.prediction, PREDICTIONS)
        check_choice(name, "denoise", self.denoise, DENOISE["grid"])

    @property
    def order(self) -> float:
        return float(self.solver_order)

    def _pair(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, lam: Tensor,
              h: Tensor) -> tuple[Tensor, Tensor]:
        """(x_lower, x_higher) at t_next."""
        pred = self.prediction
        m0 = model_output(problem, x, t, pred)
        if self.solver_order == 2:
            x_lower = exp_integrator_step(problem, pred, x, t, t_next, h, [m0])
            x_higher, _ = dpm_solver_2(problem, pred, x, t, t_next, lam, h, m0, r1=0.5)
            return x_lower, x_higher
        x_higher, m1 = dpm_solver_3(problem, pred, x, t, t_next, lam, h, m0)
        # DPM-Solver-2 with r₁ = ⅓ reuses m(s₁) of the third-order step.
        w0 = h * phi(1, -h if pred == "data" else h)
        x_lower = exp_integrator_step(problem, pred, x, t, t_next, h, [m0, m1 - m0], [w0, w0 * 1.5])
        return x_lower, x_higher

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution:
        del noise  # deterministic
        sde, counter = problem.sde, problem.counter
        nfe0 = counter.nfe
        B, dev = x_init.shape[0], x_init.device
        t = torch.full((B,), float(sde.T), dtype=torch.float64, device=dev)
        lam = log_snr(sde, t)
        lam_end = log_snr(sde, torch.full_like(t, sde.eps))
        h = torch.full_like(t, float(self.h_init))
        x, x_prev = x_init.clone(), x_init.clone()
        evals = torch.zeros(B, dtype=torch.long, device=dev)
        n_acc, n_rej = torch.zeros_like(evals), torch.zeros_like(evals)
        iterations, status, message = 0, Status.OK, ""
        with torch.no_grad():
            while True:
                running = t > sde.eps  # finished samples sit exactly at eps
                if not bool(running.any()):
                    break
                if iterations >= self.max_steps:
                    status = Status.MAX_STEPS
                    message = f"max_steps={self.max_steps} reached with {int(running.sum())} of {B} samples unfinished"
                    break
                iterations += 1
                # Attempt one step for the running samples; the last one lands exactly on eps.
                idx = running.nonzero().squeeze(1)
                xs, ts, ls = x[idx], t[idx], lam[idx]
                hs = torch.minimum(h[idx], lam_end[idx] - ls)
                last = hs >= lam_end[idx] - ls
                t_next = torch.where(last, torch.full_like(ts, sde.eps), time_of_log_snr(sde, ls + hs))
                x_lower, x_higher = self._pair(problem, xs, ts, t_next, ls, hs)
                evals[idx] += self.solver_order
                # Error relative to the mixed tolerance, RMS per sample.
                delta = torch.maximum(torch.full_like(x_lower, self.atol),
                                      self.rtol * torch.maximum(x_lower.abs(), x_prev[idx].abs()))
                err = ((x_higher - x_lower) / delta).flatten(1).pow(2).mean(1).sqrt().to(torch.float64)
                if not bool(torch.isfinite(err).all()):
                    status, message = Status.NONFINITE, f"non-finite error estimate at iteration {iterations}"
                    break
                accept = err <= 1.0
                acc_x = accept.reshape(-1, *(1,) * (xs.dim() - 1))
                x[idx] = torch.where(acc_x, x_higher, xs)
                x_prev[idx] = torch.where(acc_x, x_lower, x_prev[idx])
                t[idx] = torch.where(accept, t_next, ts)
                lam[idx] = torch.where(accept, torch.where(last, lam_end[idx], ls + hs), ls)
                h[idx] = self.safety * hs * err.clamp(min=1e-10) ** (-1.0 / self.solver_order)
                n_acc[idx] += accept.long()
                n_rej[idx] += (~accept).long()
            if status == Status.OK and self.denoise != "none":
                x = tweedie(problem, x, t, divide_by_alpha=self.denoise == "tweedie")
                evals += 1
        if status == Status.OK:
            status, message = finite_status(x)
        extra = {"iterations": iterations, "batch_size": B, "error_norm_scope": "per_sample",
                 "accepted_per_sample_mean": n_acc.double().mean().item(),
                 "rejected_per_sample_mean": n_rej.double().mean().item()}
        stats = SolveStats(nfe=counter.nfe - nfe0, n_steps=iterations, n_accepted=int(n_acc.sum()),
                           n_rejected=int(n_rej.sum()), nfe_per_sample=evals, extra=extra)
        return Solution(x, stats, status, message)
