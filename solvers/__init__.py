"""Samplers for score-based diffusion models behind one interface.

``SAMPLERS`` maps a registry name to a class: a **method** (a frozen dataclass of its own options with
``step`` and a default ``controller``), which ``make_sampler`` composes with its controller into a
:class:`~solvers.sampler.Sampler`, or a self-contained **sampler** with its own loop (SciPy,
torchdiffeq, torchsde). ``make_sampler(name, **options)`` builds one with its options validated
(unknown names or options raise ValueError listing the valid choices); options are flat: the
method's, the controller's (``n_steps``, ``schedule``, ``convention``; ``rtol``, ``atol``, …) and
``denoise``. ``name`` may also be an import path ``"package.module:Class"`` naming a user's own
method or sampler class (docs/adding_a_sampler.md). Every sampler implements
``sample(problem, x_init, noise) -> Solution`` and declares :data:`solvers.base.PROTOCOL`.
"""

from __future__ import annotations

import dataclasses
import importlib

from solvers.adaptive import IntegralController
from solvers.adm import ADMAncestral
from solvers.ancestral import DPMSolverPP2SAncestral, DPMSolverPP2SSDE
from solvers.base import PROTOCOL, Problem, Solution, SolveStats, Status, Step, declared
from solvers.ddim import DDIM
from solvers.deis import DEIS
from solvers.denoise import DEFAULT_DENOISE, DENOISE, tweedie
from solvers.denoiser import Denoiser
from solvers.dpm_adaptive import DPMSolverAdaptive
from solvers.dpm_fast import DPMSolverFast, NFEBudget
from solvers.dpm_solver import DPMSolver, DPMSolverPP, DPMSolverPPSDE
from solvers.edm import EDMHeun, EDMStochastic, Euler
from solvers.edm_ablation import EDMAblation
from solvers.fixed import FixedSteps
from solvers.ggf import AdaptiveEM, AdaptiveImprovedEuler
from solvers.grids import SCHEDULES, TimeGrid
from solvers.ipndm import IPNDM
from solvers.langevin import AnnealedLangevin, LangevinCorrector, PredictorCorrector
from solvers.likelihood import LikelihoodResult, ProbabilityFlowLikelihood, bits_per_dim_offset, dequantize
from solvers.lms import LMS
from solvers.noise import BrownianNoise, RecordedNoise, SeededNoise, parse_seeds, seed_labels
from solvers.ode import ProbabilityFlowEuler, ProbabilityFlowHeun
from solvers.restart import Restart
from solvers.sa_solver import SASolver
from solvers.sampler import Sampler
from solvers.scipy_ode import ScipyProbabilityFlow
from solvers.sde import AncestralSampling, EulerMaruyama, ReverseDiffusion
from solvers.solve import solve
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
    "euler": Euler,
    "edm_ablation": EDMAblation,
    "dpm_solver": DPMSolver,
    "dpm_solver_pp": DPMSolverPP,
    "dpm_solver_pp_sde": DPMSolverPPSDE,
    "dpm_solver_pp_2s_ancestral": DPMSolverPP2SAncestral,
    "dpm_solver_pp_2s_sde": DPMSolverPP2SSDE,
    "dpm_solver_adaptive": DPMSolverAdaptive,
    "dpm_solver_fast": DPMSolverFast,
    "unipc": UniPC,
    "deis": DEIS,
    "ipndm": IPNDM,
    "lms": LMS,
    "adm_ancestral": ADMAncestral,
    "restart": Restart,
    "sa_solver": SASolver,
}


