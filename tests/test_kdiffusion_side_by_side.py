"""k-diffusion's samplers on its ``DiscreteSchedule``, side by side with the harness's on the same model.

k-diffusion (Crowson, PyPI ``k-diffusion``, a test-only dependency installed without its dependencies:
README, .ci/run) is run from the installed package's own files: ``k_diffusion/sampling.py`` and
``external.py`` are loaded by path (its ``__init__`` imports training code and torchvision, which does
not load here; ``utils.py``'s image helpers import ``torchvision.transforms.functional``, which the
samplers never call, so a placeholder module stands in while it loads). Nothing of it is copied.

The model: diffusers fixture network U (scaled_linear ε-prediction, ../shared/fixtures/diffusers) in
float64, as k-diffusion's ``DiscreteEpsDDPMDenoiser`` and as the harness's ``load_diffusers`` with its
default time mapping ``log_sigma`` (k-diffusion's ``sigma_to_t``; ``quantize`` for quantize=True).
Both run on the same Karras σ grid (the harness's, k-diffusion's ``get_sigmas_karras`` checked
against it) from the same x_T, with the same noise draws; final samples within 1e-6 relative, the same NFE.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import missing, require_fixture

pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")

from models.diffusers_adapter import load_diffusers  # noqa: E402
from solvers import Problem, RecordedNoise, make_sampler  # noqa: E402
from solvers.denoiser import ve_sigma  # noqa: E402

pytestmark = pytest.mark.fixtures

_REF = "kdiffusion_reference"


def kdiffusion() -> tuple[types.ModuleType, types.ModuleType]:
    """(sampling, external) of the installed k-diffusion, loaded by path under a package name of our own."""
    if _REF in sys.modules:
        return sys.modules[f"{_REF}.sampling"], sys.modules[f"{_REF}.external"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        missing("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1; see README)")
    root = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType(_REF)
    package.__path__ = [str(root)]
    sys.modules[_REF] = package
    placeholders = {}
    try:
        import torchvision.transforms.functional  # noqa: F401
    except ImportError:  # the stand-in torchvision is a name only; utils.py binds TF at import, never uses it here
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            placeholders[name] = sys.modules.pop(name, None)
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    try:
        for name in ("utils", "sampling", "external"):
            mspec = importlib.util.spec_from_file_location(f"{_REF}.{name}", root / f"{name}.py")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[f"{_REF}.{name}"] = module
            mspec.loader.exec_module(module)
            setattr(package, name, module)
    finally:
        for name, old in placeholders.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return sys.modules[f"{_REF}.sampling"], sys.modules[f"{_REF}.external"]


class Counted(torch.nn.Module):
    """The UNet as k-diffusion's inner model, ``(x, t) -> ε̂``, counting its calls."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet, self.calls = unet, 0

    def forward(self, x, t):
        self.calls += 1
        return self.unet(x, t).sample


# k-diffusion sampler -> (harness sampler, its options)
PAIRS = {
    "sample_euler": ("euler", {}),
    "sample_heun": ("edm_heun", {}),
    "sample_dpmpp_2m": ("dpm_solver_pp", dict(solver_order=2, lower_order_final=False)),
    "sample_euler_ancestral": ("ddim", dict(eta=1.0)),
    "sample_lms": ("lms", dict(solver_order=4, to_zero=True)),  # k-diffusion's last step to σ = 0
    "sample_dpmpp_2m_sde": ("dpm_solver_pp_sde", dict(solver_order=2, lower_order_final=False,
                                                      solver_type="midpoint")),
    "sample_dpmpp_2m_sde_heun": ("dpm_solver_pp_sde", dict(solver_order=2, lower_order_final=False)),
    "sample_dpmpp_3m_sde": ("dpm_solver_pp_sde", dict(solver_order=3, lower_order_final=False)),
    "sample_dpmpp_2s_ancestral": ("dpm_solver_pp_2s_ancestral", {}),
}
KDIFFUSION_OPTIONS = {"sample_lms": {"order": 4}, "sample_dpmpp_2m_sde_heun": {"solver_type": "heun"}}
N_STEPS = 8


