"""ADM's own samplers replayed through the project's solver core (shared/fixtures/adm, README §6–7):

* ``p_sample_loop`` with ``timestep_respacing="25"`` = ``adm_ancestral`` on schedule ``adm_respaced``
  (24 steps with the learned variance, then the final denoise at timestep 0 = ADM's last step x̂₀);
* ``ddim_sample_loop`` with ``"ddim10"``, η = 0 and 1 = the project's ``ddim`` on schedule ``adm_ddim``
  (the clipped x̂₀ is the model's ``clip_denoised``; ``False`` tested beside it).

Each run twice: network-free (a stand-in network returning the recorded outputs, asserting the
timesteps it is fed), and with the project's network. The same timesteps (to float64 round-off), the same
NFE; the samples to README §9's ``maxabs(Δ) ≤ 1e-4·maxabs(ref)`` (uint8 images within 1).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.adm import load_adm
from models.adm.score import ADMScore
from models.gaussian import GaussianMixture
from models.sde import VPSDE
from solvers import Problem, RecordedNoise, SeededNoise, make_sampler
from solvers.respacing import space_timesteps
from tests.conftest import require_fixture

F = "adm/A_lin_cond"
RUNS = {  # fixture → (sampler, options)
    "p25": ("adm_ancestral", {"schedule": "adm_respaced", "n_steps": 25}),
    "ddim10_eta0": ("ddim", {"schedule": "adm_ddim", "n_steps": 10, "eta": 0.0}),
    "ddim10_eta1": ("ddim", {"schedule": "adm_ddim", "n_steps": 10, "eta": 1.0}),
}


class Recorded(nn.Module):
    """A stand-in UNetModel returning ``calls_out[k]`` at its k-th call and logging what it was fed."""

    def __init__(self, run: dict) -> None:
        super().__init__()
        self.out, self.k = run["calls_out"], 0
        self.fed_t, self.fed_x = [], []
        self.dummy = nn.Parameter(torch.zeros(1))
        self.in_channels, self.image_size, self.out_channels, self.num_classes = 3, 16, 6, 4

    def forward(self, x, timesteps, y=None):
        self.fed_t.append(timesteps.clone())
        self.fed_x.append(x.clone())
        out = self.out[self.k]
        self.k += 1
        return out


def load_model(clip_denoised: bool = True) -> ADMScore:
    return load_adm(require_fixture(f"{F}.pt"), str(require_fixture(f"{F}_flags.json")), clip_denoised=clip_denoised)


def replay(model: ADMScore, run: dict, name: str):
    solver, options = RUNS[name]
    sampler = make_sampler(solver, **options)
    problem = Problem(model).conditioned(run["y"])
    with torch.no_grad():
        sol = sampler.sample(problem, run["noise_init"].clone(), RecordedNoise(list(run["noise"])))
    return sampler, sol


def uint8(x):
    return ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("name", sorted(RUNS))
def test_network_free_replay(name):
    run = torch.load(require_fixture(f"{F}_{name}.pt"), weights_only=True)
    real = load_model()
    net = Recorded(run)
    model = ADMScore(net, real.sde)
    sampler, sol = replay(model, run, name)
    S = len(run["calls_t"])
    assert sol.stats.nfe == net.k == S == sampler.expected_nfe  # ADM's NFE: one call per respaced step
    fed = torch.stack(net.fed_t)  # [S, B] float64 timesteps k(t)
    # The spacing's times are the trained levels σ_τ, exact for the table (solvers.spacing): ADM's timesteps
    # to float64 round-off (measured 2.8e-14).
    assert float((fed - run["calls_t_model"].double()[:, None]).abs().max()) <= 1e-9
    err_x = max(rel(x, run["calls_x"][k]) for k, x in enumerate(net.fed_x))
    err = rel(sol.x, run["sample"])
    assert err_x <= 1e-5 and err <= 1e-5, (err_x, err)
    assert (uint8(sol.x).int() - run["sample_uint8"].int()).abs().max() <= 1
    print(f"\n{name}: network-free: NFE {sol.stats.nfe} (ADM {S}), states max rel err {err_x:.2e}, "
          f"sample {err:.2e}")


@pytest.mark.parametrize("name", sorted(RUNS))
def test_replay_with_the_network(name):
    run = torch.load(require_fixture(f"{F}_{name}.pt"), weights_only=True)
    sampler, sol = replay(load_model(), run, name)
    assert sol.stats.nfe == len(run["calls_t"])
    err = rel(sol.x, run["sample"])
    assert err <= 1e-4, err
    assert (uint8(sol.x).int() - run["sample_uint8"].int()).abs().max() <= 1
    print(f"\n{name}: with the network: NFE {sol.stats.nfe}, sample max rel err {err:.2e}")


def test_clip_denoised_off_differs_and_is_the_raw_network():
    """clip_denoised=False: the same runs without the clamp (here they differ: x̂₀ leaves [−1, 1])."""
    run = torch.load(require_fixture(f"{F}_ddim10_eta0.pt"), weights_only=True)
    _, clipped = replay(load_model(True), run, "ddim10_eta0")
    _, raw = replay(load_model(False), run, "ddim10_eta0")
    assert rel(raw.x, run["sample"]) > 1e-2 and raw.x.abs().max() > 1 >= clipped.x.abs().max()
    # Without the clamp, ε̂ is the network's first channels: the model's score is −out[:, :3]/σ.
    model = load_model(False).conditioned(run["y"])
    x, k = run["calls_x"][3], run["calls_t_model"][3]
    t = torch.full((4,), (int(k) + 1) / 1000, dtype=torch.float64)
    with torch.no_grad():
        score = model(x, t)
    sigma = model.sde.marginal(t)[1].float()[:, None, None, None]
    assert rel(score, -run["calls_out"][3][:, :3] / sigma) < 1e-5


def test_respacing_matches_adm():
    io = torch.load(require_fixture(f"{F}_io.pt"), weights_only=True)
    for counts, kept in io["respacing_examples"].items():
        assert space_timesteps(1000, counts) == list(kept), counts
    for name, (_, opts) in RUNS.items():
        run = torch.load(require_fixture(f"{F}_{name}.pt"), weights_only=True)
        grid = make_sampler(RUNS[name][0], **opts).controller.grid(Problem(load_model()))
        assert torch.equal(torch.round(grid * 1000 - 1).long().flip(0), run["timestep_map"])
    with pytest.raises(ValueError, match="no integer stride gives exactly 300"):
        space_timesteps(1000, "ddim300")  # strides 3 and 4 give 334 and 250


@pytest.mark.parametrize("variance", ["model", "small", "large"])
def test_adm_ancestral_on_a_mixture(variance):
    """Without a learned variance (an exact mixture): 'small' is DDPM's posterior step, i.e. DDIM η = 1
    on the same grid and noise; every variance samples the mixture's moments at 200 steps."""
    gm = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), torch.tensor([0.3, 0.2]), VPSDE())
    n = 2000
    problem = Problem(gm)
    noise = SeededNoise(range(n))
    x_T = problem.prior_sample(n, noise, dtype=torch.float64)
    sampler = make_sampler("adm_ancestral", variance=variance, n_steps=200)
    x = sampler.sample(problem, x_T, noise).x
    assert ((x.mean(0) - gm.mean()).abs() < 0.05).all() and ((x.std(0) - gm.covariance().diag().sqrt()).abs()
                                                             < 0.05).all()
    if variance == "small":
        again = SeededNoise(range(n))
        assert torch.equal(problem.prior_sample(n, again, dtype=torch.float64), x_T)  # the same stream after x_T
        ddpm = make_sampler("ddim", eta=1.0, n_steps=200).sample(problem, x_T, again).x
        assert torch.allclose(x, ddpm, atol=1e-10)
    with pytest.raises(ValueError, match="variance='learned' needs a model with a learned variance"):
        make_sampler("adm_ancestral", variance="learned", n_steps=4).sample(problem, x_T[:2], noise)
