"""The per-step shortcuts of the fixed-step loop give exactly the numbers of the plain computation.

* the driver evaluates every step's coefficients once for the grid (``coefficients``) — the same
  values as a step that computes its own;
* whole-batch draws of :class:`SeededNoise` are views of its chunk buffer — a draw still held is
  never overwritten by a refill, and the streams are those of one generator per seed;
* :class:`NetworkScore` reuses its labels while the same, unchanged time tensor comes back.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.score import NetworkScore
from models.sde import VESDE, VPSDE, SubVPSDE
from solvers import Problem, SeededNoise, make_sampler
from solvers.fixed import tweedie

CASES = [
    ("euler_maruyama", {}, VPSDE()),
    ("euler_maruyama", {"convention": "score_sde", "denoise": "x_mean"}, SubVPSDE()),
    ("reverse_diffusion", {}, VESDE()),
    ("reverse_diffusion", {"discretization": "transition", "schedule": "quadratic"}, VPSDE()),
    ("reverse_diffusion", {"probability_flow": True}, SubVPSDE()),
    ("ancestral_sampling", {}, VPSDE()),
    ("ancestral_sampling", {"discretization": "transition"}, VESDE()),
    ("pc", {"predictor": "reverse_diffusion", "corrector": "langevin"}, VPSDE()),
    ("pc", {"predictor": "euler_maruyama", "corrector": "ald", "corrector_steps": 2}, VESDE()),
    ("pc", {"predictor": "none", "corrector": "langevin", "corrector_norm": "per_sample"}, SubVPSDE()),
    ("annealed_langevin", {"steps_per_level": 2}, VESDE()),
]


class TinyNet(nn.Module):
    """A fixed nonlinear network (output depends on x and the label)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        g = torch.Generator().manual_seed(0)
        torch.nn.init.normal_(self.lin.weight, std=0.3, generator=g)
        torch.nn.init.normal_(self.lin.bias, std=0.3, generator=g)

    def forward(self, x, labels):
        return torch.tanh(self.lin(x) + 1e-3 * labels[:, None])


def _plain_loop(sampler, problem, x, noise):
    """The fixed-step loop with every step computing its own coefficients (no ``coef`` rows)."""
    ts = sampler.grid(problem)
    if sampler.steps_taken >= len(ts):
        ts = torch.cat([ts, (2 * ts[-1] - ts[-2]).clamp(min=0.0)[None]])
    ts_b = ts[:, None].expand(-1, x.shape[0])
    x_mean = x
    with torch.no_grad():
        for i in range(sampler.steps_taken):
            t, t_next = ts_b[i].clone(), ts_b[i + 1].clone()
            x = sampler.correct(problem, x, t, noise)
            out = sampler.step(problem, x, t, t_next, noise)
            x, x_mean = out.x, out.x_mean
        if sampler.denoise == "x_mean":
            return x_mean
        if sampler.denoise in ("tweedie", "tweedie_ggf"):
            return tweedie(problem, x, ts_b[-1], divide_by_alpha=sampler.denoise == "tweedie")
    return x


