"""Score models: one protocol, the time-label conventions of score_sde, and NFE counting.

A *score model* is a callable ``score(x [B, ...], t [B]) -> ∇_x log p_t(x)`` that also carries its
SDE, the data range its samples live in and the shape of one sample. Everything that samples or
evaluates a likelihood talks to this protocol only. A model may also give ``data_and_noise(x, t) -> (x̂₀, ε̂)``
(the data and noise predictions, from the same one network call): networks that predict ε, x₀, v,
a flow velocity or EDM's D (:mod:`models.parameterisation`) and the exact mixtures do, so that samplers
can start where α_t = 0 (flow matching at t = 1, where the score cannot give x̂₀). CountingScore
counts ``data_and_noise`` as one call, like ``__call__``.

Class-conditional models (EDM, diffusers with class embeddings, :class:`~models.gaussian.ClassConditionalMixture`)
add ``label_dim`` (number of classes) and two optional operations:

* :func:`conditioned` ``(model, labels [B])`` — the model for a batch whose row i asks for class
  ``labels[i]`` (the harness builds one per batch); every wrapper (counting, chunking, the run's SDE
  view) rebuilds itself around the conditioned inner model, so the labels reach the network;
* :func:`select_rows` ``(model, idx)`` — the model for rows ``idx`` of that batch: itself when it
  holds no per-sample state (``row_labels`` None), else conditioned on ``row_labels[idx]``. Every
  solver that evaluates the score on a subset of its batch's rows (per-sample adaptive steps, one
  ODE solve per sample, batch splitting) goes through it (``Problem.select_rows``).

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

import copy
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from models.conditions import take_rows
from models.sde import SDE, expand_like

__all__ = ["ScoreModel", "NetworkScore", "CountingScore", "TIME_LABELS", "conditioned", "select_rows",
           "class_indices"]

TIME_LABELS = ("continuous", "ddpm", "smld")


@runtime_checkable
class ScoreModel(Protocol):
    sde: SDE
    data_range: tuple[float, float]  # (-1, 1) centered, (0, 1) uncentered
    shape: tuple[int, ...]  # one sample, e.g. (3, 32, 32)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


def conditioned(model, labels: Tensor):
    """``model`` conditioned on per-sample class labels: ``labels`` [B] (int64 class indices; EDM models
    also take [B, label_dim] label vectors; text models a mapping of [B, ...] tensors — the forms of
    :mod:`models.conditions`), row i of every batch the result is called on asking for
    class ``labels[i]``. Looked up on the model's class, never forwarded to an inner model: a wrapper
    that cannot rebuild itself around the conditioned model is refused rather than bypassed."""
    method = getattr(type(model), "conditioned", None)
    if method is None:
        raise TypeError(f"{type(model).__name__} takes no per-sample class labels (it has no conditioned())")
    return method(model, labels)


def select_rows(model, idx: Tensor | slice):
    """``model`` for rows ``idx`` ([k] indices or a slice) of the batch it is conditioned on: the model
    itself when it holds no per-sample state, else the same stack conditioned on ``row_labels[idx]``."""
    labels = getattr(model, "row_labels", None)  # the innermost model's, through the wrappers
    return model if labels is None else conditioned(model, take_rows(labels, idx))


def class_indices(labels, label_dim: int, owner: str) -> Tensor:
    """``labels`` as a [B] int64 tensor of class indices in 0..label_dim − 1 (ValueError naming ``owner``)."""
    if label_dim <= 0:
        raise ValueError(f"{owner}: the model is unconditional; it takes no class labels")
    idx = torch.as_tensor(labels)
    valid = not idx.is_floating_point() and idx.dim() == 1 and bool(((idx >= 0) & (idx < label_dim)).all())
    if not valid:
        raise ValueError(f"{owner}: class labels must be [B] class indices in 0..{label_dim - 1}, got {labels!r}")
    return idx.long()


class NetworkScore:
    """A network ``net(x, labels)`` seen as a score model under one of score_sde's conventions.

    Args:
        net: the network; put in eval mode once here (never per call).
        sde: the SDE the network was trained with.
        shape: shape of one sample.
        data_range: (-1, 1) for centered (VP/sub-VP) models, (0, 1) for uncentered (VE) models.
        time_label: 'continuous', 'ddpm' (discrete VP) or 'smld' (discrete VE); see module docstring.
        num_scales: N of the discrete model (ddpm/smld only).
        label_dim: number of classes of a class-conditional network, called ``net(x, labels,
            class_labels [B])`` once :func:`conditioned` (0: unconditional, ``net(x, labels)``).
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        shape: tuple[int, ...],
        data_range: tuple[float, float] = (-1.0, 1.0),
        time_label: str = "continuous",
        num_scales: int = 1000,
        label_dim: int = 0,
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
        self.label_dim = int(label_dim)
        self.row_labels: Tensor | None = None  # [B] class indices once conditioned

    def conditioned(self, labels: Tensor) -> NetworkScore:
        """The same network conditioned on class indices ``labels`` [B] (see :func:`conditioned`)."""
        new = copy.copy(self)
        device = self._param.device if self._param is not None else None
        new.row_labels = class_indices(labels, self.label_dim, "NetworkScore").to(device)
        return new

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
        if self.label_dim:
            if self.row_labels is None:
                raise ValueError(f"NetworkScore: the network is class-conditional ({self.label_dim} classes) and "
                                 f"was called without class labels; condition it first (conditioned(model, labels))")
            if self.row_labels.shape[0] != x.shape[0]:
                raise ValueError(f"NetworkScore: {self.row_labels.shape[0]} per-sample class labels for a batch "
                                 f"of {x.shape[0]} (a row subset must go through select_rows)")
            out = self.net(x, labels, self.row_labels)
        else:
            out = self.net(x, labels)  # grad mode is the caller's (samplers run under no_grad)
        if divisor is not None:  # −(out / d) computed as out / (−d): one pass, the same bits
            return out / expand_like(-divisor if negate else divisor, x)
        return -out if negate else out


