"""Score models: one protocol, the time-label conventions of score_sde, and NFE counting.

A *score model* is a callable ``score(x [B, ...], t [B]) -> ∇_x log p_t(x)`` that also carries its
SDE, the data range its samples live in and the shape of one sample. Everything that samples or
evaluates a likelihood talks to this protocol only.

Time-label conventions (shared/REFERENCE.md §1.7), selected by ``time_label``:

============  ===========================  ===========================================
time_label    label fed to the network     score returned
============  ===========================  ===========================================
continuous    VP/sub-VP: 999·t             −net(x, label) / σ_t  (σ_t from ``marginal``)
              VE: σ(t)                     net(x, label)   (NCSN++ divides by σ inside)
ddpm          t·(N−1) as a float           −net(x, label) / √(1 − ᾱ)[floor(label)]
smld          round((T − t)(N−1))          net(x, label)
============  ===========================  ===========================================
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from models.sde import SDE, expand_like

__all__ = ["ScoreModel", "NetworkScore", "CountingScore", "TIME_LABELS"]

TIME_LABELS = ("continuous", "ddpm", "smld")


@runtime_checkable
class ScoreModel(Protocol):
    sde: SDE
    data_range: tuple[float, float]  # (-1, 1) centered, (0, 1) uncentered
    shape: tuple[int, ...]  # one sample, e.g. (3, 32, 32)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


class NetworkScore:
    """A network ``net(x, labels)`` seen as a score model under one of score_sde's conventions.

    Args:
        net: the network; put in eval mode once here (never per call).
        sde: the SDE the network was trained with.
        shape: shape of one sample.
        data_range: (-1, 1) for centered (VP/sub-VP) models, (0, 1) for uncentered (VE) models.
        time_label: 'continuous', 'ddpm' (discrete VP) or 'smld' (discrete VE); see module docstring.
        num_scales: N of the discrete model (ddpm/smld only).
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        shape: tuple[int, ...],
        data_range: tuple[float, float] = (-1.0, 1.0),
        time_label: str = "continuous",
        num_scales: int = 1000,
    ) -> None:
        if time_label not in TIME_LABELS:
            raise ValueError(f"unknown time_label {time_label!r}; expected one of: {', '.join(TIME_LABELS)}")
        if time_label == "ddpm" and sde.kind != "vp":
            raise ValueError(f"time_label 'ddpm' needs a VP SDE, got {sde.kind!r}")
        if time_label == "smld" and sde.kind != "ve":
            raise ValueError(f"time_label 'smld' needs a VE SDE, got {sde.kind!r}")
        self.net = net.eval()
        self.sde = sde
        self.shape = tuple(shape)
        self.data_range = tuple(data_range)
        self.time_label = time_label
        self.num_scales = num_scales
        if time_label == "ddpm":
            betas = torch.linspace(sde.beta_min / num_scales, sde.beta_max / num_scales, num_scales)
            self._sqrt_1m_alphas_cumprod = (1 - torch.cumprod(1 - betas, 0)).sqrt()
        self._param = next(iter(net.parameters()), None)

    def _labels_and_scale(self, t: Tensor) -> tuple[Tensor, Tensor | None, bool]:
        """(labels, divisor or None, negate) for the network call at times t [B]."""
        sde, N = self.sde, self.num_scales
        if self.time_label == "continuous":
            if sde.kind == "ve":
                return sde.marginal(t)[1], None, False
            return 999.0 * t, sde.marginal(t)[1], True
        if self.time_label == "ddpm":
            labels = t * (N - 1)
            table = self._sqrt_1m_alphas_cumprod.to(t.device)
            return labels, table[labels.long()].to(t.dtype), True
        return torch.round((sde.T - t) * (N - 1)).long(), None, False

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        labels, divisor, negate = self._labels_and_scale(t)
        if labels.is_floating_point():
            labels = labels.to(x.dtype)
        out = self.net(x, labels)  # grad mode is the caller's (samplers run under no_grad)
        if divisor is not None:  # −(out / d) computed as out / (−d): one pass, the same bits
            return out / expand_like(-divisor if negate else divisor, x)
        return -out if negate else out


class CountingScore:
    """Wraps a score model and counts every real call: the only source of reported NFE.

    ``nfe`` counts calls (one call on a batch is one NFE for that batch); ``rows`` counts evaluated
    samples (the sum of batch sizes seen), from which solvers that evaluate only their still-running
    samples derive per-sample NFE.
    """

    def __init__(self, model: ScoreModel) -> None:
        self.model = model
        self.sde = model.sde
        self.shape = model.shape
        self.data_range = model.data_range
        self.nfe = 0
        self.rows = 0

    def reset(self) -> None:
        self.nfe = 0
        self.rows = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        self.rows += x.shape[0]
        return self.model(x, t)

    def __getattr__(self, name: str):  # forward model attributes (e.g. exact log-densities)
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)
