"""The final denoising step: one option, one vocabulary and one default for every sampler.

``denoise`` (every sampler's option, recorded with the run) takes one of:

* ``'tweedie'`` (the default everywhere): E[x_0 | x_eps] = (x + σ_eps² s(x, eps)) / α_eps (1 call);
* ``'ggf'``: Gotta Go Fast's x + σ_eps² s(x, eps), no division by α_eps (1 call; it is Tweedie's formula
  only where α_eps = 1, as on VE: hence not named after it);
* ``'x_mean'``: the last step's noise-free mean (score_sde's PC sampler, whose last step ends at
  eps; no call) — the fixed-grid driver's ``convention='score_sde'`` only;
* ``'reverse_diffusion'``: score_sde's ODE denoise, one reverse-diffusion *mean* step at eps from
  the SDE's discrete table with N = ``num_scales`` (1 call);
* ``'none'``: the state as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.sde import expand_like

__all__ = ["DENOISE", "DEFAULT_DENOISE", "denoise_nfe", "final_denoise", "tweedie", "check_denoise"]

DENOISE = ("tweedie", "ggf", "x_mean", "reverse_diffusion", "none")
DEFAULT_DENOISE = "tweedie"


def check_denoise(owner: str, value, allowed: tuple[str, ...] = DENOISE, why: str = "") -> None:
    """ValueError naming the choices valid here (``allowed``) if ``value`` is not one of them."""
    if value not in allowed:
        where = f" ({why})" if why else ""
        raise ValueError(f"{owner}: invalid denoise={value!r}{where}; expected one of: {', '.join(allowed)}")


def denoise_nfe(kind: str) -> int:
    """Score calls the final denoising ``kind`` makes (declared; tests compare it with the counter)."""
    return int(kind in ("tweedie", "ggf", "reverse_diffusion"))


def tweedie(problem, x: Tensor, t: Tensor, divide_by_alpha: bool = True) -> Tensor:
    """x + σ_t² s(x, t) at times t [B], divided by α_t unless ``divide_by_alpha`` is off (1 call)."""
    alpha, sigma = problem.sde.marginal(t)
    x0 = x + expand_like(sigma**2, x) * problem.score(x, t)
    return x0 / expand_like(alpha, x) if divide_by_alpha else x0


def final_denoise(problem, x: Tensor, kind: str, x_mean: Tensor | None = None, num_scales: int = 1000,
                  t: Tensor | None = None) -> Tensor:
    """Apply ``kind`` to the final state x [B, ...] at the walk's last time ``t`` [B] (None: eps;
    ``x_mean``: the last step's mean)."""
    if kind == "none":
        return x
    if kind == "x_mean":
        return x_mean
    if t is None:
        t = torch.full((x.shape[0],), problem.sde.eps, dtype=torch.float64, device=x.device)
    if kind in ("tweedie", "ggf"):
        return tweedie(problem, x, t, divide_by_alpha=kind == "tweedie")
    # Reverse-diffusion mean step: with the forward step x_{i+1} = x_i + c_i x_i + G_i z,
    # x_mean = x − c_i x + G_i² s(x, eps).
    c, G = problem.sde.discretize(t, num_scales)
    return x - expand_like(c, x) * x + expand_like(G**2, x) * problem.score(x, t)
