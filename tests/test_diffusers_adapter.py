"""The diffusers adapter on a randomly initialised UNet2DModel of the DDPM kind (no download)."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")

from models.diffusers_adapter import from_diffusers, load_diffusers  # noqa: E402
from solvers import Problem, SeededNoise, make_sampler  # noqa: E402


def small_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


def test_score_is_minus_eps_over_ddpm_std():
    unet = small_unet()
    model = from_diffusers(unet)
    assert model.sde.beta_min == pytest.approx(0.1) and model.sde.beta_max == pytest.approx(20.0)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.9, 0.5, 0.01], dtype=torch.float64)
    with torch.no_grad():
        score = model(x, t)
        labels = (t * 999).float()
        eps = unet(x, labels).sample
    std = (1 - sched.alphas_cumprod[labels.long()]).sqrt()
    torch.testing.assert_close(score, -eps / std[:, None, None, None], rtol=1e-5, atol=1e-6)


def test_samplers_run_and_count_on_the_adapter(tmp_path):
    model = from_diffusers(small_unet())
    problem = Problem(model)
    noise = SeededNoise(range(2))
    sol = make_sampler("ancestral_sampling", n_steps=30).sample(problem, problem.prior_sample(2, noise), noise)
    assert sol.x.shape == (2, 1, 8, 8) and sol.stats.nfe == 30
    with pytest.raises(ValueError, match="expected one of: linear"):
        from_diffusers(small_unet(), {"beta_schedule": "squaredcos_cap_v2"})
    with pytest.raises(FileNotFoundError, match="no diffusers pipeline folder"):
        load_diffusers(tmp_path / "missing")


def test_round_trip_through_a_saved_pipeline_folder(tmp_path):
    unet = small_unet()
    unet.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    model = load_diffusers(tmp_path)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.7], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), from_diffusers(unet)(x, t))
