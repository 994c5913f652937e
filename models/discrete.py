"""Discrete-time diffusion models: the ᾱ tables they were trained on, and the *time mapping* that turns
a sampler's noise level into the network's timestep input.

A model trained on N discrete steps (DDPM, Stable Diffusion, improved DDPM / ADM, …) knows ᾱ_i only at
its training timesteps i = 0 … N − 1. The harness samples it on the tabulated path of that table
(:class:`models.paths.TabulatedPath`: ᾱ_i at t_i = (i + 1)/N); what the libraries disagree on is which
*timestep* τ (a float, or an integer) the network gets at a noise level σ between two trained
levels. Each reference library has its rule; they are offered by name (:data:`TIME_MAPPINGS`), each a
function of σ_ve = σ_t/α_t (or, for flow matching, of σ_t) and the table's levels
σ_i = √((1 − ᾱ_i)/ᾱ_i):

==============  =================================================================  ==========================
name            τ(σ)                                                               reference
==============  =================================================================  ==========================
``log_sigma``   linear in log σ between the neighbouring levels, clamped to        k-diffusion
                [0, N − 1] (the default)                                           ``DiscreteSchedule.sigma_to_t``;
                                                                                   diffusers ``_sigma_to_t``
                                                                                   (Karras / exponential σ's)
``sigma``       linear in σ between the neighbouring levels: the inverse of        diffusers' Euler, Heun,
                ``numpy.interp(τ, arange(N), σ_i)``, so a diffusers timestep        DPM-Solver, UniPC
                grid gives back its own τ                                          (``set_timesteps``)
``quantize``    the nearest level in log σ (an integer)                             k-diffusion ``quantize=True``
``nearest``     the nearest level in σ (an integer)                                 EDM ``round_sigma`` (VP/iDDPM
                                                                                   preconditioning)
``log_alpha``   linear in log α = ½ log ᾱ between the levels at t_i = (i + 1)/N,   DPM-Solver
                then τ = (t − 1/N)·N                                               ``NoiseScheduleVP('discrete')``
``flow``        τ = σ_t·N (flow matching: x_t = (1 − σ_t) x₀ + σ_t ε)               diffusers'
                                                                                   ``FlowMatchEulerDiscrete``
                                                                                   (SD3, FLUX)
==============  =================================================================  ==========================

On the trained levels every VP mapping gives the level's index (exactly, up to float64 round-off);
they differ only between levels. DPM-Solver's reference multiplies by 1000 rather than N: the same for
the usual N = 1000.

The tables are computed as diffusers computes them (:func:`diffusers_betas`), in float32, so that a
saved scheduler config gives the bits the model was trained with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BETA_SCHEDULES", "TIME_MAPPINGS", "DEFAULT_TIME_MAPPING", "diffusers_betas", "rescale_zero_terminal_snr",
           "alphas_cumprod", "train_sigmas", "time_mapping", "TimestepNet", "ZERO_SNR_ALPHA_BAR"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
DEFAULT_TIME_MAPPING = "log_sigma"
# diffusers' Euler / DPM-Solver / UniPC replace a zero-terminal-SNR ᾱ_{N−1} = 0 by 2^-24 (σ finite).
ZERO_SNR_ALPHA_BAR = 2.0**-24


# ---- tables ---------------------------------------------------------------------------------
def _cosine_betas(n: int, max_beta: float = 0.999) -> list[float]:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, Eq. 17, s = 0.008):
    β_i = min(1 − ᾱ((i + 1)/n)/ᾱ(i/n), 0.999) with ᾱ(u) = cos²((u + s)/(1 + s)·π/2), in Python floats."""

    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)]


def diffusers_betas(beta_schedule: str = "linear", num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02, trained_betas=None) -> Tensor:
    """β_0 … β_{N−1} [N] float32 as diffusers' schedulers compute them: ``linear`` (DDPM: linspace of β),
    ``scaled_linear`` (Stable Diffusion: linspace of √β, squared), ``squaredcos_cap_v2`` (improved
    DDPM's cosine), or an explicit ``trained_betas`` table (which overrides the schedule)."""
    n = int(num_train_timesteps)
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return torch.tensor(_cosine_betas(n), dtype=torch.float32)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; expected one of: {', '.join(BETA_SCHEDULES)} "
                     f"(or trained_betas)")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1):
    shift and scale √ᾱ so that its last entry is 0 (zero terminal SNR) and its first is unchanged;
    returns the β's of that table (float32, as diffusers)."""
    sqrt_abar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def alphas_cumprod(betas: Tensor) -> Tensor:
    """ᾱ_i = ∏_{j ≤ i} (1 − β_j), [N] in the β's dtype (float32 as diffusers)."""
    return torch.cumprod(1.0 - betas, dim=0)


