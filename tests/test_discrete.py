"""Discrete-time models: tables, time mappings and timestep spacings against diffusers' own schedulers
(run side by side; diffusers is the optional extra the CI installs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.discrete import (
    TIME_MAPPINGS,
    TimestepNet,
    alphas_cumprod,
    diffusers_betas,
    rescale_zero_terminal_snr,
    train_sigmas,
)
from models.paths import FlowPath, TabulatedPath
from solvers import FixedSteps, Problem, make_sampler
from solvers.spacing import spacing_sigmas, timesteps

diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")

SCALED = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


# ---- tables ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [dict(beta_schedule="linear"), SCALED, dict(beta_schedule="squaredcos_cap_v2"),
                                 dict(trained_betas=np.linspace(1e-4, 0.03, 1000).tolist())])
def test_tables_are_diffusers_bit_for_bit(cfg):
    ref = diffusers.DDIMScheduler(**cfg).alphas_cumprod
    ours = alphas_cumprod(diffusers_betas(**{k: v for k, v in cfg.items()}))
    assert torch.equal(ours, ref)


def test_zero_terminal_snr_table():
    """Lin et al. 2024: ᾱ_{N−1} = 0 exactly (DDIM keeps it), ᾱ_0 unchanged; Euler stores 2^-24 in its place."""
    betas = rescale_zero_terminal_snr(diffusers_betas(**SCALED))
    ref = diffusers.DDIMScheduler(**SCALED, rescale_betas_zero_snr=True).alphas_cumprod
    assert torch.equal(alphas_cumprod(betas), ref) and float(ref[-1]) == 0.0
    assert float(alphas_cumprod(betas)[0]) == pytest.approx(float(alphas_cumprod(diffusers_betas(**SCALED))[0]))
    from models.diffusers_adapter import model_spec

    spec = model_spec({**SCALED, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"})
    euler = diffusers.EulerDiscreteScheduler(**SCALED, rescale_betas_zero_snr=True)
    assert torch.equal(spec["alphas_cumprod"], euler.alphas_cumprod) and spec["prediction"] == "v"


# ---- spacings --------------------------------------------------------------------------------------
# (scheduler class, diffusers' timestep_spacing, the harness's spacing)
FAMILIES = [
    ("DDIMScheduler", "leading", "leading"), ("DDIMScheduler", "trailing", "trailing"),
    ("DDIMScheduler", "linspace", "linspace_round"),
    ("EulerDiscreteScheduler", "leading", "leading"), ("EulerDiscreteScheduler", "trailing", "trailing"),
    ("EulerDiscreteScheduler", "linspace", "linspace"),
    ("DPMSolverMultistepScheduler", "leading", "leading_n1"), ("DPMSolverMultistepScheduler", "trailing", "trailing"),
    ("DPMSolverMultistepScheduler", "linspace", "linspace_n1"),
    ("UniPCMultistepScheduler", "leading", "leading_n1"), ("UniPCMultistepScheduler", "linspace", "linspace_n1"),
]


@pytest.mark.parametrize("cls, spacing, ours", FAMILIES)
@pytest.mark.parametrize("n", [4, 7, 10, 25, 50])
def test_spacings_are_diffusers_set_timesteps(cls, spacing, ours, n):
    offset = 1 if spacing == "leading" else 0
    sched = getattr(diffusers, cls)(**SCALED, timestep_spacing=spacing, steps_offset=offset)
    sched.set_timesteps(n)
    ref = sched.timesteps.double()
    got = timesteps(ours, n, 1000, offset)
    assert torch.allclose(got, ref, rtol=1e-7, atol=0), (got, ref)
    if hasattr(sched, "sigmas") and cls != "DDIMScheduler":
        sig = spacing_sigmas(ours, n, train_sigmas(sched.alphas_cumprod), offset)
        assert torch.allclose(sig, sched.sigmas[:-1].double(), rtol=1e-6, atol=0)


def test_spacing_bad_input():
    with pytest.raises(ValueError, match="outside 0..999 or not decreasing"):
        timesteps("leading", 10, 1000, offset=200)
    for kw, match in ((dict(schedule="karras", steps_offset=1), "apply to diffusers' spacings"),
                      (dict(schedule="trailing", steps_offset=1), "steps_offset applies to schedules 'leading'"),
                      (dict(schedule="leading", final_sigma="one"),
                       "invalid final_sigma='one'; expected one of: zero, sigma_min"),
                      (dict(shift=0.0), "shift")):
        with pytest.raises(ValueError, match=match):
            FixedSteps(n_steps=10, **kw)
    with pytest.raises(ValueError, match="final_sigma 'zero' ends with the step to σ = 0.*denoise 'tweedie'"):
        make_sampler("ddim", n_steps=10, schedule="leading", denoise="none")


def test_spacing_and_shift_need_their_paths():
    from models.gaussian import GaussianMixture
    from models.sde import VESDE, VPSDE

    vp = Problem(GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), torch.tensor(0.5), VPSDE()))
    with pytest.raises(ValueError, match="trained timesteps"):
        make_sampler("ddim", n_steps=5, schedule="leading").sample(vp, torch.zeros(1, 2), None)
    ve = Problem(GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), torch.tensor(0.5), VESDE()))
    with pytest.raises(ValueError, match=r"time runs in \[0, 1\]"):
        make_sampler("ddim", n_steps=5, shift=3.0).sample(ve, torch.zeros(1, 2), None)


# ---- time mappings ---------------------------------------------------------------------------------
def _table():
    abar = alphas_cumprod(diffusers_betas(**SCALED))
    return TabulatedPath(tuple(abar.double().tolist())), train_sigmas(abar)


@pytest.mark.parametrize("mapping", [m for m in TIME_MAPPINGS if m != "flow"])
def test_every_vp_mapping_gives_the_level_on_trained_levels(mapping):
    path, sigmas = _table()
    k = torch.tensor([0, 1, 17, 500, 998, 999])
    net = TimestepNet(lambda x, tau: tau, path, mapping, sigmas)
    tau = net.timestep((k + 1).double() / 1000)  # level k at t = (k + 1)/N
    assert torch.allclose(tau, k.double(), rtol=0, atol=1e-6), tau


def test_mappings_between_levels():
    """'sigma' inverts diffusers' numpy.interp(τ, arange(N), σ); 'log_sigma' is linear in log σ
    (k-diffusion's side by side: tests/test_kdiffusion_side_by_side.py); 'nearest' and 'quantize'
    round in σ and log σ; 'log_alpha' is DPM-Solver's linear interpolation of log α in t."""
    _, sigmas = _table()
    tau = torch.tensor([0.25, 3.4, 100.3, 500.7, 998.9], dtype=torch.float64)
    s_np = torch.from_numpy(np.interp(tau.numpy(), np.arange(1000), sigmas.numpy()))
    assert torch.allclose(TIME_MAPPINGS["sigma"](s_np, sigmas), tau, rtol=1e-12)
    ls = torch.from_numpy(np.interp(tau.numpy(), np.arange(1000), sigmas.log().numpy())).exp()
    assert torch.allclose(TIME_MAPPINGS["log_sigma"](ls, sigmas), tau, rtol=1e-12)
    assert torch.equal(TIME_MAPPINGS["nearest"](s_np, sigmas), tau.round())
    assert torch.equal(TIME_MAPPINGS["quantize"](ls, sigmas), tau.round())
    # DPM-Solver: log α(t) = interp(t, t_array, log_alpha_array), t_array = linspace(0, 1, N + 1)[1:]; τ = (t − 1/N)·N
    t = (tau + 1) / 1000
    log_alpha = 0.5 * torch.log(1 / (1 + sigmas**2))
    la = torch.from_numpy(np.interp(t.numpy(), np.linspace(0, 1, 1001)[1:], log_alpha.numpy()))
    s_la = torch.sqrt(torch.exp(-2 * la) - 1)
    assert torch.allclose(TIME_MAPPINGS["log_alpha"](s_la, sigmas), tau, rtol=1e-9)
    # between levels, the mappings disagree: the choice is visible
    assert float((TIME_MAPPINGS["sigma"](ls, sigmas) - tau).abs().max()) > 0.01


def test_flow_mapping_is_sigma_times_n():
    path = FlowPath(eps=1e-3)
    net = TimestepNet(lambda x, tau: tau, path, "flow", num_train_timesteps=1000)
    t = torch.tensor([1.0, 0.5, 0.001], dtype=torch.float64)
    assert torch.allclose(net.timestep(t), 1000 * t)


def test_the_mapping_decides_the_timesteps_of_a_fractional_grid():
    """diffusers' Euler ancestral on 'linspace' with 7 steps (fractional τ): its σ's are linear in σ
    between levels, so only the 'sigma' mapping feeds the network diffusers' τ at those σ's; 'log_sigma'
    (the default, k-diffusion's) feeds another: on this 1000-level table they differ by about 1e-3 of a
    timestep (measured 1.05e-3 at τ = 832.5, 2026-12-07), ~1e3 times the float32 parity tolerance."""
    sched = diffusers.EulerAncestralDiscreteScheduler(beta_schedule="linear", timestep_spacing="linspace")
    sched.set_timesteps(7)
    ref = sched.timesteps.double()
    assert float((ref - ref.round()).abs().max()) > 0.1  # fractional
    sigmas = train_sigmas(sched.alphas_cumprod)
    grid = spacing_sigmas("linspace", 7, sigmas)
    assert torch.allclose(grid, sched.sigmas[:-1].double(), rtol=1e-6)
    exact, other = TIME_MAPPINGS["sigma"](grid, sigmas), TIME_MAPPINGS["log_sigma"](grid, sigmas)
    assert float(((exact - ref) / ref.clamp(min=1)).abs().max()) < 1e-6
    assert 5e-4 < float((other - ref).abs().max()) < 5e-3  # a different network input at the same σ


@pytest.mark.parametrize("schedule, prediction", [("linear", "epsilon"), ("scaled_linear", "v_prediction"),
                                                  ("squaredcos_cap_v2", "sample"), ("zero_snr", "v_prediction"),
                                                  ("trained", "epsilon")])
def test_every_schedule_loads_from_a_saved_folder(tmp_path, schedule, prediction):
    """A pipeline folder saved by diffusers, loaded offline: its table and prediction, and the network at a
    trained level called with that level's timestep."""
    from models.diffusers_adapter import load_diffusers

    kw = {"prediction_type": prediction}
    if schedule == "zero_snr":
        kw.update(SCALED, rescale_betas_zero_snr=True)
    elif schedule == "trained":
        kw["trained_betas"] = np.linspace(2e-4, 0.03, 1000).tolist()
    else:
        kw["beta_schedule"] = schedule
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    sched = diffusers.DDIMScheduler(**kw)
    diffusers.DDIMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    model = load_diffusers(tmp_path / "pipe")
    abar = sched.alphas_cumprod.clone()
    if schedule == "zero_snr":
        abar[-1] = 2.0**-24
    assert torch.equal(torch.tensor(model.sde.alphas_cumprod, dtype=torch.float32), abar)
    assert model.prediction == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction]
    seen = []
    model.net.network = lambda x, tau, class_labels=None: seen.append(tau) or x
    with torch.no_grad():
        model.data_and_noise(torch.randn(2, 1, 8, 8), torch.tensor([0.5, 0.1], dtype=torch.float64))
    assert torch.allclose(seen[0], torch.tensor([499.0, 99.0]), atol=1e-4)  # t = (k + 1)/N is level k
