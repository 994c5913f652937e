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


def test_score_is_minus_eps_over_the_tables_std():
    """DDPM's linear table as the tabulated path; at a trained level the network gets that timestep
    (every VP mapping) and the score is −ε̂/√(1 − ᾱ_k)."""
    unet = small_unet()
    model = from_diffusers(unet)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    assert model.sde.kind == "tabulated" and model.time_mapping == "log_sigma"
    torch.testing.assert_close(torch.tensor(model.sde.alphas_cumprod, dtype=torch.float32), sched.alphas_cumprod,
                               rtol=0, atol=0)
    k = torch.tensor([900, 500, 10])
    x, t = torch.randn(3, 1, 8, 8), (k + 1).double() / 1000  # TabulatedPath: level k at t = (k + 1)/N
    with torch.no_grad():
        score = model(x, t)
        eps = unet(x, k.float()).sample
    std = (1 - sched.alphas_cumprod[k]).sqrt()
    torch.testing.assert_close(score, -eps / std[:, None, None, None], rtol=1e-5, atol=1e-6)


def test_samplers_run_and_count_on_the_adapter(tmp_path):
    model = from_diffusers(small_unet())
    problem = Problem(model)
    noise = SeededNoise(range(2))
    sol = make_sampler("ddim", eta=1.0, n_steps=30).sample(problem, problem.prior_sample(2, noise), noise)
    assert sol.x.shape == (2, 1, 8, 8) and sol.stats.nfe == 30  # 29 steps, then the x̂₀ at eps
    with pytest.raises(ValueError, match="AncestralSampling cannot run on the 'tabulated' path.*score_sde's ancestral"):
        make_sampler("ancestral_sampling", n_steps=30).sample(problem, problem.prior_sample(2, noise), noise)
    with pytest.raises(ValueError, match="'sigmoid' is not supported; expected one of: linear, scaled_linear"):
        from_diffusers(small_unet(), {"beta_schedule": "sigmoid"})
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


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_prediction_types_reproduce_diffusers_ddim_step(prediction_type):
    """x̂₀ and ε̂ recovered from the score equal diffusers' own conversion: one deterministic DDIM step
    (DDIMScheduler.step, eta = 0) from the same UNet output, for each prediction type."""
    unet = small_unet()
    cfg = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
           "prediction_type": prediction_type}
    sched = diffusers.DDIMScheduler(**cfg, clip_sample=False)
    sched.set_timesteps(10)
    model = from_diffusers(unet, cfg)
    torch.manual_seed(1)
    x = torch.randn(2, 1, 8, 8)
    for k in (int(sched.timesteps[2]), int(sched.timesteps[6])):  # 799 (late), 399
        prev = k - 1000 // 10
        t = torch.full((2,), (k + 1) / 1000, dtype=torch.float64)  # the tabulated path's level k
        with torch.no_grad():
            ref = sched.step(unet(x, k).sample, k, x, eta=0.0).prev_sample
            s = model(x, t).double()
        abar = sched.alphas_cumprod.double()
        x0 = (x.double() + (1 - abar[k]) * s) / abar[k].sqrt()
        eps = -(1 - abar[k]).sqrt() * s
        ours = abar[prev].sqrt() * x0 + (1 - abar[prev]).sqrt() * eps
        torch.testing.assert_close(ours.float(), ref, rtol=1e-5, atol=1e-5)


def test_model_folder_and_refused_schedules(tmp_path):
    unet = small_unet()
    unet.save_pretrained(tmp_path / "model")
    model = load_diffusers(tmp_path / "model", scheduler={"prediction_type": "sample"})
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.7], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), from_diffusers(unet, {"prediction_type": "sample"})(x, t))
    for cfg, match in (({"beta_schedule": "cosine"},
                        "'cosine' is not supported; expected one of: linear, scaled_linear, squaredcos_cap_v2 "
                        "\\(or trained_betas\\)"),
                       ({"trained_betas": [1e-4] * 999}, "'trained_betas': must be 1000 numbers in \\(0, 1\\)"),
                       ({"use_dynamic_shifting": True}, "'use_dynamic_shifting'.*image size.*expected use_dynamic"),
                       ({"invert_sigmas": True}, "'invert_sigmas'.*expected invert_sigmas: False"),
                       ({"prediction_type": "flow"}, "prediction_type'\\: 'flow' is not supported; expected one of: "
                                                     "epsilon, sample, v_prediction, flow_prediction")):
        with pytest.raises(ValueError, match=match):
            from_diffusers(unet, cfg)
    # Learned-variance UNets (2C outputs): the first C channels are the prediction.
    torch.manual_seed(0)
    wide = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=2, layers_per_block=1,
                                 block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    with pytest.raises(ValueError, match="2 output channels for 1 input"):
        from_diffusers(wide)
    learned = from_diffusers(wide, {"variance_type": "learned_range"})
    with torch.no_grad():
        k = (t * 1000).round().long() - 1  # t = 0.3, 0.7 are the levels 299, 699
        eps = wide(x, k.float()).sample[:, :1]
        std = (1 - diffusers.DDPMScheduler().alphas_cumprod[k]).sqrt()
        torch.testing.assert_close(learned(x, t), -eps / std[:, None, None, None].float(), rtol=1e-5, atol=1e-6)
    (tmp_path / "cond").mkdir()
    (tmp_path / "cond" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(ValueError, match="'UNet2DConditionModel' is not supported; expected one of: UNet2DModel"):
        load_diffusers(tmp_path / "cond")
