"""Guidance: a score model that wraps the denoiser, so every sampler runs guided without knowing it.

Each kind evaluates the wrapped network(s) and combines their predictions with weights that sum to
one; the result is again a score model (``__call__`` → score, and ``data_and_noise`` → (x̂₀, ε̂)
exactly where the wrapped model gives it). Since x̂₀ = (x + σ_t² s)/α_t and ε̂ = −σ_t s are affine in
the score with coefficients that do not depend on the network, a combination with weights summing to
one is the same whether it is taken on x̂₀ (EDM's D), on ε̂ (diffusers) or on the score: this module
combines the score in ``__call__`` and x̂₀ and ε̂ in ``data_and_noise``. One call of a guided model is
one *guided denoiser evaluation* — one NFE for :class:`~models.score.CountingScore` — whatever the
networks behind it cost; those are counted per network by :class:`models.tally.CountedModel`.

Kinds (:data:`GUIDANCE_KINDS`; ``w`` is the scale, w = 1 the conditional model alone):

* ``cfg`` — classifier-free guidance (Ho & Salimans 2022), in EDM2's form D_w = D(x; ∅) + w (D(x; c) − D(x; ∅)),
  i.e. s_w = (1 − w) ∇log p_t(x) + w ∇log p_t(x | c) for exact scores. The conditional and the
  unconditional branch are ONE batched forward of 2B rows: the wrapped model conditioned on
  ``cat_rows(c, ∅)`` (:mod:`models.conditions`). ∅ is the null condition the model was trained with,
  ``model.null_condition(n)`` (a null class, the empty prompt's embeddings), or a separate unconditional
  network (EDM2: its conditional networks are trained without label dropout, and ``generate_images.py``
  guides them by an unconditional ``xs-uncond`` network — the same formula, two forwards of B rows).
* ``interval`` — CFG only for σ ∈ (σ_lo, σ_hi] (Kynkäänniemi et al. 2024, "Applying guidance in a
  limited interval improves sample and distribution quality", Eq. 3), σ = σ_t/α_t the EDM noise level;
  outside the interval the conditional model alone, one forward of B rows and no unconditional branch.
  Rows inside and outside (per-sample times) share one forward of B + (rows inside) rows.
* ``autoguidance`` — D_w = D_guide(x; c) + w (D(x; c) − D_guide(x; c)) with a second, weaker model of the
  same data (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself", Eq. 2;
  NVlabs/edm2 ``generate_images.py``: ``gnet`` + ``guidance``): the main network on B rows and the guide
  on B rows, two forwards. Allowed on unconditional models (the paper's unconditional results).
* ``classifier`` — ADM's classifier guidance (:class:`models.adm.guidance.ClassifierGuidance`; its scale
  is ADM's ``classifier_scale``, a gradient scale, not a mixing weight).

:func:`make_guidance` builds any of them.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from models.conditions import cat_rows, num_rows
from models.score import conditioned

__all__ = ["GUIDANCE_KINDS", "ClassifierFreeGuidance", "Autoguidance", "make_guidance", "null_condition",
           "is_conditional"]

GUIDANCE_KINDS = ("cfg", "interval", "autoguidance", "classifier")


def is_conditional(model) -> bool:
    """Whether the model takes per-row conditions (class labels or text), through its wrappers."""
    return int(getattr(model, "label_dim", 0) or 0) > 0 or callable(getattr(model, "null_condition", None))


def null_condition(model, n: int):
    """The model's null condition for n rows (``model.null_condition(n)``); ValueError where it has none."""
    make = getattr(model, "null_condition", None)
    if not callable(make):
        raise ValueError(f"{type(model).__name__}: classifier-free guidance needs a model trained with a null "
                         f"condition (null class, zero label, empty prompt); this one has no null_condition()")
    return make(n)


def _check_scale(scale) -> float:
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not 0 <= scale < float("inf"):
        raise ValueError(f"guidance: scale must be a finite number >= 0, got {scale!r}")
    return float(scale)


def _mix(base: Tensor, target: Tensor, w: float) -> Tensor:
    """base + w (target − base): the weights (1 − w, w) sum to one."""
    return base + w * (target - base)


