"""Classifier guidance (Dhariwal & Nichol 2021, §4, Algorithms 1–2) with ADM's noisy classifier.

A classifier p_φ(y | x_t, t) trained on noisy images (:class:`models.adm.unet.EncoderUNetModel`)
steers sampling towards class y through the gradient, scaled by s (``classifier_scale``),

    g(x, t) = s ∇_x log p_φ(y | x_t = x)        (ADM's ``cond_fn``; the classifier gets the model's timestep input).

It enters in one of two ways, both ADM's:

* the score (every sampler): ∇ log p_t(x) + g, i.e. ε̂' = ε̂ − σ_t g and x̂₀' = (x − σ_t ε̂')/α_t, with
  ε̂ re-derived from the (clipped) x̂₀ first and x̂₀' not clipped again (ADM's ``condition_score``, what
  its ``ddim_sample`` uses; Algorithm 2);
* the ancestral mean (:class:`solvers.adm.ADMAncestral`): μ + Σ g with the step's variance Σ (ADM's
  ``condition_mean`` in ``p_sample``; Algorithm 1) — the wrapper hands g over with the unguided x̂₀
  (:meth:`ClassifierGuidance.data_noise_and_variance`).

The classifier's gradient evaluations are counted by the wrapper (``classifier_nfe``: calls on a
batch; ``classifier_rows``: rows evaluated), apart from the denoiser's NFE, which the solver's
:class:`models.score.CountingScore` counts; :func:`models.score.conditioned` views share the tally.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from models.adm.score import AncestralTerms
from models.paths import expand_like
from models.score import class_indices, conditioned
from models.tally import CountedModel, Tally

__all__ = ["ClassifierGuidance"]


class ClassifierGuidance:
    """``model`` guided by ``classifier`` at scale ``scale`` (module docstring).

    Args:
        model: a score model giving ``data_and_noise`` (an :class:`~models.adm.score.ADMScore`, or an
            exact mixture in the tests); class-conditional or not.
        classifier: ``classifier(x, time_input(t)) -> logits [B, K]`` (ADM's EncoderUNetModel).
        scale: s ≥ 0 (ADM's ``classifier_scale``; 0 evaluates the gradient and adds nothing).
        time_input: t [B] → the classifier's timestep input; default the model's own (``model.timesteps``,
            ADM's k(t)), as ADM wraps both networks alike.
    """

    def __init__(self, model, classifier: nn.Module, scale: float,
                 time_input: Callable[[Tensor], Tensor] | None = None) -> None:
        if not isinstance(scale, int | float) or isinstance(scale, bool) or not scale >= 0:
            raise ValueError(f"classifier guidance: scale must be a number >= 0, got {scale!r}")
        self.model, self.classifier, self.scale = model, classifier.eval(), float(scale)
        self.time_input = time_input if time_input is not None else model.timesteps
        self.sde, self.shape, self.data_range = model.sde, model.shape, model.data_range
        self.learn_sigma = bool(getattr(model, "learn_sigma", False))
        self.model_label_dim = int(getattr(model, "label_dim", 0) or 0)
        self.label_dim = self.model_label_dim or int(classifier.out_channels)
        self.row_labels: Tensor | None = None  # [B] the classes asked for, once conditioned
        self._tally = {"classifier_nfe": 0, "classifier_rows": 0}  # shared with the conditioned views
        self.tally: Tally | None = None  # per-network counts (counted())

    def with_scale(self, scale: float) -> ClassifierGuidance:
        """The same networks guided at another ``scale`` (the ``guidance: {kind: classifier}`` axis)."""
        if not isinstance(scale, int | float) or isinstance(scale, bool) or not scale >= 0:
            raise ValueError(f"classifier guidance: scale must be a number >= 0, got {scale!r}")
        new = copy.copy(self)
        new.scale = float(scale)
        return new

    def counted(self, tally: Tally) -> ClassifierGuidance:
        """The same guided model with its denoiser counted as 'denoiser' and the classifier's forwards and
        backwards as 'classifier' and 'classifier_backward' in ``tally`` (:mod:`models.tally`)."""
        new = copy.copy(self)
        new.model = CountedModel(self.model, tally, "denoiser")
        new.tally = tally
        return new

    @property
    def classifier_nfe(self) -> int:
        return self._tally["classifier_nfe"]

    @property
    def classifier_rows(self) -> int:
        return self._tally["classifier_rows"]

    def conditioned(self, labels: Tensor) -> ClassifierGuidance:
        """The guided model for a batch whose row i asks for class ``labels[i]`` (the denoiser too,
        where it is class-conditional)."""
        new = copy.copy(self)
        new.row_labels = class_indices(labels, self.label_dim, "classifier guidance")
        if self.model_label_dim:
            new.model = conditioned(self.model, new.row_labels)
        return new

    def gradient(self, x: Tensor, t: Tensor) -> Tensor:
        """g = s ∇_x log p_φ(y | x, t) [B, ...] in x's dtype (one classifier forward and backward, counted)."""
        y = self.row_labels
        if y is None or y.shape[0] != x.shape[0]:
            got = "no class labels" if y is None else f"{y.shape[0]} class labels"
            raise ValueError(f"classifier guidance: {got} for a batch of {x.shape[0]} rows; condition it per batch "
                             f"(models.score.conditioned)")
        self._tally["classifier_nfe"] += 1
        self._tally["classifier_rows"] += x.shape[0]
        if self.tally is not None:  # one forward and one backward of B rows
            self.tally.add("classifier", rows=x.shape[0])
            self.tally.add("classifier_backward", rows=x.shape[0])
        param = next(self.classifier.parameters(), None)
        with torch.enable_grad():
            x_in = x.detach().to(param.dtype if param is not None else x.dtype).requires_grad_(True)
            logits = self.classifier(x_in, self.time_input(t).to(x.device))
            log_p = torch.log_softmax(logits, dim=-1)[torch.arange(x.shape[0], device=x.device), y.to(x.device)]
            (grad,) = torch.autograd.grad(log_p.sum(), x_in)
        return (self.scale * grad).to(x.dtype)

    def _unguided(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        if callable(getattr(self.model, "data_and_noise", None)):
            return self.model.data_and_noise(x, t)
        alpha, sigma = self.sde.marginal(t)
        s = self.model(x, t)
        return (x + expand_like(sigma**2, x) * s) / expand_like(alpha, x), -expand_like(sigma, x) * s

    def data_and_noise(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂₀', ε̂') with ε̂' = ε̂ − σ_t g (ADM's condition_score): one denoiser call, one classifier gradient."""
        x0, eps = self._unguided(x, t)
        alpha, sigma = self.sde.marginal(t)
        eps = eps - expand_like(sigma, x) * self.gradient(x, t)
        return (x - expand_like(sigma, x) * eps) / expand_like(alpha, x), eps

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """The guided score ∇ log p_t(x) + g = −ε̂'/σ_t [B, ...]."""
        sigma = self.sde.marginal(t)[1]
        return -self.data_and_noise(x, t)[1] / expand_like(sigma, x)

    def data_noise_and_variance(self, x: Tensor, t: Tensor) -> AncestralTerms:
        """The unguided x̂₀, ε̂ and learned variance weight, with g as the ancestral mean's shift (ADM's
        condition_mean): one denoiser call, one classifier gradient."""
        if callable(getattr(self.model, "data_noise_and_variance", None)):
            terms = self.model.data_noise_and_variance(x, t)
        else:
            terms = AncestralTerms(*self._unguided(x, t), None, None)
        return terms._replace(guidance=self.gradient(x, t))
