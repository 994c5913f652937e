"""ADM's discrete-time diffusion as a project path, and how a time t becomes ADM's timestep input.

Schedule (``noise_schedule``, Nichol & Dhariwal 2021 §3.2; ADM's ``get_named_beta_schedule``), N =
``diffusion_steps``:

* ``linear``: β = linspace(s·1e-4, s·0.02, N) in float64 with s = 1000/N (Ho et al. 2020, rescaled);
* ``cosine``: β_i = min(1 − ᾱ((i+1)/N)/ᾱ(i/N), 0.999), ᾱ(u) = cos²((u + 0.008)/1.008 · π/2)
  (:func:`models.paths.cosine_alphas_cumprod`).

ᾱ_i = Π_{j≤i}(1 − β_j) is a :class:`models.paths.TabulatedPath`, whose table entry i sits at
t_i = (i + 1)/N. **Time mapping** (``index``): the network is fed the timestep

    k(t) = N·t − 1   (× 1000/N with ``rescale_timesteps``),

the table index t interpolates: exactly ADM's integer timestep on the table's times (a respaced ADM
sampler feeds the *original* index ``timestep_map[i]``, which is k at that table time), and a
fractional timestep between them (ADM's network embeds any real timestep). This is DPM-Solver's
discrete-time input (Lu et al. 2022, App.: ``1000·(t − 1/N)`` for N = 1000).
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.paths import TabulatedPath, cosine_alphas_cumprod

__all__ = ["betas", "alphas_cumprod", "adm_path", "model_timesteps"]


def betas(noise_schedule: str, steps: int) -> Tensor:
    """ADM's β table, float64 [steps]."""
    if noise_schedule == "linear":
        scale = 1000 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if noise_schedule == "cosine":
        ac = torch.tensor(cosine_alphas_cumprod(steps), dtype=torch.float64)
        return 1 - ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    raise ValueError(f"unknown ADM noise_schedule {noise_schedule!r}; expected one of: linear, cosine")


def alphas_cumprod(noise_schedule: str, steps: int) -> Tensor:
    """ᾱ_i = Π_{j≤i} (1 − β_j), float64 [steps] (cumulative product, as ADM's numpy ``cumprod``)."""
    return torch.cumprod(1 - betas(noise_schedule, steps), 0)


def adm_path(noise_schedule: str, steps: int) -> TabulatedPath:
    """The :class:`TabulatedPath` of ADM's ᾱ table (T = 1 ↔ timestep N − 1, eps = 1/N ↔ timestep 0)."""
    return TabulatedPath(alphas_cumprod=tuple(alphas_cumprod(noise_schedule, steps).tolist()))


def model_timesteps(t: Tensor, steps: int, rescale: bool = False) -> Tensor:
    """ADM's timestep input k(t) = N·t − 1 (× 1000/N with ``rescale``), [B] float64 (module docstring)."""
    k = steps * t.to(torch.float64) - 1
    return k * (1000.0 / steps) if rescale else k
