"""Classifier guidance (models/adm/guidance.py) on a case with a known answer, and its counting.

The classifier of a Gaussian mixture's components is exact in closed form: logits_k(x, t) =
log w_k + log N(x; α_t μ_k, (α_t² s_k² + σ_t²) I), so ∇ log p(y | x_t) = ∇ log p_t(x | y) − ∇ log p_t(x):
guidance at scale s gives the score ∇ log p_t(x) + s(∇ log p_t(x | y) − ∇ log p_t(x)) — at s = 1 the
exact score of component y alone (models.gaussian.ClassConditionalMixture).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.adm.guidance import ClassifierGuidance
from models.gaussian import ClassConditionalMixture, GaussianMixture
from models.sde import VPSDE
from solvers import Problem, RecordedNoise, SeededNoise, make_sampler

LABELS = torch.tensor([0, 2, 1, 2])


class MixtureClassifier(nn.Module):
    """p(y | x_t) of a Gaussian mixture's components, exactly (fed the path's time t)."""

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        self.mixture, self.out_channels = mixture, mixture.means.shape[0]

    def forward(self, x, t):
        return self.mixture._log_components(x, t)[0]


@pytest.fixture
def mixture():
    g = torch.Generator().manual_seed(0)
    return GaussianMixture(torch.randn(3, 1, 2, 2, generator=g), torch.tensor([0.3, 0.2, 0.5]), VPSDE(),
                           weights=torch.tensor([0.5, 0.3, 0.2]))


def guided(mixture, scale):
    return ClassifierGuidance(mixture, MixtureClassifier(mixture), scale, time_input=lambda t: t)


def state(mixture, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64), torch.tensor([0.9, 0.5, 0.2, 0.05],
                                                                                  dtype=torch.float64)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_guided_score_is_the_class_score_in_closed_form(mixture, scale):
    x, t = state(mixture)
    model = guided(mixture, scale).conditioned(LABELS)
    class_score = ClassConditionalMixture(mixture).conditioned(LABELS)(x, t)
    expected = mixture(x, t) + scale * (class_score - mixture(x, t))
    assert torch.allclose(model(x, t), expected, rtol=1e-9, atol=1e-9)
    g = model.gradient(x, t)
    assert torch.allclose(g, scale * (class_score - mixture(x, t)), rtol=1e-9, atol=1e-9)


def test_ddim_term_is_eps_minus_sqrt_one_minus_alphabar_times_grad(mixture):
    """ADM's condition_score: ε' = ε − √(1 − ᾱ_t)·g, x̂₀' from ε' (VP: σ_t = √(1 − ᾱ_t))."""
    x, t = state(mixture)
    model = guided(mixture, 2.0).conditioned(LABELS)
    x0, eps = mixture.data_and_noise(x, t)
    alpha_bar = mixture.sde.marginal(t)[0] ** 2
    g = model.gradient(x, t)
    eps_g = eps - (1 - alpha_bar).sqrt()[:, None, None, None] * g
    x0_g, eps_out = model.data_and_noise(x, t)
    assert torch.allclose(eps_out, eps_g, atol=1e-12)
    assert torch.allclose(x0_g, (x - (1 - alpha_bar).sqrt()[:, None, None, None] * eps_g)
                          / alpha_bar.sqrt()[:, None, None, None], atol=1e-12)


def test_adm_ancestral_adds_variance_times_grad_to_the_mean(mixture):
    """ADM's condition_mean in one adm_ancestral step (variance 'large': Σ = β, ADM's default without a
    learned variance): x_next = μ + β g with zero noise, written with ᾱ as ADM writes it."""
    x, _ = state(mixture)
    t, t_next = 0.5, 0.45
    model = guided(mixture, 1.5)
    sampler = make_sampler("adm_ancestral", variance="large", n_steps=2, denoise="none")
    sde = mixture.sde
    problem = Problem(RunPath(model, VPSDE(T=t, eps=t_next))).conditioned(LABELS)  # one step t → t_next
    with torch.no_grad():
        sol = sampler.sample(problem, x, RecordedNoise([torch.zeros_like(x)]))
    tt = torch.full((4,), t, dtype=torch.float64)
    ab, ab_n = sde.marginal(tt)[0] ** 2, sde.marginal(torch.full((4,), t_next, dtype=torch.float64))[0] ** 2
    beta = 1 - ab / ab_n
    c1 = beta * ab_n.sqrt() / (1 - ab)
    c2 = (1 - ab_n) * (1 - beta).sqrt() / (1 - ab)
    x0, _ = mixture.data_and_noise(x, tt)
    g = guided(mixture, 1.5).conditioned(LABELS).gradient(x, tt)
    e = lambda v: v[:, None, None, None]  # noqa: E731
    expected = e(c1) * x0 + e(c2) * x + e(beta) * g
    assert torch.allclose(sol.x, expected, atol=1e-12)
    assert sol.stats.nfe == 1


class RunPath:
    """The model on a run's path (T, eps replaced), as bench.models.RunScore."""

    def __init__(self, model, sde):
        self.model, self.sde, self.shape, self.data_range = model, sde, model.shape, model.data_range

    def __call__(self, x, t):
        return self.model(x, t)

    def conditioned(self, labels):
        return RunPath(self.model.conditioned(labels), self.sde)

    def __getattr__(self, name):
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)


@pytest.mark.parametrize("solver, steps", [("adm_ancestral", 5), ("ddim", 5), ("dpm_solver_pp", 5)])
def test_classifier_calls_are_counted_apart_from_nfe(mixture, solver, steps):
    model = guided(mixture, 1.0)
    problem = Problem(model).conditioned(LABELS)
    x, _ = state(mixture)
    sampler = make_sampler(solver, n_steps=steps)
    with torch.no_grad():
        sol = sampler.sample(problem, x, SeededNoise(range(4)))
    assert sol.stats.nfe == sampler.expected_nfe == steps  # (steps − 1) steps + the final denoise
    assert model.classifier_nfe == sol.stats.nfe and model.classifier_rows == 4 * sol.stats.nfe


def test_scale_and_labels_are_checked(mixture):
    with pytest.raises(ValueError, match="scale must be a number >= 0"):
        guided(mixture, -1.0)
    model = guided(mixture, 1.0)
    with pytest.raises(ValueError, match="no class labels"):
        model.gradient(*state(mixture))
    with pytest.raises(ValueError, match="class labels must be"):
        model.conditioned(torch.tensor([5]))