def run_both(name: str, quantize: bool = False, **override):
    sampling, external = kdiffusion()
    folder = require_fixture("diffusers/U")
    model = load_diffusers(folder, time_mapping="quantize" if quantize else "log_sigma", dtype=torch.float64)
    solver, options = PAIRS[name]
    sampler = make_sampler(solver, n_steps=N_STEPS, schedule="karras", **{**options, **override})
    problem = Problem(model)
    grid = sampler.controller.grid(problem)
    sigmas = torch.cat([ve_sigma(model.sde, grid), torch.zeros(1, dtype=torch.float64)])
    g = torch.Generator().manual_seed(5)
    x_ve = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64) * sigmas[0]
    draws = torch.randn(N_STEPS, 2, 3, 16, 16, generator=g, dtype=torch.float64)

    inner = Counted(model.net.network.unet)
    abar = torch.tensor(model.sde.alphas_cumprod, dtype=torch.float32)
    denoiser = external.DiscreteEpsDDPMDenoiser(inner, abar, quantize=quantize)
    fn = getattr(sampling, "sample_dpmpp_2m_sde" if name == "sample_dpmpp_2m_sde_heun" else name)
    kw = dict(KDIFFUSION_OPTIONS.get(name, {}))
    if "noise_sampler" in inspect.signature(fn).parameters:  # the same standard normal draws, in order
        it = iter(draws)
        kw["noise_sampler"] = lambda sigma, sigma_next: next(it)
    with torch.no_grad():
        ref = fn(denoiser, x_ve.clone(), sigmas, disable=True, **kw)
        alpha0 = model.sde.marginal(grid[:1])[0]
        sol = sampler.sample(problem, x_ve * alpha0, RecordedNoise(list(draws)))
    return sol, ref, inner.calls, sigmas


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_samples_and_nfe_as_kdiffusion(name):
    sol, ref, calls, _ = run_both(name)
    assert sol.stats.nfe == calls
    assert rel(sol.x, ref) < 1e-6


def test_lms_differs_only_in_its_last_step():
    """k-diffusion's ``sample_lms`` takes its last step to σ = 0 with the order-4 Lagrange integral (the
    harness's ``to_zero=True``, matched above); the harness's default LMS ends, as every σ-space sampler
    here, with the Euler step to σ = 0 (the x̂₀ prediction, denoise='tweedie'). Up to that step the two
    are the same method; the last step differs by a few 1e-6 of max |x| on this model (measured 1.3e-6,
    2026-12-07)."""
    sol, ref, calls, sigmas = run_both("sample_lms", to_zero=False)
    assert sol.stats.nfe == calls
    assert 1e-9 < rel(sol.x, ref) < 1e-5
    # the same steps before the last: rerun the reference one step short
    sampling, external = kdiffusion()
    model = load_diffusers(require_fixture("diffusers/U"), dtype=torch.float64)
    inner = Counted(model.net.network.unet)
    denoiser = external.DiscreteEpsDDPMDenoiser(inner, torch.tensor(model.sde.alphas_cumprod, dtype=torch.float32),
                                                quantize=False)
    g = torch.Generator().manual_seed(5)
    x_ve = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64) * sigmas[0]
    seen = []
    with torch.no_grad():
        sampling.sample_lms(denoiser, x_ve, sigmas, disable=True, callback=lambda info: seen.append(info["denoised"]))
        # the harness's final sample is the x̂₀ at the last grid point: the reference's last 'denoised'
    assert rel(sol.x, seen[-1]) < 1e-9


def test_quantized_mapping_matches_kdiffusion_quantize():
    """quantize=True: the network gets the nearest trained timestep in log σ (the harness's 'quantize')."""
    sol, ref, calls, _ = run_both("sample_euler", quantize=True)
    assert sol.stats.nfe == calls and rel(sol.x, ref) < 1e-6
    off, _, _, _ = run_both("sample_euler", quantize=False)
    assert rel(off.x, ref) > 1e-4  # the mapping is visible: the unquantized run differs


def test_karras_grid_is_kdiffusions():
    sampling, _ = kdiffusion()
    _, _, _, sigmas = run_both("sample_euler")
    ref = sampling.get_sigmas_karras(N_STEPS, float(sigmas[-2]), float(sigmas[0])).double()
    assert rel(sigmas, ref) < 1e-6