def is_method(cls: type) -> bool:
    """Whether ``cls`` is a method (composed with its default ``controller``) rather than a sampler."""
    return callable(getattr(cls, "step", None)) and hasattr(cls, "controller")


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
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)
            and (is_method(cls) or callable(getattr(cls, "sample", None)))):
        raise ValueError(f"sampler {name!r}: {cls!r} is neither a method (a dataclass with step() and a "
                         f"controller) nor a sampler (a dataclass with sample(problem, x_init, noise)); "
                         f"see docs/adding_a_sampler.md")
    return cls


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _nested(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of a sampler class holding an options dataclass (torchsde's steps), given flat."""
    return {f.name: f for f in dataclasses.fields(cls)
            if f.init and dataclasses.is_dataclass(f.default) and not isinstance(f.default, type)}


def _groups(cls: type) -> dict[str, list[str]]:
    """Where each flat option goes: {'method' | 'controller' | 'denoise' | a nested field: [names]}."""
    if is_method(cls):
        return {"method": _fields(cls), "controller": _fields(type(cls.controller)), "denoise": ["denoise"]}
    nested = _nested(cls)
    own = [n for n in _fields(cls) if n not in nested]
    return {"own": own, **{key: _fields(type(f.default)) for key, f in nested.items()}}


def sampler_options(name: str) -> list[str]:
    """The option names a sampler accepts, flat (a controller's fields among them)."""
    return sorted(n for names in _groups(sampler_class(name)).values() for n in names)


def make_sampler(name: str, **options):
    """Build a sampler; unknown names or options raise ValueError naming the choices."""
    cls = sampler_class(name)
    valid = sampler_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for sampler {name!r}; "
                         f"expected one of: {', '.join(valid)}")
    groups = _groups(cls)
    given = {key: {k: v for k, v in options.items() if k in names} for key, names in groups.items()}
    if is_method(cls):
        method = cls(**given["method"])  # a method may name its own default denoise (EDMAblation: 'none')
        return Sampler(method, dataclasses.replace(cls.controller, **given["controller"]),
                       given["denoise"].get("denoise", getattr(method, "default_denoise", DEFAULT_DENOISE)))
    nested = {key: dataclasses.replace(f.default, **given[key]) for key, f in _nested(cls).items() if given[key]}
    return cls(**given["own"], **nested)


def sampler_config(sampler) -> dict:
    """The sampler's class and every option, resolved and flat (what a run's record states): for a
    composed sampler the method's class, its options, its controller's and ``denoise``."""
    if isinstance(sampler, Sampler):
        return {"class": type(sampler.method).__name__, "controller": type(sampler.controller).__name__,
                **dataclasses.asdict(sampler.method), **dataclasses.asdict(sampler.controller),
                "denoise": sampler.denoise}
    nested = _nested(type(sampler))
    flat = {k: v for k, v in dataclasses.asdict(sampler).items() if k not in nested}
    for key in nested:
        flat.update(dataclasses.asdict(getattr(sampler, key)))
    return {"class": type(sampler).__name__, **flat}


__all__ = [
    "SAMPLERS", "make_sampler", "sampler_options", "sampler_class", "sampler_config", "is_method", "Problem",
    "Solution", "SolveStats", "Status", "Step", "PROTOCOL", "declared", "Sampler", "solve", "FixedSteps",
    "IntegralController", "tweedie", "DENOISE", "DEFAULT_DENOISE", "TimeGrid", "SCHEDULES", "SeededNoise",
    "RecordedNoise", "BrownianNoise", "parse_seeds", "seed_labels", "EulerMaruyama", "ReverseDiffusion",
    "AncestralSampling", "PredictorCorrector", "LangevinCorrector", "AnnealedLangevin", "ProbabilityFlowEuler",
    "ProbabilityFlowHeun", "TorchSDE", "ScipyProbabilityFlow", "TorchdiffeqProbabilityFlow", "AdaptiveImprovedEuler",
    "AdaptiveEM", "ProbabilityFlowLikelihood", "LikelihoodResult", "bits_per_dim_offset", "dequantize", "DDIM",
    "Denoiser", "EDMHeun", "EDMStochastic", "Euler", "EDMAblation", "DPMSolver", "DPMSolverPP", "DPMSolverPPSDE",
    "DPMSolverPP2SAncestral", "DPMSolverPP2SSDE", "DPMSolverAdaptive", "DPMSolverFast", "NFEBudget",
    "UniPC", "DEIS", "IPNDM", "LMS", "ADMAncestral", "Restart", "SASolver",
]
