"""diffusers' schedulers run live beside the harness's samplers, for the choices the recorded fixtures do
not cover: the final σ (``final_sigmas_type`` / ``set_alpha_to_one``), the lower-order final step, other
spacings and step counts, and zero terminal SNR.

The network is a smooth deterministic function of (x, τ) (so that a wrong timestep changes the
output), in float64; the scheduler loop is diffusers' own (``set_timesteps``, ``scale_model_input``,
``step``). Final samples within 1e-6 relative, the same number of network calls.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")

from models.diffusers_adapter import model_spec  # noqa: E402
from models.discrete import TimestepNet  # noqa: E402
from models.parameterisation import PredictionModel  # noqa: E402
from solvers import Problem, RecordedNoise, SeededNoise, make_sampler  # noqa: E402

SCALED = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


def network(x, tau, class_labels=None):
    """A smooth function of x and the timestep τ, standing in for a trained network."""
    tau = tau.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return 0.6 * torch.tanh(x) + 0.3 * torch.sin(tau / 150.0) * x.flip(-1) + 0.1 * torch.cos(tau / 90.0)


class Calls:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, x, tau, class_labels=None):
        self.n += 1
        return network(x, tau)


def diffusers_run(cls: str, config: dict, n: int, x_T: torch.Tensor, step_kwargs: dict | None = None,
                  generator_seed: int | None = None):
    sched = getattr(diffusers, cls)(**config)
    sched.set_timesteps(n)
    x = x_T * sched.init_noise_sigma
    calls = 0
    kw = dict(step_kwargs or {})
    if generator_seed is not None:
        kw["generator"] = torch.Generator().manual_seed(generator_seed)
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = network(inp, t.reshape(1).double().expand(x.shape[0]))
        calls += 1
        x = sched.step(out, t, x, **kw).prev_sample
    return x, calls, sched


def harness_run(config: dict, solver: str, n: int, x_T: torch.Tensor, mapping: str = "log_sigma", ve: bool = False,
                noise=None, **options):
    """The harness's sampler from the scheduler's starting state ``x_T`` (in x/α where ``ve``)."""
    spec = model_spec(config, mapping)
    net = Calls()
    model = PredictionModel(TimestepNet(net, spec["path"], mapping, spec["sigmas"], 1000), spec["path"],
                            spec["prediction"], tuple(x_T.shape[1:]))
    sampler = make_sampler(solver, n_steps=n, **options)
    problem = Problem(model)
    alpha0 = float(model.sde.marginal(sampler.controller.grid(problem)[:1])[0])
    with torch.no_grad():
        sol = sampler.sample(problem, x_T * alpha0 if ve else x_T, noise or SeededNoise(range(x_T.shape[0])))
    return sol, net.n


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


X_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("final, lower", [("zero", True), ("zero", False), ("sigma_min", True), ("sigma_min", False)])
@pytest.mark.parametrize("n", [6, 12])
def test_dpmpp_2m_final_sigma_and_lower_order_final(final, lower, n):
    """diffusers lowers the order of its last step when lower_order_final (n < 15) or when that step goes
    to σ = 0; the harness's last step to σ = 0 is the x̂₀ prediction (first order), and its
    ``lower_order_final`` lowers the last grid step on grids below ``lower_order_final_below`` steps
    (10 by default, the official DPM-Solver's; 15 diffusers') — the same choices, tested both ways."""
    cfg = {**SCALED, "prediction_type": "epsilon"}
    ref, calls, _ = diffusers_run("DPMSolverMultistepScheduler",
                                  {**cfg, "algorithm_type": "dpmsolver++", "solver_order": 2,
                                   "timestep_spacing": "trailing", "final_sigmas_type": final,
                                   "lower_order_final": lower}, n, X_T)
    sol, ncalls = harness_run(cfg, "dpm_solver_pp", n, X_T, solver_order=2, schedule="trailing", final_sigma=final,
                              lower_order_final=lower and final == "sigma_min", lower_order_final_below=15,
                              denoise="tweedie" if final == "zero" else "none")
    assert ncalls == calls == sol.stats.nfe
    assert rel(sol.x, ref) < 1e-6


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("n", [5, 10, 20])
def test_ddim_final_alpha(set_alpha_to_one, n):
    """DDIM's last step goes to ᾱ = 1 (set_alpha_to_one: the x̂₀ prediction, denoise 'tweedie') or to ᾱ_0
    (final_sigma 'sigma_min', denoise 'none')."""
    cfg = {**SCALED, "prediction_type": "v_prediction"}
    ref, calls, _ = diffusers_run("DDIMScheduler", {**cfg, "set_alpha_to_one": set_alpha_to_one, "steps_offset": 1,
                                                    "timestep_spacing": "leading", "clip_sample": False},
                                  n, X_T, {"eta": 0.0})
    final = "zero" if set_alpha_to_one else "sigma_min"
    sol, ncalls = harness_run(cfg, "ddim", n, X_T, schedule="leading", steps_offset=1, final_sigma=final,
                                    denoise="tweedie" if set_alpha_to_one else "none")
    assert ncalls == calls == sol.stats.nfe
    assert rel(sol.x, ref) < 1e-6


def test_ddim_trailing_targets_differ_from_the_next_timestep():
    """Under 'trailing' with n not dividing N, diffusers' DDIM steps to ᾱ[t − ⌊N/n⌋], not to the next
    scheduled timestep (its README §8.3), and then calls the network at a level the state is not at. The
    harness steps to the next grid point (a choice it does not copy): the samples differ, measurably."""
    cfg = {**SCALED, "prediction_type": "epsilon"}
    n = 7  # trailing: 999, 856, 713, ...; DDIM's targets: 857, 714, ...
    ref, calls, sched = diffusers_run("DDIMScheduler", {**cfg, "timestep_spacing": "trailing", "clip_sample": False,
                                                        "set_alpha_to_one": True}, n, X_T, {"eta": 0.0})
    assert sched.timesteps[1] == 856 and int(sched.timesteps[0]) - 1000 // n == 857
    sol, ncalls = harness_run(cfg, "ddim", n, X_T, schedule="trailing")
    assert ncalls == calls
    assert 1e-4 < rel(sol.x, ref) < 0.1


@pytest.mark.parametrize("n", [8, 16])
def test_unipc_zero_snr_vpred(n):
    """Zero terminal SNR (ᾱ_{N−1} = 2^-24 as diffusers' UniPC stores it), v-prediction, 'trailing': UniPC
    bh2 with its corrector, as diffusers."""
    cfg = {**SCALED, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    ref, calls, _ = diffusers_run("UniPCMultistepScheduler", {**cfg, "solver_order": 2, "solver_type": "bh2",
                                                              "timestep_spacing": "trailing"}, n, X_T)
    sol, ncalls = harness_run(cfg, "unipc", n, X_T, solver_order=2, variant="bh2", schedule="trailing",
                                    lower_order_final=False)
    assert ncalls == calls == sol.stats.nfe
    assert rel(sol.x, ref) < 1e-6


@pytest.mark.parametrize("spacing, mapping", [("linspace", "sigma"), ("trailing", "sigma"), ("leading", "sigma")])
def test_euler_spacings(spacing, mapping):
    cfg = {**SCALED, "prediction_type": "epsilon"}
    ref, calls, sched = diffusers_run("EulerDiscreteScheduler", {**cfg, "timestep_spacing": spacing}, 9, X_T)
    # diffusers starts from x_T·init_noise_sigma in x/α
    sol, ncalls = harness_run(cfg, "euler", 9, X_T * float(sched.init_noise_sigma), mapping, ve=True,
                              schedule=spacing)
    assert ncalls == calls == sol.stats.nfe
    assert rel(sol.x, ref) < 1e-6


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_sde_dpmpp_2m_solver_types(solver_type):
    """SDE-DPM-Solver++(2M), diffusers' algorithm_type='sde-dpmsolver++', with the same noise draws (its
    seeded generator, float32, one draw per step; the last, to σ = 0, is multiplied by 0)."""
    cfg = {**SCALED, "prediction_type": "epsilon"}
    n = 10
    ref, calls, _ = diffusers_run("DPMSolverMultistepScheduler",
                                  {**cfg, "algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                   "solver_type": solver_type, "timestep_spacing": "trailing"}, n, X_T,
                                  generator_seed=7)
    g = torch.Generator().manual_seed(7)
    draws = [torch.randn(X_T.shape, generator=g, dtype=torch.float32).double() for _ in range(n)]  # as diffusers
    sol, ncalls = harness_run(cfg, "dpm_solver_pp_sde", n, X_T, noise=RecordedNoise(draws), solver_order=2,
                              solver_type=solver_type, schedule="trailing", lower_order_final=False)
    assert ncalls == calls == sol.stats.nfe
    assert rel(sol.x, ref) < 1e-6


@pytest.mark.parametrize("algorithm, solver, final", [("dpmsolver++", "dpm_solver_pp", "zero"),
                                                      ("dpmsolver", "dpm_solver", "sigma_min")])
@pytest.mark.parametrize("n", [10, 20])
def test_dpm_solver_3m_variants(algorithm, solver, final, n):
    """Multistep order 3: the official DPM-Solver's 3M (diffusers, k-diffusion) weights m'' by half the
    λ-Taylor weight; ``variant_3m='reference'`` is that update (1e-6), the default 'taylor' differs by
    1e-3 – 5e-2 of max |x| at 10–20 steps on this network (measured 2026-12-07: 4.7e-3 / 2.1e-3 data,
    4.5e-2 / 1.1e-3 noise prediction)."""
    cfg = {**SCALED, "prediction_type": "epsilon"}
    ref, calls, _ = diffusers_run("DPMSolverMultistepScheduler",
                                  {**cfg, "algorithm_type": algorithm, "solver_order": 3,
                                   "timestep_spacing": "trailing", "lower_order_final": False,
                                   "final_sigmas_type": final}, n, X_T)
    options = dict(solver_order=3, schedule="trailing", lower_order_final=False, final_sigma=final,
                   denoise="tweedie" if final == "zero" else "none")
    if solver == "dpm_solver":
        options["method"] = "multistep"
    sol, ncalls = harness_run(cfg, solver, n, X_T, variant_3m="reference", **options)
    assert ncalls == calls == sol.stats.nfe
    assert rel(sol.x, ref) < 1e-6
    taylor, _ = harness_run(cfg, solver, n, X_T, **options)
    assert 5e-4 < rel(taylor.x, ref) < 0.1
