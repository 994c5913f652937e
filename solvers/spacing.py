"""diffusers' timestep spacings: grids for a model trained on N discrete timesteps, in its timesteps τ.

A discrete-time model (:mod:`models.discrete`) was trained at τ = 0 … N − 1. diffusers' schedulers
choose n of those (``timestep_spacing``, ``steps_offset``; the rules differ between scheduler
families, so each is named here), give them noise levels by interpolating the trained levels
σ_i = √((1 − ᾱ_i)/ᾱ_i) *linearly in σ* (``numpy.interp(τ, arange(N), σ_i)``), and end either at σ = 0
(``final_sigmas_type='zero'``; the final step is the x̂₀ prediction: the harness's Tweedie denoise)
or at the first trained level σ_0 (``'sigma_min'``, DDIM's ``set_alpha_to_one=False``).

============  ==========================================================  =====================================
name          τ_0 > … > τ_{n−1}                                           diffusers
============  ==========================================================  =====================================
leading       i·⌊N/n⌋ + offset, i = n−1 … 0                               DDIM, Euler, Euler ancestral, Heun
leading_n1    i·⌊N/(n+1)⌋ + offset, i = n … 1 (n + 1 points, last dropped)  DPM-Solver, UniPC, DEIS
trailing      round(N − i·N/n) − 1, i = 0 … n−1                           all
linspace      linspace(0, N − 1, n) reversed (fractional)                 Euler, Euler ancestral, Heun
linspace_round  linspace(0, N − 1, n).round() reversed                    DDIM
linspace_n1   linspace(0, N − 1, n + 1).round() reversed, last dropped     DPM-Solver, UniPC, DEIS
adm_respaced  ADM's ``timestep_respacing="n"`` (:mod:`solvers.respacing`)   openai/guided-diffusion
adm_ddim      ADM's ``"ddimn"``: 0, i, 2i, … with the smallest such i        openai/guided-diffusion
============  ==========================================================  =====================================

References: diffusers 0.42 ``scheduling_ddim.py``, ``scheduling_euler_discrete.py``,
``scheduling_dpmsolver_multistep.py`` ``set_timesteps`` (read, not copied; the recorded fixtures of
../shared/fixtures/diffusers/ check every rule used there).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.respacing import adm_ddim, adm_respaced

__all__ = ["SPACINGS", "FINAL_SIGMAS", "timesteps", "spacing_sigmas"]

FINAL_SIGMAS = ("zero", "sigma_min")


def _leading(n: int, N: int, offset: int) -> Tensor:
    return torch.arange(n - 1, -1, -1, dtype=torch.float64) * (N // n) + offset


def _leading_n1(n: int, N: int, offset: int) -> Tensor:
    return torch.arange(n, 0, -1, dtype=torch.float64) * (N // (n + 1)) + offset


def _trailing(n: int, N: int, offset: int) -> Tensor:
    del offset
    return torch.tensor([round(N - i * N / n) - 1 for i in range(n)], dtype=torch.float64)


def _linspace(n: int, N: int, offset: int) -> Tensor:
    del offset
    return torch.linspace(0, N - 1, n, dtype=torch.float64).flip(0)


def _linspace_round(n: int, N: int, offset: int) -> Tensor:
    del offset
    return torch.linspace(0, N - 1, n, dtype=torch.float64).round().flip(0)


def _linspace_n1(n: int, N: int, offset: int) -> Tensor:
    del offset
    return torch.linspace(0, N - 1, n + 1, dtype=torch.float64).round().flip(0)[:-1]


SPACINGS = {
    "leading": _leading,
    "leading_n1": _leading_n1,
    "trailing": _trailing,
    "linspace": _linspace,
    "linspace_round": _linspace_round,
    "linspace_n1": _linspace_n1,
    # ADM's timestep_respacing "<n>" and "ddim<n>" (solvers/respacing.py: openai/guided-diffusion's rule).
    "adm_respaced": adm_respaced,
    "adm_ddim": adm_ddim,
}


def timesteps(spacing: str, n: int, N: int, offset: int = 0) -> Tensor:
    """τ_0 > … > τ_{n−1} [n] float64 of ``spacing`` for n calls on N trained timesteps (ValueError
    when they leave [0, N − 1] or repeat)."""
    taus = SPACINGS[spacing](n, N, offset)
    if not (bool((taus >= 0).all()) and bool((taus <= N - 1).all()) and bool((taus[1:] < taus[:-1]).all())):
        raise ValueError(f"schedule {spacing!r} with n_steps={n} and steps_offset={offset} gives timesteps "
                         f"{taus.tolist()[:4]}…, outside 0..{N - 1} or not decreasing; expected n_steps <= {N} "
                         f"and a smaller steps_offset")
    return taus


def spacing_sigmas(spacing: str, n: int, sigmas: Tensor, offset: int = 0, final: str = "zero") -> Tensor:
    """σ_ve of the grid's points [n] ('zero') or [n + 1] ('sigma_min': σ_0 appended), float64: the
    trained levels ``sigmas`` [N] interpolated linearly in σ at the spacing's τ."""
    N = sigmas.shape[0]
    taus = timesteps(spacing, n, N, offset)
    lo = taus.floor().long().clamp(max=N - 2)
    w = taus - lo
    out = (1 - w) * sigmas[lo] + w * sigmas[lo + 1]
    if final == "sigma_min":
        if math.isclose(float(out[-1]), float(sigmas[0])):
            raise ValueError(f"final_sigma 'sigma_min': the grid already ends at the first trained level "
                             f"(τ = {float(taus[-1]):g}); use final_sigma 'zero'")
        out = torch.cat([out, sigmas[:1]])
    return out