class TreeNoise:
    """The harness's noise source reading k-diffusion's per-sample Brownian tree (in σ): ``increment(t, t_next)``
    is the tree's normalised increment between σ_ve(t) and σ_ve(t_next), as k-diffusion's noise sampler gives it."""

    def __init__(self, tree, sde) -> None:
        self.tree, self.sde, self.asked = tree, sde, []

    def increment(self, t, t_next, shape, dtype=torch.float64, device=None, index=None):
        del index
        sigma, sigma_next = ve_sigma(self.sde, t)[0], ve_sigma(self.sde, t_next)[0]
        self.asked.append((float(sigma), float(sigma_next)))
        return self.tree(sigma, sigma_next).to(dtype=dtype, device=device)


@pytest.mark.parametrize("eta, s_noise, r", [(1.0, 1.0, 0.5), (0.5, 1.003, 0.5), (1.0, 1.0, 0.3)])
def test_dpmpp_sde_same_brownian_path_as_kdiffusion(eta, s_noise, r):
    """k-diffusion's ``sample_dpmpp_sde`` with its ``BrownianTreeNoiseSampler`` seeded per sample (one tree per
    sample) beside the harness's ``dpm_solver_pp_2s_sde`` reading a tree of the same seeds through its noise
    source: k-diffusion asks the tree for the increments over [σ_s, σ] and [σ_next, σ] (overlapping), the
    harness for [σ_s, σ] and [σ_next, σ_s] and adds them; the same path, so samples within 1e-6 relative
    (measured 7e-12 to 6e-11 on 2026-12-08) and the same NFE."""
    sampling, external = kdiffusion()
    model = load_diffusers(require_fixture("diffusers/U"), dtype=torch.float64)
    sampler = make_sampler("dpm_solver_pp_2s_sde", n_steps=N_STEPS, schedule="karras", eta=eta, s_noise=s_noise, r=r)
    problem = Problem(model)
    grid = sampler.controller.grid(problem)
    sigmas = torch.cat([ve_sigma(model.sde, grid), torch.zeros(1, dtype=torch.float64)])
    g = torch.Generator().manual_seed(5)
    x_ve = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64) * sigmas[0]
    seeds = [11, 12]

    def tree():
        return sampling.BrownianTreeNoiseSampler(x_ve, sigmas[-2], sigmas[0], seed=seeds)

    inner = Counted(model.net.network.unet)
    denoiser = external.DiscreteEpsDDPMDenoiser(inner, torch.tensor(model.sde.alphas_cumprod, dtype=torch.float32),
                                                quantize=False)
    noise = TreeNoise(tree(), model.sde)
    with torch.no_grad():
        ref = sampling.sample_dpmpp_sde(denoiser, x_ve.clone(), sigmas, disable=True, eta=eta, s_noise=s_noise, r=r,
                                        noise_sampler=tree())
        alpha0 = model.sde.marginal(grid[:1])[0]
        sol = sampler.sample(problem, x_ve * alpha0, noise)
    d = rel(sol.x, ref)
    print(f"sample_dpmpp_sde eta={eta} s_noise={s_noise} r={r}: max rel diff {d:.1e}, "
          f"NFE {sol.stats.nfe}/{inner.calls}")
    assert sol.stats.nfe == inner.calls == 2 * (N_STEPS - 1) + 1
    assert len(noise.asked) == 2 * (N_STEPS - 1)
    assert d < 1e-6
    # The check can fail: the same draws taken as independent (z₂ = the second draw) differ.
    draws = torch.randn(2 * N_STEPS, 2, 3, 16, 16, generator=g, dtype=torch.float64)
    it = iter(draws)
    with torch.no_grad():
        indep = sampling.sample_dpmpp_sde(denoiser, x_ve.clone(), sigmas, disable=True, eta=eta, s_noise=s_noise, r=r,
                                          noise_sampler=lambda s, s_next: next(it))
        own = sampler.sample(problem, x_ve * alpha0, RecordedNoise(list(draws)))
    assert rel(own.x, indep) > 1e-3
