"""What each sampler needs from a noise path, in one place, and the check made before any score call.

A Gaussian path (:mod:`models.paths`) gives α_t, σ_t, λ_t, f(t), g²(t) everywhere on its time domain,
but not every sampler can run on every path:

* ``tables`` — score_sde's discrete tables (``discretize``: reverse diffusion's 'table', the
  Langevin corrector's α_i, the 'reverse_diffusion' final denoise) exist on VE, VP and sub-VP only;
  ``ancestral`` (ancestral sampling's 'table') on VE and VP only;
* ``ve`` — NCSNv2's annealed Langevin dynamics is written for the VE perturbation σ_i;
* ``vp`` — DDIM's ``alphas='table'`` is the discrete DDPM table of a VP SDE;
* ``alpha_T`` — α_T > 0: the sampler evaluates at T something that is infinite where α_T = 0
  (flow matching at T = 1): λ_T or σ_ve(T) = σ_T/α_T (grids in σ or λ, EDM, LMS, iPNDM, singlestep
  and noise-prediction DPM-Solver, UniPC, adaptive DPM-Solver, SDE-DPM-Solver++), f(T) and g²(T) (the
  reverse-SDE samplers), x̂₀ = (x − σ ε̂)/α (DDIM), or the transition a = α_T/α_next (reverse
  diffusion and ancestral sampling with ``discretization='transition'``).

Where α_T = 0 these start from pure noise: the probability-flow samplers in t (``pf_euler``,
``pf_heun``, ``scipy_ode``, ``torchdiffeq_ode``) through the velocity α̇ x̂₀ + σ̇ ε̂
(:func:`solvers.ode.velocity`), and DPM-Solver++ multistep with data prediction on a grid in t
(schedule 'uniform' or 'quadratic'), whose first step from λ = −inf is the DDIM step
x = (σ_next/σ_T) x_T + α_next x̂₀ (:func:`solvers.exp_integrator.exp_integrator_step`).

``REQUIREMENTS`` maps a sampler class to a function of the configured sampler returning its needs;
:func:`check` raises ValueError with the reason, before any score call (bench/grid.py calls it when a
grid is loaded). A class not in the dict (a user's sampler by import path) has no declared needs.
"""

from __future__ import annotations

from collections.abc import Callable

from solvers.adaptive import AdaptiveEM, AdaptiveImprovedEuler
from solvers.ddim import DDIM
from solvers.denoiser import alpha_vanishes_at_T
from solvers.dpm_adaptive import DPMSolverAdaptive
from solvers.dpm_solver import DPMSolver, DPMSolverPP, DPMSolverPPSDE
from solvers.edm import EDMHeun, EDMStochastic
from solvers.ipndm import IPNDM
from solvers.langevin import AnnealedLangevin, PredictorCorrector
from solvers.lms import LMS
from solvers.ode import ProbabilityFlowEuler, ProbabilityFlowHeun
from solvers.scipy_ode import ScipyProbabilityFlow
from solvers.sde import AncestralSampling, EulerMaruyama, ReverseDiffusion
from solvers.torchdiffeq_ode import TorchdiffeqProbabilityFlow
from solvers.torchsde_solver import TorchSDE
from solvers.unipc import UniPC

__all__ = ["REQUIREMENTS", "NEEDS", "needs", "refusal", "check"]

T_SCHEDULES = ("uniform", "quadratic")  # grids defined in t (the others are in σ_ve or λ)

# What each need means, in the words of the refusal.
NEEDS = {
    "tables": "score_sde's discrete tables (VE, VP, sub-VP)",
    "ancestral": "score_sde's ancestral step (VE, VP)",
    "ve": "a VE path (noise levels σ_i)",
    "vp": "a VP path (the discrete DDPM table)",
    "alpha_T": "α_T > 0 (it evaluates λ, σ/α, f or g² at T, infinite where α_T = 0)",
}


def _schedule(sampler) -> tuple[str, ...]:
    return () if getattr(sampler, "schedule", "uniform") in T_SCHEDULES else ("alpha_T",)


def _denoise(sampler) -> tuple[str, ...]:
    return ("tables",) if getattr(sampler, "denoise", None) == "reverse_diffusion" else ()