class _Guided:
    """What the guided models share: the score-model attributes of ``model``, its per-row condition
    (``row_labels``, so :func:`~models.score.select_rows` hands a row subset its rows), and
    ``data_and_noise`` exactly where ``model`` has it."""

    def __init__(self, model, scale: float) -> None:
        self.model, self.scale = model, _check_scale(scale)
        self.sde, self.shape, self.data_range = model.sde, model.shape, model.data_range
        self.label_dim = int(getattr(model, "label_dim", 0) or 0)
        self.row_labels = None  # the batch's condition, once conditioned

    def conditioned(self, condition):
        new = copy.copy(self)
        num_rows(condition)
        new.row_labels = condition
        return new

    def _condition(self, x: Tensor):
        c = self.row_labels
        if c is None or num_rows(c) != x.shape[0]:
            got = "no condition" if c is None else f"a condition of {num_rows(c)} rows"
            raise ValueError(f"{type(self).__name__}: {got} for a batch of {x.shape[0]} rows; condition it per "
                             f"batch (models.score.conditioned; a row subset goes through select_rows)")
        return c

    def _evaluate(self, x: Tensor, t: Tensor, prediction: str):
        raise NotImplementedError

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """The guided score [B, ...]."""
        return self._evaluate(x, t, "score")

    def __getattr__(self, name: str):
        if name == "data_and_noise" and callable(getattr(self.model, "data_and_noise", None)):
            return lambda x, t: self._evaluate(x, t, "data_and_noise")
        if name in ("model", "data_and_noise", "data_noise_and_variance"):
            raise AttributeError(name)
        return getattr(self.model, name)


def _predict(model, x: Tensor, t: Tensor, prediction: str):
    return model.data_and_noise(x, t) if prediction == "data_and_noise" else model(x, t)


def _combine(base, target, w: float):
    if isinstance(base, tuple):  # (x̂₀, ε̂): both mixed with the same weights
        return tuple(_mix(b, c, w) for b, c in zip(base, target, strict=True))
    return _mix(base, target, w)


def _rows(out, idx):
    return tuple(o[idx] for o in out) if isinstance(out, tuple) else out[idx]


class ClassifierFreeGuidance(_Guided):
    """Classifier-free guidance at scale w, everywhere or only for σ ∈ (σ_lo, σ_hi] (module docstring).

    The unconditional branch is the model itself on its null condition (one forward of B + k rows, k
    the rows inside the interval: 2B everywhere), or, given ``uncond``, a separate unconditional
    network (EDM2's CFG: ``generate_images.py`` guides with an ``xs-uncond`` network, its conditional
    networks being trained without label dropout): then the model on B rows and ``uncond`` on k rows.

    Args:
        model: a conditional score model with ``null_condition(n)`` (or any conditional one, given ``uncond``).
        scale: w ≥ 0 (1: the conditional model; 0: the unconditional one).
        sigma_lo, sigma_hi: the guidance interval in EDM σ = σ_t/α_t (None, None: everywhere).
        uncond: an unconditional score model of the same data and sample shape, or None.

    NFE: one per call (a guided denoiser evaluation).
    """

    def __init__(self, model, scale: float, sigma_lo: float | None = None, sigma_hi: float | None = None,
                 uncond=None) -> None:
        super().__init__(model, scale)
        if not is_conditional(model):
            raise ValueError(f"classifier-free guidance needs a conditional model; {type(model).__name__} is "
                             f"unconditional")
        if uncond is None:
            null_condition(model, 1)  # refused here where the model has none
        elif is_conditional(uncond):
            raise ValueError("classifier-free guidance: the unconditional network given as guide is conditional; "
                             "use kind 'autoguidance' for a conditional guide")
        elif tuple(uncond.shape) != tuple(model.shape):
            raise ValueError(f"classifier-free guidance: the unconditional network's samples have shape "
                             f"{list(uncond.shape)}, the model's {list(model.shape)}; expected equal")
        self.uncond = uncond
        lo = 0.0 if sigma_lo is None else float(sigma_lo)
        hi = float("inf") if sigma_hi is None else float(sigma_hi)
        if not 0 <= lo < hi:
            raise ValueError(f"guidance interval: need 0 <= sigma_lo < sigma_hi, got sigma_lo={sigma_lo!r}, "
                             f"sigma_hi={sigma_hi!r}")
        self.sigma_lo, self.sigma_hi = lo, hi
        self._everywhere = sigma_lo is None and sigma_hi is None

    def inside(self, t: Tensor) -> Tensor:
        """Which rows of times t [B] lie in the guidance interval: σ_lo < σ_t/α_t <= σ_hi, [B] bool."""
        if self._everywhere:
            return torch.ones(t.shape, dtype=torch.bool, device=t.device)
        alpha, sigma = self.sde.marginal(t.to(torch.float64))
        s = sigma / alpha
        return (s > self.sigma_lo) & (s <= self.sigma_hi)

    def _evaluate(self, x: Tensor, t: Tensor, prediction: str):
        c = self._condition(x)
        idx = self.inside(t).nonzero().flatten()
        B, k = x.shape[0], int(idx.numel())
        if k == 0:  # outside the interval: the conditional model alone, B rows
            return _predict(conditioned(self.model, c), x, t, prediction)
        if self.uncond is not None:  # a separate unconditional network on the guided rows
            cond = _predict(conditioned(self.model, c), x, t, prediction)
            uncond = _predict(self.uncond, x[idx], t[idx], prediction)
        else:  # one forward: every row conditioned, then the guided rows with the null condition
            both = cat_rows(c, null_condition(self.model, k))
            out = _predict(conditioned(self.model, both), torch.cat([x, x[idx]]), torch.cat([t, t[idx]]), prediction)
            cond, uncond = _rows(out, slice(0, B)), _rows(out, slice(B, B + k))
        if k == B:
            return _combine(uncond, cond, self.scale)
        mixed = _combine(uncond, _rows(cond, idx), self.scale)
        if isinstance(cond, tuple):
            res = tuple(v.clone() for v in cond)
            for r, m in zip(res, mixed, strict=True):
                r[idx] = m
            return res
        res = cond.clone()
        res[idx] = mixed
        return res

    def __getattr__(self, name: str):
        if name == "data_and_noise" and self.uncond is not None and not callable(
                getattr(self.uncond, "data_and_noise", None)):
            raise AttributeError(name)
        if name == "uncond":
            raise AttributeError(name)
        return super().__getattr__(name)


