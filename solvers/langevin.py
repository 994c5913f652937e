"""Langevin correctors, predictor–corrector composition, and NCSNv2's annealed Langevin dynamics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step, check_choice, check_positive
from solvers.fixed import GRID_DENOISE, FixedSteps
from solvers.sde import AncestralSampling, EulerMaruyama, ReverseDiffusion

__all__ = ["LangevinCorrector", "PredictorCorrector", "AnnealedLangevin", "ncsnv2_step_size"]

NORMS = ("batch_mean", "per_sample")
PREDICTORS = {"euler_maruyama": EulerMaruyama, "reverse_diffusion": ReverseDiffusion,
              "ancestral_sampling": AncestralSampling, "none": None}
CORRECTORS = ("langevin", "ald", "none")


@dataclass(frozen=True)
class LangevinCorrector:
    """Langevin MCMC at fixed t: x ← x + ε s(x, t) + √(2ε) z, ``n_steps`` times (1 NFE each).

    A method that stays at t (t_next is ignored), so that it composes with a predictor.
    ``kind='langevin'`` (Song et al. 2021, Algorithm 4; score_sde ``LangevinCorrector``):
    ε = 2 α_i (snr ‖z‖ / ‖s‖)², with score_sde's batch means of the per-sample L2 norms (one scalar per
    batch, so results depend on the batch: ``batch_invariant`` False) or, with ``norm='per_sample'``,
    per-sample norms. ``kind='ald'`` (score_sde ``AnnealedLangevinDynamics``, NCSN/NCSNv2):
    ε = 2 α_i (snr σ_t)² per sample. α_i = 1 − β_i for VP/sub-VP, 1 for VE (``sde.langevin_alpha``,
    N = the grid's n_steps: the state). Order: none (MCMC). NFE per step: ``n_steps``.
    """

    kind: str = "langevin"
    snr: float = 0.16
    n_steps: int = 1
    norm: str = "batch_mean"

    order: ClassVar[float] = 0.0
    needs: ClassVar[tuple[str, ...]] = ("tables",)  # α_i = 1 − β_i of score_sde's table (langevin_alpha)

    @property
    def nfe_per_step(self) -> int:
        return self.n_steps

    @property
    def batch_invariant(self) -> bool:
        return not (self.kind == "langevin" and self.norm == "batch_mean")

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> int:
        del x
        sde, N = problem.sde, walk.steps.n_steps
        alpha = sde.langevin_alpha(torch.tensor([sde.T], dtype=torch.float64), N)
        if not bool((alpha > 0).all()):
            raise ValueError(f"LangevinCorrector: the corrector's α_i = 1 − β_i of score_sde's table is "
                             f"≤ 0 for n_steps={N} on this SDE (β_i ≥ 1); use more steps")
        return N

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state: int, noise) -> Step:
        sde = problem.sde
        alpha = sde.langevin_alpha(t, state)
        for _ in range(self.n_steps):
            s = problem.score(x, t)
            z = noise.normal(x.shape, dtype=x.dtype, device=x.device)
            if self.kind == "ald":
                eps = 2 * alpha * (self.snr * sde.marginal(t)[1]) ** 2
            else:
                s_norm = torch.linalg.vector_norm(s.flatten(1), dim=1)
                z_norm = torch.linalg.vector_norm(z.flatten(1), dim=1)
                if self.norm == "batch_mean":
                    s_norm, z_norm = s_norm.mean(), z_norm.mean()
                eps = 2 * alpha * (self.snr * z_norm / s_norm) ** 2
            eps = expand_like(eps, x)
            x = x + eps * s + (2 * eps).sqrt() * z
        return Step(x, x, state)


@dataclass(frozen=True)
class PredictorCorrector:
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 1; score_sde ``get_pc_sampler``).

    Integrates: the reverse SDE (predictor) with Langevin correction towards p_t at each grid time;
    at each step the corrector runs first, then the predictor, both from t (score_sde's order).
    Order: that of the predictor. NFE per step: [predictor ≠ none] + corrector_steps·[corrector ≠
    none]. SDEs: those of the parts. ``predictor='none'`` gives corrector-only sampling (the paper's
    C2000). The default corrector (score_sde's: Langevin with the batch-mean step size) couples the
    samples of a batch: ``batch_invariant`` is then False; ``corrector_norm='per_sample'`` and
    ``corrector='ald'`` are batch-invariant.
    """

    predictor: str = "reverse_diffusion"
    corrector: str = "langevin"
    snr: float = 0.16
    corrector_steps: int = 1
    corrector_norm: str = "batch_mean"
    probability_flow: bool = False

    controller: ClassVar[FixedSteps] = FixedSteps()
    conventions: ClassVar[dict] = GRID_DENOISE

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_choice(name, "predictor", self.predictor, tuple(PREDICTORS))
        check_choice(name, "corrector", self.corrector, CORRECTORS)
        check_choice(name, "corrector_norm", self.corrector_norm, NORMS)
        check_positive(name, "snr", self.snr)
        check_positive(name, "corrector_steps", self.corrector_steps, integer=True)
        if self.predictor == "none" and self.corrector == "none":
            raise ValueError(f"{name}: predictor and corrector cannot both be 'none'")
        if self.probability_flow and self.predictor != "reverse_diffusion":
            raise ValueError(f"{name}: probability_flow=True needs predictor 'reverse_diffusion'")

    @property
    def parts(self) -> tuple:
        """The corrector and the predictor methods, in the order they run."""
        pred = PREDICTORS[self.predictor]
        predictor = None if pred is None else (
            pred(probability_flow=True) if self.probability_flow else pred())
        corrector = None if self.corrector == "none" else LangevinCorrector(
            self.corrector, self.snr, self.corrector_steps, self.corrector_norm)
        return tuple(p for p in (corrector, predictor) if p is not None)

    @property
    def order(self) -> float:
        return 0.0 if self.predictor == "none" else self.parts[-1].order

    @property
    def nfe_per_step(self) -> int:
        return sum(p.nfe_per_step for p in self.parts)

    @property
    def batch_invariant(self) -> bool:
        return all(p.batch_invariant for p in self.parts)

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(n for p in self.parts for n in p.needs)

    def check_controller(self, steps: FixedSteps) -> None:
        for p in self.parts:
            if hasattr(p, "check_controller"):
                p.check_controller(steps)

    def check(self, problem: Problem) -> None:
        for p in self.parts:
            p.check(problem)

    def init(self, problem: Problem, x: Tensor, walk) -> tuple:
        parts = self.parts
        return parts, tuple(p.init(problem, x, walk) for p in parts)

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        parts, states = state
        out, new = Step(x, x), []
        for part, s in zip(parts, states):
            out = part.step(problem, out.x, t, t_next, s, noise)
            new.append(out.state)
        return Step(out.x, out.x_mean, (parts, tuple(new)))


def ncsnv2_step_size(sigma_min: float, gamma: float, steps_per_level: int) -> float:
    """ε of NCSNv2 Technique 4: the ε ≤ σ_L² that makes Eq. (4) closest to 1.

    Eq. (4) of Song & Ermon 2020: with r = 1 − ε/σ_L², the variance ratio after T steps at one level is
    r^{2T} (γ² − 2ε/(σ_L² − σ_L² r²)) + 2ε/(σ_L² − σ_L² r²), γ = σ_{i−1}/σ_i the geometric ratio.
    """
    s2 = sigma_min**2

    def phi(eps: float) -> float:
        r = 1 - eps / s2
        c = 2 * eps / (s2 - s2 * r * r)
        return r ** (2 * steps_per_level) * (gamma**2 - c) + c

    # Golden-section search of |phi − 1| over log ε in (1e-12·σ_L², σ_L²).
    lo, hi = math.log(s2 * 1e-12), math.log(s2 * (1 - 1e-9))
    f = lambda u: abs(phi(math.exp(u)) - 1)  # noqa: E731
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if f(a) < f(b):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


@dataclass(frozen=True)
class AnnealedLangevin:
    """Annealed Langevin dynamics of NCSNv2 (Song & Ermon 2020, Algorithm 1 with Technique 4).

    Integrates: Langevin MCMC at each noise level σ_i of the geometric sequence σ(T) … σ(eps) (the
    n_steps grid points of a VE SDE, each visited: the 'score_sde' walk of :mod:`solvers.fixed`),
    ``steps_per_level`` steps with α_i = ε σ_i²/σ_L², then the final denoising x + σ_L² s(x, σ_L)
    (NCSNv2's 'denoise'). ε is chosen by Technique 4 / Eq. (4) unless ``step_size`` is given. Order:
    none (MCMC). NFE per step: steps_per_level; +1 for the denoise. SDEs: VE only (the
    σ-perturbation the algorithm is written for).
    """

    steps_per_level: int = 5
    step_size: float | None = None

    order: ClassVar[float] = 0.0
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("ve",)
    controller: ClassVar[FixedSteps] = FixedSteps(convention="score_sde")
    conventions: ClassVar[dict] = {"score_sde": GRID_DENOISE["grid"]}  # levels, then Tweedie at eps

    def __post_init__(self) -> None:
        check_positive(type(self).__name__, "steps_per_level", self.steps_per_level, integer=True)
        if self.step_size is not None:
            check_positive(type(self).__name__, "step_size", self.step_size)

    @property
    def nfe_per_step(self) -> int:
        return self.steps_per_level

    def check(self, problem: Problem) -> None:
        if problem.sde.kind != "ve":
            raise ValueError(f"AnnealedLangevin needs a VE SDE (noise levels σ_i); got {problem.sde.kind!r}")

    def epsilon(self, problem: Problem, n_levels: int) -> float:
        if self.step_size is not None:
            return self.step_size
        sde = problem.sde
        sigma_max, sigma_min = sde.prior_std(), sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** sde.eps
        gamma = (sigma_max / sigma_min) ** (1 / (n_levels - 1))
        return ncsnv2_step_size(sigma_min, gamma, self.steps_per_level)

    def init(self, problem: Problem, x: Tensor, walk) -> float:
        """ε (Technique 4 unless ``step_size`` is given), found once per solve."""
        return self.epsilon(problem, walk.steps.n_steps)

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        # Grid points are the noise levels; the 'step' at each level is the Langevin loop (no predictor),
        # with α_i = ε σ_i² / σ_L² (ε = the state).
        sde = problem.sde
        sigma_L = sde.marginal(torch.full_like(t, sde.eps))[1]
        alpha = expand_like(state * sde.marginal(t)[1] ** 2 / sigma_L**2, x)
        for _ in range(self.steps_per_level):
            s = problem.score(x, t)
            z = noise.normal(x.shape, dtype=x.dtype, device=x.device)
            x = x + alpha * s + (2 * alpha).sqrt() * z
        return Step(x, x, state)