@pytest.mark.parametrize("name, options, sde", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_driver_coefficients_equal_per_step_ones(name, options, sde):
    model = NetworkScore(TinyNet(), sde, (6,))
    sampler = make_sampler(name, n_steps=30, **options)
    x0 = torch.randn(5, 6, generator=torch.Generator().manual_seed(1)) * sde.prior_std()
    fast = sampler.sample(Problem(model), x0, SeededNoise(range(5))).x
    plain = _plain_loop(sampler, Problem(NetworkScore(TinyNet(), sde, (6,))), x0, SeededNoise(range(5)))
    assert torch.equal(fast, plain)


def test_seeded_noise_is_one_generator_per_seed():
    shape, k = (2, 3), 16  # numel 6 → chunk = min(16, 65536 // 6) = 16
    noise = SeededNoise([4, 9])
    draws = torch.stack([noise.normal((2, *shape)).clone() for _ in range(k + 3)], 1)
    for row, seed in enumerate([4, 9]):
        g = torch.Generator().manual_seed(seed)
        expected = torch.cat([torch.randn((k, *shape), generator=g), torch.randn((k, *shape), generator=g)[:3]])
        assert torch.equal(draws[row], expected)


def test_seeded_noise_never_overwrites_a_held_draw():
    noise = SeededNoise(range(3), chunk=2)
    held = noise.normal((3, 4))
    copy = held.clone()
    flat = noise.normal((3, 4)).reshape(3, -1)  # a view of the buffer, through a further view
    flat_copy = flat.clone()
    later = [noise.normal((3, 4)) for _ in range(5)]  # several refills
    assert torch.equal(held, copy) and torch.equal(flat, flat_copy)
    assert not any(torch.equal(z, copy) for z in later)
    del held, flat, later
    # Only a view of a draw survives (the draw itself is gone): refills still leave it alone.
    derived = noise.normal((3, 4))[:, 1:]
    derived_copy = derived.clone()
    for _ in range(5):
        noise.normal((3, 4))
    assert torch.equal(derived, derived_copy)
    # Subsets (adaptive solvers) then whole batches again: each sample's stream continues in order.
    a, b = SeededNoise(range(3), chunk=2), SeededNoise(range(3), chunk=2)
    seq_a = [a.normal((3, 4)) for _ in range(3)] + [a.normal((2, 4), index=torch.tensor([0, 2]))]
    seq_b = [b.normal((3, 4)) for _ in range(3)] + [b.normal((2, 4), index=torch.tensor([0, 2]))]
    seq_a.append(a.normal((1, 4), index=torch.tensor([1])))
    seq_b.append(b.normal((1, 4), index=torch.tensor([1])))
    assert all(torch.equal(u, v) for u, v in zip(seq_a, seq_b, strict=True))
    whole_a, whole_b = a.normal((3, 4)), b.normal((3, 4))
    assert torch.equal(whole_a, whole_b)


def test_network_score_label_reuse_follows_t():
    sde = VPSDE()
    model, fresh = NetworkScore(TinyNet(), sde, (6,)), NetworkScore(TinyNet(), sde, (6,))
    x = torch.randn(4, 6)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    first = model(x, t)
    assert torch.equal(model(x, t), first)
    t.fill_(0.25)  # in place: the version counter changes, labels are recomputed
    moved = model(x, t)
    assert torch.equal(moved, fresh(x, torch.full((4,), 0.25, dtype=torch.float64)))
    assert not torch.equal(moved, first)
    # Another tensor with the same values gives the same result.
    assert torch.equal(model(x, t.clone()), moved)
    # The same t for an input of another dtype: labels and divisor follow x's dtype.
    model.net.double()
    assert model(x.double(), t).dtype == torch.float64
    assert model._prepared(x.double(), t)[0].dtype == torch.float64


def test_problem_marginal_is_remembered_per_time_tensor():
    sde = VPSDE()
    problem = Problem(NetworkScore(TinyNet(), sde, (6,)))
    t = torch.full((3,), 0.3, dtype=torch.float64)
    first = problem.marginal(t)
    assert problem.marginal(t) is first  # the same tensor object: remembered
    fresh = problem.marginal(t.clone())  # another tensor with the same values: computed, equal
    assert fresh is not first and all(torch.equal(a, b) for a, b in zip(fresh, first, strict=True))
    t.fill_(0.7)  # in place: the version counter changes
    moved = problem.marginal(t)
    assert all(torch.equal(a, b) for a, b in zip(moved, sde.marginal(torch.full((3,), 0.7, dtype=torch.float64)),
                                                strict=True))


@pytest.mark.parametrize("name, options, sde", CASES[:1] + CASES[7:8] + [("unipc", {}, VPSDE()), ("edm_stochastic",
                         {"S_churn": 10.0}, VESDE())], ids=["em", "pc", "unipc", "edm_stochastic"])
def test_sampling_under_inference_mode(name, options, sde):
    """Inference tensors track no version counter: the remembered labels and marginals step aside."""
    sampler = make_sampler(name, n_steps=12 if name != "pc" else 30, **options)
    x0 = torch.randn(3, 6, generator=torch.Generator().manual_seed(2)) * sde.prior_std()
    plain = sampler.sample(Problem(NetworkScore(TinyNet(), sde, (6,))), x0, SeededNoise(range(3))).x
    with torch.inference_mode():
        inference = sampler.sample(Problem(NetworkScore(TinyNet(), sde, (6,))), x0.clone(), SeededNoise(range(3))).x
    assert torch.equal(plain, inference)
