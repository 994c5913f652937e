"""Pieces shared by the black-box ODE samplers (SciPy and torchdiffeq) of the probability flow.

* :func:`flat_drift` turns the probability-flow drift f(x, t) − ½ g(t)² s(x, t) into the right-hand
  side of a flat system (the whole batch as one vector, as score_sde's ODE sampler does), evaluated
  in the model's dtype while the solver's state may be float64.
* :func:`ode_denoise` is the optional last step at eps, and ``ODE_DENOISE`` its choices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from solvers.base import Problem, check_positive
from solvers.denoise import final_denoise
from solvers.ode import probability_flow_drift

__all__ = ["ODE_DENOISE", "ode_denoise", "flat_drift", "check_tolerances"]

# The choices of the final denoise valid for the ODE samplers (vocabulary: solvers.denoise).
# 'reverse_diffusion' is score_sde's denoise (noise_removal=True, REFERENCE §1.5): 1 score call,
# which scorebench counts (score_sde does not); score_sde also draws one unused normal, not drawn here.
ODE_DENOISE = ("none", "reverse_diffusion", "tweedie", "ggf")


def ode_denoise(problem: Problem, x: Tensor, kind: str, num_scales: int) -> Tensor:
    """Apply the final denoising ``kind`` (one of ``ODE_DENOISE``) at t = eps; [B, ...] → [B, ...]."""
    return final_denoise(problem, x, kind, num_scales=num_scales)


def flat_drift(problem: Problem, shape: tuple[int, ...],
               model_dtype: torch.dtype) -> Callable[[Tensor, Tensor], Tensor]:
    """RHS ``(t [scalar], y [prod(shape)]) -> dy/dt`` of the probability-flow ODE on a flat state.

    The whole drift is evaluated in ``model_dtype``, as score_sde does on its float64 SciPy state:
    the state is cast to it, and so is the time vector [B] (score_sde's ``ones(B) * t`` in float32),
    so that the SDE coefficients are float32 for a float32 model. This matters for replaying the
    official ODE fixtures: with float64 coefficients the adaptive step sequence changes (nfev 92 vs
    98, max diff 2.3e-4 instead of 1e-5). The drift is returned in the state's dtype. One score call
    per evaluation.
    """

    def rhs(t: Tensor, y: Tensor) -> Tensor:
        x = y.reshape(shape).to(model_dtype)
        t_vec = torch.as_tensor(t, device=y.device).to(model_dtype).reshape(()).expand(shape[0])
        return probability_flow_drift(problem, x, t_vec).reshape(-1).to(y.dtype)

    return rhs


def check_tolerances(owner: str, rtol: float, atol: float) -> None:
    check_positive(owner, "rtol", rtol)
    check_positive(owner, "atol", atol)

