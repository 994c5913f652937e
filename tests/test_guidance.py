"""models.guidance against exact answers: CFG on a class-conditional Gaussian mixture (whose null class
is the full mixture) equals (1 − w) ∇log p_t(x) + w ∇log p_t(x | k), the guidance interval switches
CFG off outside (σ_lo, σ_hi], autoguidance equals guide + w (main − guide); every network's calls and
rows are counted apart; conditions stack and split in all three forms (models.conditions)."""

from __future__ import annotations

import pytest
import torch

from models.conditions import cat_rows, num_rows, take_rows
from models.gaussian import ClassConditionalMixture, GaussianMixture
from models.guidance import Autoguidance, ClassifierFreeGuidance, make_guidance
from models.score import CountingScore, conditioned, select_rows
from models.sde import VESDE, VPSDE
from models.tally import CountedModel, Tally
from solvers import Problem, SeededNoise, make_sampler

ROUND_OFF = 1e-12
K = 3


def mixture(sde=None, shift: float = 0.0) -> ClassConditionalMixture:
    g = torch.Generator().manual_seed(1)
    means = torch.randn(K, 1, 2, 2, generator=g, dtype=torch.float64) + shift
    return ClassConditionalMixture(GaussianMixture(means, torch.tensor([0.3, 0.4, 0.5]), sde or VPSDE()))


def test_conditions_stack_and_split_in_every_form():
    idx = torch.tensor([0, 2])
    vec = torch.zeros(2, 3)
    both = cat_rows(idx, vec)  # class indices meeting EDM2's zero label: one-hot
    assert both.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert cat_rows(idx, torch.tensor([3, 3])).tolist() == [0, 2, 3, 3]
    text = {"prompt_embeds": torch.randn(2, 4, 5), "pooled_prompt_embeds": torch.randn(2, 5)}
    null = {"prompt_embeds": torch.zeros(2, 4, 5), "pooled_prompt_embeds": torch.zeros(2, 5)}
    stacked = cat_rows(text, null)
    assert num_rows(stacked) == 4 and stacked["prompt_embeds"].shape == (4, 4, 5)
    picked = take_rows(stacked, torch.tensor([1, 2]))
    assert torch.equal(picked["pooled_prompt_embeds"][0], text["pooled_prompt_embeds"][1])
    assert take_rows(both, slice(1, 3)).tolist() == [[0, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="do not stack"):
        cat_rows(text, {"prompt_embeds": torch.zeros(2, 4, 5)})
    with pytest.raises(ValueError, match="do not stack"):
        cat_rows(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one leading dimension"):
        num_rows({"a": torch.zeros(2), "b": torch.zeros(3)})


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "ve"])
def test_cfg_is_the_exact_guided_score_in_one_forward_of_2b_rows(w, sde):
    model = mixture(sde)
    tally = Tally()
    labels = torch.tensor([0, 1, 2, 1])
    guided = conditioned(ClassifierFreeGuidance(CountedModel(model, tally, "denoiser"), w), labels)
    x = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    before = tally.snapshot()
    got = guided(x, t)
    assert tally.since(before) == {"denoiser": {"calls": 1, "rows": 8}}
    uncond = model.mixture(x, t)  # ∇log p_t(x), the full mixture
    cond = torch.stack([model.component(int(k))(x[i:i + 1], t[i:i + 1])[0] for i, k in enumerate(labels)])
    exact = (1 - w) * uncond + w * cond
    assert (got - exact).abs().max() <= ROUND_OFF * (1 + exact.abs().max())


def test_interval_guides_only_inside_and_forwards_only_what_it_needs():
    model = mixture(VESDE(sigma_max=5.0))
    tally = Tally()
    w, lo, hi = 3.0, 0.5, 2.0
    guided = ClassifierFreeGuidance(CountedModel(model, tally, "denoiser"), w, lo, hi)
    sde = model.sde
    sigmas = torch.tensor([0.2, 1.0, 2.0, 4.0], dtype=torch.float64)  # out, in, in (closed at σ_hi), out
    t = sde.inverse_sigma(sigmas) if hasattr(sde, "inverse_sigma") else None
    assert torch.allclose(sde.marginal(t)[1], sigmas)
    labels = torch.tensor([0, 1, 2, 0])
    x = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    view = conditioned(guided, labels)
    before = tally.snapshot()
    got = view(x, t)
    assert tally.since(before) == {"denoiser": {"calls": 1, "rows": 4 + 2}}  # 2 rows inside the interval
    cfg = conditioned(ClassifierFreeGuidance(model, w), labels)(x, t)
    plain = conditioned(model, labels)(x, t)
    inside = torch.tensor([False, True, True, False])
    assert torch.equal(got[inside], cfg[inside]) and torch.equal(got[~inside], plain[~inside])
    outside = tally.snapshot()
    select_rows(view, torch.tensor([0, 3]))(x[[0, 3]], t[[0, 3]])
    assert tally.since(outside) == {"denoiser": {"calls": 1, "rows": 2}}  # no unconditional branch


