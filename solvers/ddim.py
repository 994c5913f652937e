"""DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models"), on any SDE's marginals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step, check_choice, check_positive
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["DDIM", "DDIM_ALPHAS"]

DDIM_ALPHAS = ("continuous", "table")


@dataclass(frozen=True)
class DDIM:
    """DDIM's generalised reverse process (Song et al. 2021, Eq. 12 and Eq. 16).

    With ε̂ = −σ_t s(x, t) and x̂₀ = (x − σ_t ε̂)/α_t, one step from t to t_next is

        x_next = α_next x̂₀ + √(σ_next² − σ_η²) ε̂ + σ_η z,   σ_η = η σ_next √(1 − (α_t σ_next / (α_next σ_t))²),

    Eq. 16's σ_τ written with α = √ᾱ and σ = √(1 − ᾱ), so that it holds for VE and sub-VP too (σ_η is
    then the std of the exact posterior q(x_next | x_t, x₀) times η).

    Integrates: with η = 0 the probability-flow ODE (DDIM is the first-order exponential integrator
    of the ODE in λ, Lu et al. 2022, Eq. 3.7 with k = 1); with η = 1 the reverse diffusion with exact
    posterior steps (DDPM ancestral sampling). Order: 1. NFE per step: 1. SDEs: VE, VP, sub-VP.

    Args:
        eta: η ≥ 0 (0: deterministic DDIM; 1: DDPM).
        alphas: 'continuous' takes (α, σ) from the SDE's marginal at t (default); 'table' is Gotta Go
            Fast's DDIM predictor (REFERENCE §2.3; VP only): √ᾱ_i from score_sde's discrete DDPM table
            with ``num_scales`` entries at i = floor(t (N − 1)/T).
        num_scales: N of the discrete table ('table' only).
    """

    eta: float = 0.0
    alphas: str = "continuous"
    num_scales: int = 1000

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    batch_invariant: ClassVar[bool] = True
    controller: ClassVar[FixedSteps] = FixedSteps()
    conventions: ClassVar[dict] = ON_GRID

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.eta, int | float) or isinstance(self.eta, bool) or not self.eta >= 0:
            raise ValueError(f"{name}: eta must be a number >= 0, got {self.eta!r}")
        check_choice(name, "alphas", self.alphas, DDIM_ALPHAS)
        check_positive(name, "num_scales", self.num_scales, integer=True)

    @property
    def needs(self) -> tuple[str, ...]:
        """α_T > 0 (x̂₀ = (x − σ ε̂)/α at T), and the VP table with alphas='table'."""
        return ("alpha_T", "vp") if self.alphas == "table" else ("alpha_T",)

    def check(self, problem: Problem) -> None:
        if self.alphas == "table" and problem.sde.kind != "vp":
            raise ValueError(f"DDIM: alphas='table' is the discrete DDPM table of a VP SDE; got {problem.sde.kind!r}")

    def init(self, problem: Problem, x: Tensor, walk) -> None:
        del problem, x, walk

    def _alpha_sigma(self, problem: Problem, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α, σ) at times t [B]."""
        sde = problem.sde
        if self.alphas == "continuous":
            return problem.marginal(t)
        N = self.num_scales
        betas = torch.linspace(sde.beta_min / N, sde.beta_max / N, N, dtype=torch.float64, device=t.device)
        alphas_cumprod = torch.cumprod(1 - betas, 0)[sde.index(t, N)]
        return alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        alpha_t, sigma_t = self._alpha_sigma(problem, t)
        alpha_n, sigma_n = self._alpha_sigma(problem, t_next)
        eps_hat = -expand_like(sigma_t, x) * problem.score(x, t)
        x0 = (x - expand_like(sigma_t, x) * eps_hat) / expand_like(alpha_t, x)
        # σ_η: η times the posterior std of x_next given (x_t, x₀).
        ratio = (alpha_t * sigma_n / (alpha_n * sigma_t)).clamp(max=1.0)
        sigma_eta = self.eta * sigma_n * (1 - ratio**2).sqrt()
        x_mean = expand_like(alpha_n, x) * x0 + expand_like((sigma_n**2 - sigma_eta**2).sqrt(), x) * eps_hat
        if self.eta == 0:
            return Step(x_mean, x_mean, state)
        z = noise.increment(t, t_next, x.shape, dtype=x.dtype, device=x.device)
        return Step(x_mean + expand_like(sigma_eta, x) * z, x_mean, state)