class CountingScore:
    """Wraps a score model and counts every real call: the only source of reported NFE.

    ``nfe`` counts calls (one call on a batch is one NFE for that batch); ``rows`` counts evaluated
    samples (the sum of batch sizes seen), from which solvers that evaluate only their still-running
    samples derive per-sample NFE. A :func:`conditioned` (or :func:`select_rows`) view counts into the
    same tally, so calls on a batch's labelled rows are counted where the solver reads its counter.
    """

    def __init__(self, model: ScoreModel) -> None:
        self.model = model
        self.sde = model.sde
        self.shape = model.shape
        self.data_range = model.data_range
        self._tally = {"nfe": 0, "rows": 0}  # shared with the conditioned views

    @property
    def nfe(self) -> int:
        return self._tally["nfe"]

    @property
    def rows(self) -> int:
        return self._tally["rows"]

    def reset(self) -> None:
        self._tally.update(nfe=0, rows=0)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self._tally["nfe"] += 1
        self._tally["rows"] += x.shape[0]
        return self.model(x, t)

    @property
    def has_data_and_noise(self) -> bool:
        """Whether the model gives ``data_and_noise(x, t) -> (x̂₀, ε̂)`` itself (a data- or noise-predicting
        network, the exact mixtures): :func:`solvers.denoiser.denoised` then uses it."""
        return callable(getattr(self.model, "data_and_noise", None))

    def data_and_noise(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The model's ``data_and_noise(x, t)`` = (x̂₀, ε̂), counted as one call like ``__call__``."""
        self._tally["nfe"] += 1
        self._tally["rows"] += x.shape[0]
        return self.model.data_and_noise(x, t)

    @property
    def has_ancestral_terms(self) -> bool:
        """Whether the model gives ``data_noise_and_variance(x, t)`` (an ADM network,
        :class:`models.adm.score.ADMScore`): what :class:`solvers.adm.ADMAncestral` reads."""
        return callable(getattr(self.model, "data_noise_and_variance", None))

    def data_noise_and_variance(self, x: Tensor, t: Tensor):
        """The model's ``data_noise_and_variance(x, t)`` (x̂₀, ε̂, learned variance weight, classifier
        guidance term), counted as one call like ``__call__``."""
        self._tally["nfe"] += 1
        self._tally["rows"] += x.shape[0]
        return self.model.data_noise_and_variance(x, t)

    def conditioned(self, labels: Tensor) -> CountingScore:
        view = CountingScore(conditioned(self.model, labels))
        view._tally = self._tally
        return view

    def __getattr__(self, name: str):  # forward model attributes (e.g. exact log-densities); not calls
        if name in ("model", "_tally"):
            raise AttributeError(name)
        return getattr(self.model, name)
