"""Samplers for score-based diffusion models behind one interface.

``SAMPLERS`` maps a registry name to the sampler's dataclass; ``make_sampler(name, **options)``
builds one with its options validated (unknown names or options raise ValueError listing the valid
choices). ``name`` may also be an import path ``"package.module:Class"`` naming a user's own sampler
class (a frozen dataclass on one of the drivers, see docs/adding_a_sampler.md). Every sampler
implements ``sample(problem, x_init, noise) -> Solution``.
"""

from __future__ import annotations

import dataclasses
import importlib

from solvers.adaptive import Adaptive, AdaptiveEM, AdaptiveImprovedEuler, IntegralController
from solvers.base import Problem, Solution, SolveStats, Status, Step
from solvers.ddim import DDIM
from solvers.denoise import DEFAULT_DENOISE, DENOISE
from solvers.denoiser import Denoiser
from solvers.dpm_adaptive import DPMSolverAdaptive
from solvers.dpm_solver import DPMSolver, DPMSolverPP, DPMSolverPPSDE
from solvers.edm import EDMHeun, EDMStochastic
from solvers.fixed import FixedGrid, tweedie
from solvers.grids import SCHEDULES, TimeGrid
from solvers.ipndm import IPNDM
from solvers.langevin import AnnealedLangevin, Composed, LangevinCorrector, PredictorCorrector
from solvers.likelihood import LikelihoodResult, ProbabilityFlowLikelihood, bits_per_dim_offset, dequantize
from solvers.lms import LMS
from solvers.multistep import Multistep
from solvers.noise import BrownianNoise, RecordedNoise, SeededNoise, parse_seeds, seed_labels
from solvers.ode import ProbabilityFlowEuler, ProbabilityFlowHeun
from solvers.scipy_ode import ScipyProbabilityFlow
from solvers.sde import AncestralSampling, EulerMaruyama, ReverseDiffusion
from solvers.torchdiffeq_ode import TorchdiffeqProbabilityFlow
from solvers.torchsde_solver import TorchSDE
from solvers.unipc import UniPC

SAMPLERS: dict[str, type] = {
    "euler_maruyama": EulerMaruyama,
    "reverse_diffusion": ReverseDiffusion,
    "ancestral_sampling": AncestralSampling,
    "pc": PredictorCorrector,
    "annealed_langevin": AnnealedLangevin,
    "pf_euler": ProbabilityFlowEuler,
    "pf_heun": ProbabilityFlowHeun,
    "torchsde": TorchSDE,
    "scipy_ode": ScipyProbabilityFlow,
    "torchdiffeq_ode": TorchdiffeqProbabilityFlow,
    "adaptive_improved_euler": AdaptiveImprovedEuler,
    "adaptive_em": AdaptiveEM,
    "ddim": DDIM,
    "edm_heun": EDMHeun,
    "edm_stochastic": EDMStochastic,
    "dpm_solver": DPMSolver,
    "dpm_solver_pp": DPMSolverPP,
    "dpm_solver_pp_sde": DPMSolverPPSDE,
    "dpm_solver_adaptive": DPMSolverAdaptive,
    "unipc": UniPC,
    "ipndm": IPNDM,
    "lms": LMS,
}


def sampler_class(name: str) -> type:
    """The class of a registered name, or of an import path ``"package.module:Class"``."""
    if name in SAMPLERS:
        return SAMPLERS[name]
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(f"unknown sampler {name!r}; expected one of: {', '.join(sorted(SAMPLERS))}, "
                         f"or an import path 'package.module:Class'")
    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"sampler {name!r}: cannot import {attr!r} from module {module!r} ({err})") from None
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and callable(getattr(cls, "sample", None))):
        raise ValueError(f"sampler {name!r}: {cls!r} is not a sampler class (a dataclass with "
                         f"sample(problem, x_init, noise); see docs/adding_a_sampler.md)")
    return cls


def _nested(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of ``cls`` holding an options dataclass (the adaptive samplers' controller)."""
    return {f.name: f for f in dataclasses.fields(cls)
            if f.init and dataclasses.is_dataclass(f.default) and not isinstance(f.default, type)}


def sampler_options(name: str) -> list[str]:
    """The option names a sampler accepts (a controller's fields are given flat)."""
    cls = sampler_class(name)
    nested = _nested(cls)
    own = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in nested]
    inner = [g.name for f in nested.values() for g in dataclasses.fields(f.default) if g.init]
    return sorted(own + inner)


def make_sampler(name: str, **options):
    """Build a sampler; unknown names or options raise ValueError naming the choices."""
    cls = sampler_class(name)
    valid = sampler_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for sampler {name!r}; "
                         f"expected one of: {', '.join(valid)}")
    for key, f in _nested(cls).items():
        inner = {g.name for g in dataclasses.fields(f.default)}
        given = {k: options.pop(k) for k in list(options) if k in inner}
        if given:
            options[key] = dataclasses.replace(f.default, **given)
    return cls(**options)


__all__ = [
    "SAMPLERS", "make_sampler", "sampler_options", "sampler_class", "Problem", "Solution", "SolveStats",
    "Status", "Step", "FixedGrid", "Multistep", "Adaptive", "IntegralController", "Composed", "tweedie",
    "DENOISE", "DEFAULT_DENOISE", "TimeGrid", "SCHEDULES", "SeededNoise", "RecordedNoise", "BrownianNoise",
    "parse_seeds", "seed_labels", "EulerMaruyama", "ReverseDiffusion", "AncestralSampling", "PredictorCorrector",
    "LangevinCorrector", "AnnealedLangevin", "ProbabilityFlowEuler", "ProbabilityFlowHeun", "TorchSDE",
    "ScipyProbabilityFlow", "TorchdiffeqProbabilityFlow", "AdaptiveImprovedEuler", "AdaptiveEM",
    "ProbabilityFlowLikelihood", "LikelihoodResult", "bits_per_dim_offset", "dequantize",
    "DDIM", "Denoiser", "EDMHeun", "EDMStochastic", "DPMSolver", "DPMSolverPP", "DPMSolverPPSDE",
    "DPMSolverAdaptive", "UniPC", "IPNDM", "LMS",
]
