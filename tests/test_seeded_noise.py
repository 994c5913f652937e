"""SeededNoise: one generator per seed, whole-batch draws as views that a refill never overwrites; and
sampling under torch.inference_mode (no shortcut may depend on version counters)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.score import NetworkScore
from models.sde import VESDE, VPSDE
from solvers import Problem, SeededNoise, make_sampler


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


@pytest.mark.parametrize("name, options, sde", [
    ("euler_maruyama", {}, VPSDE()), ("pc", {"predictor": "reverse_diffusion", "corrector": "langevin"}, VPSDE()),
    ("unipc", {}, VPSDE()), ("edm_stochastic", {"S_churn": 10.0}, VESDE()),
], ids=["em", "pc", "unipc", "edm_stochastic"])
def test_sampling_under_inference_mode(name, options, sde):
    sampler = make_sampler(name, n_steps=12 if name != "pc" else 30, **options)
    x0 = torch.randn(3, 6, generator=torch.Generator().manual_seed(2)) * sde.prior_std()
    plain = sampler.sample(Problem(NetworkScore(TinyNet(), sde, (6,))), x0, SeededNoise(range(3))).x
    with torch.inference_mode():
        inference = sampler.sample(Problem(NetworkScore(TinyNet(), sde, (6,))), x0.clone(), SeededNoise(range(3))).x
    assert torch.equal(plain, inference)
