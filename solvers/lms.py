"""LMS: the linear multistep method in σ of k-diffusion's ``sample_lms`` (Crowson et al.,
k-diffusion; after Karras et al. 2022's σ-ODE): variable-step Adams–Bashforth on
dx_ve/dσ = (x_ve − D(x_ve; σ))/σ, the coefficients the integrals of the Lagrange basis through the
past σ's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Step, check_choice
from solvers.denoiser import Denoiser
from solvers.fixed import FixedSteps, to_zero_conventions, to_zero_default_denoise, to_zero_warmup_nfe

__all__ = ["LMS"]

_NODES, _WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(4))  # exact to degree 7


def lms_coefficients(sigmas: list[Tensor], sigma_next: Tensor) -> list[Tensor]:
    """∫_{σ_0}^{σ_next} ℓ_j(s) ds for the Lagrange basis ℓ_j through ``sigmas`` (newest first), each [B]."""
    a, b = sigmas[0], sigma_next
    s = (a + b)[:, None] / 2 + (b - a)[:, None] / 2 * _NODES.to(a)  # [B, nodes]
    out = []
    for j, sj in enumerate(sigmas):
        ell = torch.ones_like(s)
        for m, sm in enumerate(sigmas):
            if m != j:
                ell = ell * (s - sm[:, None]) / (sj - sm)[:, None]
        out.append((b - a) / 2 * (ell * _WEIGHTS.to(a)).sum(1))
    return out


@dataclass(frozen=True)
class LMS:
    """Linear multistep in σ (k-diffusion ``sample_lms``): x_ve,next = x_ve + Σ_j c_j d_{i−j}, with
    d = (x_ve − D)/σ at the last ``solver_order`` grid points and c_j the exact integrals of their
    Lagrange basis over [σ_i, σ_{i+1}]; the rule's state is that history.

    Integrates: the probability-flow ODE, written in σ_ve as EDM's. Order: 2 asymptotically (the
    warm-up takes order min(p, i + 1) at step i, as k-diffusion; the first, Euler, step caps the
    global order; the fitted order is in tests/test_new_samplers.py). NFE per step: 1 (+1 for the
    final step to σ = 0: ``denoise='tweedie'``, or with ``to_zero`` the method's own). SDEs: VE, VP,
    sub-VP.

    Args:
        solver_order: 1–4 (k-diffusion's default 4).
        to_zero: k-diffusion's last step: from the grid's last point to σ = 0 with the same multistep
            rule (one call; then ``denoise`` is 'none'). False (default): the harness's final step to
            σ = 0 is the Tweedie denoise x̂₀, as for every σ-space sampler here.
    """

    solver_order: int = 4
    to_zero: bool = False

    order: ClassVar[float] = 2.0
    nfe_per_step: ClassVar[int] = 1
    batch_invariant: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # f(T), g²(T) or σ_ve(T): finite only where α_T > 0
    controller: ClassVar[FixedSteps] = FixedSteps(schedule="karras")

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "solver_order", self.solver_order, (1, 2, 3, 4))
        if not isinstance(self.to_zero, bool):
            raise ValueError(f"{type(self).__name__}: to_zero must be True or False, got {self.to_zero!r}")

    conventions = property(to_zero_conventions)
    default_denoise = property(to_zero_default_denoise)
    warmup_nfe = to_zero_warmup_nfe

    def check(self, problem: Problem) -> None:
        del problem

    def init(self, problem: Problem, x: Tensor, walk) -> tuple:
        del problem, x
        return (), (), walk.grid.shape[0] - 2  # past σ's and derivatives (newest first), steps after this one

    def step(self, problem: Problem, x: Tensor, t: Tensor, t_next: Tensor, state, noise) -> Step:
        D = Denoiser(problem)
        sigmas, ds, last = state
        x_ve, sigmas, ds = self._lms(D, D.to_ve(x, t), t, D.sigma(t_next), sigmas, ds)
        if self.to_zero and last == 0:  # k-diffusion's last step, to σ = 0: x_ve there is the sample
            x_ve, _, _ = self._lms(D, x_ve, t_next, torch.zeros_like(D.sigma(t_next)), sigmas, ds)
            return Step(x_ve, x_ve, (sigmas, ds, last - 1))
        x = D.from_ve(x_ve, t_next)
        return Step(x, x, (sigmas, ds, last - 1))

    def _lms(self, D: Denoiser, x_ve: Tensor, t: Tensor, sigma_next: Tensor, sigmas: tuple, ds: tuple):
        """One step from t to σ_next: the slope at t joins the history (kept to ``solver_order``)."""
        sigma = D.sigma(t)
        d = (x_ve - D(x_ve, sigma, t)) / expand_like(sigma, x_ve)
        sigmas, ds = (sigma, *sigmas)[: self.solver_order], (d, *ds)[: self.solver_order]
        for c, dj in zip(lms_coefficients(list(sigmas), sigma_next), ds):
            x_ve = x_ve + expand_like(c, x_ve) * dj
        return x_ve, sigmas, ds
