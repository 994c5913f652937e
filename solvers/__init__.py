"""Samplers for score-based diffusion models behind one interface.

``SAMPLERS`` maps a registry name to the sampler's dataclass; ``make_sampler(name, **options)``
builds one with its options validated (unknown names or options raise ValueError listing the valid
choices). Every sampler implements ``sample(problem, x_init, noise) -> Solution``.
"""

from __future__ import annotations

import dataclasses

from solvers.adaptive import AdaptiveEM, AdaptiveImprovedEuler, PIController
from solvers.base import Problem, Solution, SolveStats, Status, Step
from solvers.ddim import DDIM
from solvers.denoiser import Denoiser
from solvers.dpm_solver import DPMSolver, DPMSolverAdaptive, DPMSolverPP, DPMSolverPPSDE
from solvers.edm import EDMHeun, EDMStochastic
from solvers.fixed import FixedGridSampler, tweedie
from solvers.grids import SCHEDULES, TimeGrid
from solvers.langevin import AnnealedLangevin, LangevinCorrector, PredictorCorrector
from solvers.likelihood import LikelihoodResult, ProbabilityFlowLikelihood, bits_per_dim_offset, dequantize
from solvers.noise import BrownianNoise, RecordedNoise, SeededNoise, parse_seeds
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
}


def sampler_options(name: str) -> list[str]:
    """The option names a sampler accepts."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of: {', '.join(sorted(SAMPLERS))}")
    return sorted(f.name for f in dataclasses.fields(SAMPLERS[name]) if f.init)


def make_sampler(name: str, **options):
    """Build a registered sampler; unknown names or options raise ValueError naming the choices."""
    valid = sampler_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for sampler {name!r}; "
                         f"expected one of: {', '.join(valid)}")
    return SAMPLERS[name](**options)


__all__ = [
    "SAMPLERS", "make_sampler", "sampler_options", "Problem", "Solution", "SolveStats", "Status", "Step",
    "FixedGridSampler", "tweedie", "TimeGrid", "SCHEDULES", "SeededNoise", "RecordedNoise", "BrownianNoise",
    "parse_seeds", "EulerMaruyama", "ReverseDiffusion", "AncestralSampling", "PredictorCorrector",
    "LangevinCorrector", "AnnealedLangevin", "ProbabilityFlowEuler", "ProbabilityFlowHeun", "TorchSDE",
    "ScipyProbabilityFlow", "TorchdiffeqProbabilityFlow", "AdaptiveImprovedEuler", "AdaptiveEM", "PIController",
    "ProbabilityFlowLikelihood", "LikelihoodResult", "bits_per_dim_offset", "dequantize",
    "DDIM", "Denoiser", "EDMHeun", "EDMStochastic", "DPMSolver", "DPMSolverPP", "DPMSolverPPSDE",
    "DPMSolverAdaptive", "UniPC",
]
