"""What a network predicts, turned exactly into the data and noise predictions on any Gaussian path.

With x = α_t x₀ + σ_t ε, every common network output is a known linear combination
out = a·x₀ + b·ε of the two unknowns (coefficients from the path at t):

============  ==========================================  ==========================
prediction    output                                       (a, b)
============  ==========================================  ==========================
score         ∇ log p_t(x) = −ε/σ_t                        (0, −1/σ_t)
eps           ε (Ho et al. 2020)                           (0, 1)
x0            x₀                                           (1, 0)
v             α_t ε − σ_t x₀ (Salimans & Ho 2022)          (−σ_t, α_t)
flow          u = dx_t/dt = α̇_t x₀ + σ̇_t ε (flow matching) (α̇_t, σ̇_t)
edm           D(x/α_t; σ_t/α_t) = x₀ (Karras et al. 2022)  (1, 0); input x/α_t, σ_ve
============  ==========================================  ==========================

so (x̂₀, ε̂) solve the 2×2 system [α σ; a b] (x₀, ε) = (x, out): with det = α b − σ a,

    x̂₀ = (b x − σ out) / det,     ε̂ = (α out − a x) / det.

The system is singular where det = 0: ε- and score-prediction at α_t = 0 (there x̂₀ is 0/0) and
EDM's input x/α_t. x₀-, v- and flow-prediction are regular at α_t = 0 (flow matching at t = 1), so a
flow-matching network gives finite x̂₀ from pure noise.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from models.paths import expand_like

__all__ = ["PREDICTIONS", "prediction_coefficients", "to_data_and_noise", "PredictionModel"]

PREDICTIONS = ("score", "eps", "x0", "v", "flow", "edm")


def prediction_coefficients(prediction: str, path, t: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) with output = a·x₀ + b·ε for ``prediction`` at times t [B] on ``path``, [B] float64 each."""
    alpha, sigma = path.marginal(t)
    if prediction == "score":
        return torch.zeros_like(sigma), -1 / sigma
    if prediction == "eps":
        return torch.zeros_like(sigma), torch.ones_like(sigma)
    if prediction in ("x0", "edm"):
        return torch.ones_like(sigma), torch.zeros_like(sigma)
    if prediction == "v":
        return -sigma, alpha
    if prediction == "flow":
        return path.marginal_derivative(t)
    raise ValueError(f"unknown prediction {prediction!r}; expected one of: {', '.join(PREDICTIONS)}")


def to_data_and_noise(out: Tensor, x: Tensor, prediction: str, path, t: Tensor) -> tuple[Tensor, Tensor]:
    """(x̂₀, ε̂) [B, ...] from a network output ``out`` at (x, t): the 2×2 solve of the module docstring."""
    alpha, sigma = path.marginal(t)
    a, b = prediction_coefficients(prediction, path, t)
    det = alpha * b - sigma * a
    x0 = (expand_like(b / det, x) * x - expand_like(sigma / det, x) * out)
    eps = (expand_like(alpha / det, x) * out - expand_like(a / det, x) * x)
    return x0, eps


class PredictionModel:
    """A network ``net(x, t)`` predicting ``prediction`` seen as a score model on ``path``, with
    ``data_and_noise(x, t) -> (x̂₀, ε̂)``: each call of either is ONE network call (counted once by
    :class:`models.score.CountingScore`).

    The network is called with the state and the path's time t as they are, except for 'edm', whose
    network is EDM's D, called with x/α_t and σ_ve = σ_t/α_t (Karras et al. 2022, Eq. 7 with
    s(t) = α_t). Mapping t onto a discrete model's timestep is the next issue's *time mapping*.

    Args:
        net: callable (x [B, ...], t [B]) -> output [B, ...].
        path: the Gaussian path (:mod:`models.paths`; any ``SDES`` instance).
        prediction: one of ``PREDICTIONS``.
        shape: one sample's shape; data_range: the data's range.
        label_dim: number of classes of a class-conditional network, called ``net(x, t, class_labels)``
            once :meth:`conditioned` (0: unconditional).
    """

    def __init__(self, net, path, prediction: str, shape: tuple[int, ...],
                 data_range: tuple[float, float] = (-1.0, 1.0), label_dim: int = 0) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of: {', '.join(PREDICTIONS)}")
        self.net, self.sde, self.prediction = net, path, prediction
        self.shape, self.data_range = tuple(shape), tuple(data_range)
        self.label_dim = int(label_dim)
        self.row_labels: Tensor | None = None  # [B] class indices once conditioned

    def conditioned(self, labels: Tensor) -> PredictionModel:
        """The same network conditioned on class indices ``labels`` [B] (:func:`models.score.conditioned`)."""
        from models.score import class_indices

        new = copy.copy(self)
        new.row_labels = class_indices(labels, self.label_dim, "PredictionModel")
        return new

    def _call(self, x: Tensor, t: Tensor) -> Tensor:
        if not self.label_dim:
            return self.net(x, t)
        if self.row_labels is None or self.row_labels.shape[0] != x.shape[0]:
            raise ValueError(f"PredictionModel: the network is class-conditional ({self.label_dim} classes); "
                             f"condition it on one label per sample first (conditioned(model, labels))")
        return self.net(x, t, self.row_labels.to(x.device))

    def data_and_noise(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) [B, ...] at (x, t), one network call."""
        if self.prediction == "edm":
            alpha, sigma = self.sde.marginal(t)
            out = self._call(x / expand_like(alpha, x), sigma / alpha)
        else:
            out = self._call(x, t)
        return to_data_and_noise(out, x, self.prediction, self.sde, t)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """The score −ε̂/σ_t [B, ...], one network call."""
        sigma = self.sde.marginal(t)[1]
        return -self.data_and_noise(x, t)[1] / expand_like(sigma, x)
