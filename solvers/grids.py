"""Time grids as values: float64 tensors running from T down to eps (both included)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TimeGrid", "SCHEDULES"]


class TimeGrid:
    @staticmethod
    def uniform(n: int, T: float, eps: float) -> Tensor:
        """n points, uniform in t (score_sde's ``linspace(T, eps, N)``)."""
        return torch.linspace(T, eps, n, dtype=torch.float64)

    @staticmethod
    def quadratic(n: int, T: float, eps: float) -> Tensor:
        """n points, uniform in √(t − eps): denser near eps (DDIM's 'quad' spacing)."""
        u = torch.linspace(1.0, 0.0, n, dtype=torch.float64)
        return eps + (T - eps) * u**2


SCHEDULES = {"uniform": TimeGrid.uniform, "quadratic": TimeGrid.quadratic}