def train_sigmas(abar: Tensor) -> Tensor:
    """The trained noise levels σ_i = √((1 − ᾱ_i)/ᾱ_i) of the stored ᾱ, ascending in i, float64 (exact
    for the table's values, so that the path's σ at a level maps back to its index; diffusers and
    k-diffusion compute them in float32, within 6e-8 relative of these)."""
    abar = abar.to(torch.float64)
    return ((1 - abar) / abar).sqrt()


# ---- time mappings: σ → τ ------------------------------------------------------------------------
def _interp_index(x: Tensor, knots: Tensor) -> Tensor:
    """The fractional index of x in the increasing ``knots`` [N], linear between neighbours, clamped to
    [0, N − 1] (float64)."""
    n = knots.shape[0]
    x = x.clamp(float(knots[0]), float(knots[-1]))
    hi = torch.searchsorted(knots, x, right=False).clamp(1, n - 1)
    lo = hi - 1
    w = (x - knots[lo]) / (knots[hi] - knots[lo])
    return lo.to(torch.float64) + w


def _nearest_index(x: Tensor, knots: Tensor) -> Tensor:
    return (x[:, None] - knots[None, :]).abs().argmin(dim=1).to(torch.float64)


def _log_sigma(sigma: Tensor, sigmas: Tensor) -> Tensor:
    return _interp_index(sigma.log(), sigmas.log())


def _sigma(sigma: Tensor, sigmas: Tensor) -> Tensor:
    return _interp_index(sigma, sigmas)


def _quantize(sigma: Tensor, sigmas: Tensor) -> Tensor:
    return _nearest_index(sigma.log(), sigmas.log())


def _nearest(sigma: Tensor, sigmas: Tensor) -> Tensor:
    return _nearest_index(sigma, sigmas)


def _log_alpha(sigma: Tensor, sigmas: Tensor) -> Tensor:
    # log α = −½ log(1 + σ²) decreases with i: interpolate the index in −log α (increasing).
    return _interp_index(0.5 * torch.log1p(sigma**2), 0.5 * torch.log1p(sigmas**2))


TIME_MAPPINGS = {
    "log_sigma": _log_sigma,
    "sigma": _sigma,
    "quantize": _quantize,
    "nearest": _nearest,
    "log_alpha": _log_alpha,
    "flow": None,  # τ = σ_t·N: no table (TimestepNet)
}


def time_mapping(name: str):
    """The σ_ve → τ function of a VP mapping (ValueError naming the valid choices)."""
    if name not in TIME_MAPPINGS:
        raise ValueError(f"unknown time_mapping {name!r}; expected one of: {', '.join(TIME_MAPPINGS)}")
    return TIME_MAPPINGS[name]


class TimestepNet:
    """``net(x, t [, class_labels]) -> output``: a network called with the timestep τ of its training
    table instead of the path's time t (the module docstring's mappings).

    Args:
        network: callable (x [B, ...], τ [B] float32 [, class_labels]) → output.
        path: the model's path (a :class:`~models.paths.TabulatedPath`, or a flow path for 'flow').
        mapping: a key of :data:`TIME_MAPPINGS`.
        sigmas: the trained levels σ_i [N] float64 (VP mappings).
        num_train_timesteps: N ('flow': τ = σ_t·N).
    """

    def __init__(self, network, path, mapping: str, sigmas: Tensor | None = None,
                 num_train_timesteps: int = 1000) -> None:
        time_mapping(mapping)
        if mapping != "flow" and sigmas is None:
            raise ValueError(f"time_mapping {mapping!r} needs the trained levels (sigmas)")
        self.network, self.path, self.mapping = network, path, mapping
        self.sigmas, self.num_train_timesteps = sigmas, int(num_train_timesteps)

    def timestep(self, t: Tensor) -> Tensor:
        """τ [B] float64 at the path's times t [B]."""
        alpha, sigma = self.path.marginal(t.to(torch.float64))
        if self.mapping == "flow":
            return sigma * self.num_train_timesteps
        return TIME_MAPPINGS[self.mapping](sigma / alpha, self.sigmas.to(t.device))

    def __call__(self, x: Tensor, t: Tensor, *class_labels) -> Tensor:
        return self.network(x, self.timestep(t).to(torch.float32), *class_labels)