class Autoguidance(_Guided):
    """Autoguidance (Karras et al. 2024): D_w = D_guide + w (D − D_guide), both models on the same
    condition (an unconditional guide, or model, gets none). NFE: one per call; the main network and the
    guide: one forward of B rows each.

    Args:
        model: the main score model.
        guide: the guide (a smaller or less-trained model of the same data, sample shape and path).
        scale: w ≥ 0 (1: the main model alone).
    """

    def __init__(self, model, guide, scale: float) -> None:
        super().__init__(model, scale)
        if tuple(guide.shape) != tuple(model.shape):
            raise ValueError(f"autoguidance: the guide's samples have shape {list(guide.shape)}, the model's "
                             f"{list(model.shape)}; expected equal")
        self.guide = guide
        self._guide_conditional = is_conditional(guide)
        if self._guide_conditional and not is_conditional(model):
            raise ValueError("autoguidance: the guide is conditional but the model is not")

    def conditioned(self, condition):
        if not is_conditional(self.model):
            raise ValueError(f"autoguidance: the model ({type(self.model).__name__}) is unconditional; it takes "
                             f"no condition")
        return super().conditioned(condition)

    def _evaluate(self, x: Tensor, t: Tensor, prediction: str):
        if is_conditional(self.model):
            c = self._condition(x)
            main = conditioned(self.model, c)
            guide = conditioned(self.guide, c) if self._guide_conditional else self.guide
        else:
            main, guide = self.model, self.guide
        return _combine(_predict(guide, x, t, prediction), _predict(main, x, t, prediction), self.scale)

    def __getattr__(self, name: str):
        if name == "data_and_noise" and not callable(getattr(self.guide, "data_and_noise", None)):
            raise AttributeError(name)
        if name == "guide":
            raise AttributeError(name)
        return super().__getattr__(name)


def make_guidance(kind: str, model, scale: float, *, guide=None, sigma_lo: float | None = None,
                  sigma_hi: float | None = None):
    """The guided score model of ``kind`` (:data:`GUIDANCE_KINDS`) around ``model``.

    Args:
        kind: 'cfg', 'interval' (needs ``sigma_lo``/``sigma_hi``), 'autoguidance' (needs ``guide``) or
            'classifier' (``model`` a :class:`models.adm.guidance.ClassifierGuidance`: its scale replaced).
        model: the (counted) score model; ``guide``: the (counted) guide model for autoguidance, or for
            'cfg'/'interval' a separate unconditional network as the unconditional branch (EDM2's CFG).
        scale: the guidance scale w.
    Raises:
        ValueError: an unknown kind, a missing or superfluous argument, a model the kind cannot guide.
    """
    if kind not in GUIDANCE_KINDS:
        raise ValueError(f"unknown guidance kind {kind!r}; expected one of: {', '.join(GUIDANCE_KINDS)}")
    if guide is not None and kind == "classifier":
        raise ValueError("guidance kind 'classifier' takes no guide model")
    if kind != "interval" and (sigma_lo is not None or sigma_hi is not None):
        raise ValueError(f"guidance kind {kind!r} takes no sigma_lo/sigma_hi (only 'interval' does)")
    if kind == "cfg":
        return ClassifierFreeGuidance(model, scale, uncond=guide)
    if kind == "interval":
        if sigma_lo is None or sigma_hi is None:
            raise ValueError("guidance kind 'interval' needs sigma_lo and sigma_hi")
        return ClassifierFreeGuidance(model, scale, sigma_lo, sigma_hi, uncond=guide)
    if kind == "autoguidance":
        if guide is None:
            raise ValueError("guidance kind 'autoguidance' needs a guide model")
        return Autoguidance(model, guide, scale)
    with_scale = getattr(model, "with_scale", None)
    if not callable(with_scale):
        raise ValueError(f"guidance kind 'classifier' needs a model with a guiding classifier (an ADM model with a "
                         f"'classifier' section); {type(model).__name__} has none")
    return with_scale(scale)

