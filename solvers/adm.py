"""ADM's ancestral sampler (``p_sample_loop`` of openai/guided-diffusion; Nichol & Dhariwal 2021,
Dhariwal & Nichol 2021) as a method of the solver core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step, check_choice
from solvers.denoiser import denoised
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["ADMAncestral", "ADM_VARIANCES", "posterior"]

ADM_VARIANCES = ("model", "learned", "small", "large")


def posterior(problem: Problem, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_x0, c_x, β, β̃) [B] float64 of q(x_next | x_t, x₀) = N(c_x0 x₀ + c_x x_t, β̃ I) on any Gaussian path.

    With a = α_t/α_next, the forward transition x_t = a x_next + √β z has β = σ_t² − a² σ_next² (ADM's
    respaced β = 1 − ᾱ_t/ᾱ_next on a VP path), and (Ho et al. 2020, Eq. 6–7)

        β̃ = β σ_next²/σ_t²,   c_x0 = α_next β/σ_t²,   c_x = a σ_next²/σ_t².
    """
    alpha_t, sigma_t = problem.marginal(t)
    alpha_n, sigma_n = problem.marginal(t_next)
    a = alpha_t / alpha_n
    beta = sigma_t**2 - a**2 * sigma_n**2
    return alpha_n * beta / sigma_t**2, a * sigma_n**2 / sigma_t**2, beta, beta * sigma_n**2 / sigma_t**2


@dataclass(frozen=True)
class ADMAncestral:
    """ADM's ancestral step (``p_sample``): x_next = μ + exp(½ log Σ) z, with the posterior mean
    μ = c_x0 x̂₀ + c_x x (:func:`posterior`; x̂₀ clipped where the model clips) and

        log Σ = v log β + (1 − v) log β̃     (learned variance, Nichol & Dhariwal 2021, Eq. 15),

    β and β̃ of the step from t to t_next (ADM's respaced tables: with schedule ``adm_respaced`` and
    ``n_steps`` S this is ADM's ``p_sample_loop`` with ``timestep_respacing="S"``: S − 1 steps, then the
    final Tweedie denoise at timestep 0, which is ADM's last step μ = x̂₀). With a classifier
    (:mod:`models.adm.guidance`) the mean is shifted by Σ·s∇ log p(y | x_t) (ADM's ``condition_mean``;
    Dhariwal & Nichol 2021, Algorithm 1).

    Integrates: the reverse diffusion by exact-posterior (DDPM) steps with the model's variance. Order
    1 (as ancestral sampling). NFE per step: 1 (plus one classifier gradient per step when guided,
    counted apart). Paths: any Gaussian path (the formulas use α, σ only); ADM's respaced grids need its
    table.

    Args:
        variance: 'learned' (the model's v: ADM's LEARNED_RANGE; the model must give one), 'small'
            (Σ = β̃: FIXED_SMALL), 'large' (Σ = β: FIXED_LARGE, ADM's default without ``learn_sigma``),
            'model' (default: 'learned' where the model has a learned variance, else 'large').
    """

    variance: str = "model"

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ()  # finite at α_T = 0 where the model gives (x̂₀, ε̂) itself
    controller: ClassVar[FixedSteps] = FixedSteps()
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "variance", self.variance, ADM_VARIANCES)

    def check(self, problem: Problem) -> None:
        if self.variance == "learned" and not getattr(problem.score, "learn_sigma", False):
            raise ValueError(f"ADMAncestral: variance='learned' needs a model with a learned variance (an ADM "
                             f"checkpoint with learn_sigma); {type(problem.score.model).__name__} has none; "
                             f"expected variance one of: model, small, large")

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        score = problem.score
        v = guidance = None
        if score.has_ancestral_terms:  # ADM: x̂₀, ε̂, v and the classifier's term from one network call
            x0, _, v, guidance = score.data_noise_and_variance(x, t)
        else:
            x0, _ = denoised(problem, x, t)
        c_x0, c_x, beta, beta_tilde = posterior(problem, t, t_next)
        mean = expand_like(c_x0, x) * x0 + expand_like(c_x, x) * x
        if v is not None and self.variance in ("learned", "model"):
            log_var = v * expand_like(beta.log(), x) + (1 - v) * expand_like(beta_tilde.log(), x)
        else:
            log_var = expand_like((beta_tilde if self.variance == "small" else beta).log(), x).expand_as(x)
        if guidance is not None:  # ADM's condition_mean: μ + Σ·s∇ log p(y | x_t)
            mean = mean + torch.exp(log_var) * guidance
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        return Step(mean + torch.exp(0.5 * log_var) * z, mean, state)
