"""Priors at the terminal time T: objects with ``sample(shape, noise, ...)`` and ``log_prob(x)``.

The default is the SDE's Gaussian N(0, prior_std² I) (score_sde's prior at T = 1; for T < 1 the naive
prior of Franzese et al. 2023, Table 1). Fitted priors for truncated diffusions plug in through the
same two methods.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from models.sde import SDE

__all__ = ["GaussianPrior"]


class GaussianPrior:
    """N(mean, std² I) at time T. Defaults to the SDE's own prior (mean 0, ``sde.prior_std()``)."""

    def __init__(self, sde: SDE, std: float | None = None, mean: float = 0.0) -> None:
        self.sde = sde
        self.std = float(sde.prior_std() if std is None else std)
        self.mean = float(mean)
        if not self.std > 0:
            raise ValueError(f"GaussianPrior: std must be > 0, got {self.std}")

    def sample(self, shape: tuple[int, ...], noise, dtype=torch.float32, device="cpu") -> Tensor:
        """[B, ...] draw; ``noise`` is a NoiseSource (``normal(shape, dtype=, device=)``)."""
        return self.mean + self.std * noise.normal(tuple(shape), dtype=dtype, device=device)

    def log_prob(self, x: Tensor) -> Tensor:
        """log density summed over all but the batch dimension, [B] (float64)."""
        x = x.double()
        d = x[0].numel()
        s2 = self.std**2
        return -0.5 * d * math.log(2 * math.pi * s2) - (x - self.mean).flatten(1).pow(2).sum(1) / (2 * s2)