def _discretization(sampler, table_need: str) -> tuple[str, ...]:
    if sampler.discretization == "table":
        return ("tables", table_need) if table_need != "tables" else ("tables",)
    return ("alpha_T",)


def _reverse_diffusion(sampler) -> tuple[str, ...]:
    return _discretization(sampler, "tables")


def _ancestral(sampler) -> tuple[str, ...]:
    # AncestralSampling.check refuses a path without ``ancestral()`` whatever the discretisation.
    return ("ancestral", *_discretization(sampler, "ancestral"))


def _pc(sampler) -> tuple[str, ...]:
    rule = sampler.rule
    out = set()
    if rule.predictor is not None:
        out |= set(needs(rule.predictor))
    if rule.corrector is not None:
        out.add("tables")  # the corrector's α_i (langevin_alpha)
    return tuple(sorted(out))


def _ddim(sampler) -> tuple[str, ...]:
    return ("alpha_T", "vp") if sampler.alphas == "table" else ("alpha_T",)


def _dpm_solver(sampler) -> tuple[str, ...]:
    starts_at_zero = (sampler.prediction == "data" and sampler.method == "multistep"
                      and sampler.warmup == "lower_order")
    return _schedule(sampler) if starts_at_zero else ("alpha_T",)


def _always(*need: str) -> Callable:
    return lambda sampler: need


REQUIREMENTS: dict[type, Callable] = {
    EulerMaruyama: _always("alpha_T"),
    ReverseDiffusion: _reverse_diffusion,
    AncestralSampling: _ancestral,
    PredictorCorrector: _pc,
    AnnealedLangevin: _always("ve"),
    ProbabilityFlowEuler: _schedule,
    ProbabilityFlowHeun: _schedule,
    TorchSDE: _always("alpha_T"),
    ScipyProbabilityFlow: _denoise,
    TorchdiffeqProbabilityFlow: _denoise,
    AdaptiveImprovedEuler: _always("alpha_T"),
    AdaptiveEM: _always("alpha_T"),
    DDIM: _ddim,
    EDMHeun: _always("alpha_T"),
    EDMStochastic: _always("alpha_T"),
    DPMSolver: _dpm_solver,
    DPMSolverPP: _dpm_solver,
    DPMSolverPPSDE: _always("alpha_T"),
    DPMSolverAdaptive: _always("alpha_T"),
    UniPC: _always("alpha_T"),
    IPNDM: _always("alpha_T"),
    LMS: _always("alpha_T"),
}


def needs(sampler) -> tuple[str, ...]:
    """The needs (keys of ``NEEDS``) of a configured sampler; () for a class not in ``REQUIREMENTS``."""
    fn = REQUIREMENTS.get(type(sampler))
    return () if fn is None else tuple(dict.fromkeys(fn(sampler)))


def _has(sde, need: str) -> bool:
    if need == "tables":
        return callable(getattr(sde, "discretize", None)) and callable(getattr(sde, "langevin_alpha", None))
    if need == "ancestral":
        return callable(getattr(sde, "ancestral", None))
    if need == "ve":
        return sde.kind == "ve"
    if need == "vp":
        return sde.kind == "vp"
    if need == "alpha_T":
        return not alpha_vanishes_at_T(sde)
    raise KeyError(need)


def refusal(sampler, sde) -> str | None:
    """Why ``sampler`` cannot run on the path ``sde`` (with its T and eps), or None."""
    missing = [n for n in needs(sampler) if not _has(sde, n)]
    if not missing:
        return None
    name = type(sampler).__name__
    why = "; ".join(NEEDS[n] for n in missing)
    hint = ""
    if "alpha_T" in missing:
        hint = (f"; run it with T below {float(sde.T):g}" + (
            ", or (DPM-Solver++ multistep) schedule 'uniform'" if isinstance(sampler, DPMSolver) else "")
            + (", or schedule 'uniform'" if isinstance(sampler, ProbabilityFlowEuler | ProbabilityFlowHeun) else ""))
    return f"{name} cannot run on the {sde.kind!r} path with T={float(sde.T):g}: it needs {why}{hint}"


def check(sampler, sde) -> None:
    """Raise ValueError naming the reason if ``sampler`` cannot run on ``sde`` (no score call is made)."""
    why = refusal(sampler, sde)
    if why is not None:
        raise ValueError(why)