def test_autoguidance_is_guide_plus_w_times_the_difference_with_each_network_counted():
    main, weak = mixture(), mixture(shift=0.3)
    tally = Tally()
    w = 2.0
    guided = Autoguidance(CountedModel(main, tally, "denoiser"), CountedModel(weak, tally, "guide"), w)
    labels = torch.tensor([2, 0])
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.4, 0.8], dtype=torch.float64)
    got = conditioned(guided, labels)(x, t)
    d, g = conditioned(main, labels)(x, t), conditioned(weak, labels)(x, t)
    assert torch.equal(got, g + w * (d - g))
    assert tally.snapshot() == {"denoiser": {"calls": 1, "rows": 2}, "guide": {"calls": 1, "rows": 2}}


def test_guidance_refuses_what_it_cannot_guide():
    plain = GaussianMixture(torch.zeros(2, 2), 0.5, VPSDE())
    with pytest.raises(ValueError, match="needs a conditional model"):
        make_guidance("cfg", plain, 2.0)
    with pytest.raises(ValueError, match="unknown guidance kind 'cgf'.*cfg, interval, autoguidance, classifier"):
        make_guidance("cgf", mixture(), 2.0)
    with pytest.raises(ValueError, match="needs sigma_lo and sigma_hi"):
        make_guidance("interval", mixture(), 2.0, sigma_lo=0.1)
    with pytest.raises(ValueError, match="needs a guide"):
        make_guidance("autoguidance", mixture(), 2.0)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        make_guidance("cfg", mixture(), -1.0)
    with pytest.raises(ValueError, match="guiding classifier"):
        make_guidance("classifier", mixture(), 1.0)
    other = ClassConditionalMixture(GaussianMixture(torch.zeros(K, 3), 0.5, VPSDE()))
    with pytest.raises(ValueError, match="shape"):
        make_guidance("autoguidance", mixture(), 2.0, guide=other)


@pytest.mark.parametrize("name", ["euler", "edm_heun", "dpm_solver_pp", "unipc", "adaptive_improved_euler"])
def test_every_sampler_runs_guided_and_counts_one_nfe_per_guided_call(name):
    """A sampler knows nothing of guidance: at w = 1 CFG samples the conditional model (to round-off),
    and its NFE is the guided calls while the denoiser saw one call of 2B rows for each."""
    from tests.test_conformance import options

    model = mixture()
    tally = Tally()
    labels = torch.tensor([0, 2, 1])
    sampler = make_sampler(name, **options(name))
    noise = SeededNoise([5, 6, 7])
    counted = CountingScore(ClassifierFreeGuidance(CountedModel(model, tally, "denoiser"), 1.0))
    problem = Problem(counted).conditioned(labels)
    x = problem.prior_sample(3, noise, dtype=torch.float64)
    sol = sampler.sample(problem, x, noise)
    ref_noise = SeededNoise([5, 6, 7])
    ref_problem = Problem(model).conditioned(labels)
    ref = sampler.sample(ref_problem, ref_problem.prior_sample(3, ref_noise, dtype=torch.float64), ref_noise)
    assert sol.status == "ok" and (sol.x - ref.x).abs().max() < 1e-9
    assert tally.snapshot()["denoiser"] == {"calls": counted.nfe, "rows": 2 * counted.rows}


def test_cfg_with_a_separate_unconditional_network_counts_it_as_the_guide():
    """EDM2's CFG: the unconditional branch is another (unconditional) network, here the full mixture."""
    model = mixture()
    tally = Tally()
    w = 1.7
    guided = make_guidance("cfg", CountedModel(model, tally, "denoiser"), w,
                           guide=CountedModel(model.mixture, tally, "guide"))
    labels = torch.tensor([1, 0])
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([0.5, 0.6], dtype=torch.float64)
    got = conditioned(guided, labels)(x, t)
    one_forward = conditioned(ClassifierFreeGuidance(model, w), labels)(x, t)
    assert (got - one_forward).abs().max() <= ROUND_OFF * (1 + got.abs().max())
    assert tally.snapshot() == {"denoiser": {"calls": 1, "rows": 2}, "guide": {"calls": 1, "rows": 2}}
    with pytest.raises(ValueError, match="is conditional; use kind 'autoguidance'"):
        make_guidance("cfg", model, w, guide=mixture())
