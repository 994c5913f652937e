"""diffusers' schedulers replayed through the harness's own samplers, time mappings and spacings.

../shared/fixtures/diffusers/ (README there: the format's specification) records full runs of
diffusers' schedulers on two tiny UNet2DModels: every network call's input, timestep and output, the
trajectory and every noise draw. Each case is replayed here twice:

* **recorded outputs**: the harness's sampler runs with a network that returns the recorded output
  of its i-th call; what it would have fed the network (timestep, input) and its trajectory are
  compared with the recording;
* **end to end**: the model folder loaded by the harness (``load_diffusers``), the real network,
  from the recorded x_T; every network output and the final sample are compared.

Timesteps within 1e-6 relative, states and outputs within 1e-5 of max |x| in float32 (the README's
§7: case 01 against its float64 twin measures float32 rounding alone at 3.5e-7), and the same NFE,
counted by the harness's counter. :data:`CASES` says which sampler, spacing and mapping reproduce
each scheduler; docs/discrete.md carries the table this test prints.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import require_fixture

diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")

from models.diffusers_adapter import load_diffusers  # noqa: E402
from solvers import Problem, RecordedNoise, SeededNoise, make_sampler  # noqa: E402
from solvers.solve import solve  # noqa: E402

pytestmark = pytest.mark.fixtures

# case -> (harness sampler, its options, time mapping, state the scheduler keeps: 'x' (x itself) or 've' (x/α))
CASES = {
    "case01_ddim_scaled_linear": ("ddim", dict(eta=0.0, schedule="leading", steps_offset=1, final_sigma="sigma_min",
                                               denoise="none"), "log_sigma", "x"),
    "case01f64_ddim_scaled_linear_float64": ("ddim", dict(eta=0.0, schedule="leading", steps_offset=1,
                                                          final_sigma="sigma_min", denoise="none"), "log_sigma", "x"),
    "case02_euler_scaled_linear": ("euler", dict(schedule="leading", steps_offset=1), "sigma", "ve"),
    "case03_dpmpp2m_scaled_linear": ("dpm_solver_pp", dict(solver_order=2, schedule="leading_n1", steps_offset=1,
                                                           lower_order_final=False), "log_sigma", "x"),
    "case04_unipc_cosine_vpred_trailing": ("unipc", dict(solver_order=2, variant="bh2", schedule="trailing",
                                                         lower_order_final=False), "log_sigma", "x"),
    "case05_euler_ancestral_linear": ("ddim", dict(eta=1.0, schedule="linspace"), "sigma", "ve"),
    "case06_flow_euler_shift3": ("pf_euler", dict(schedule="uniform", shift=3.0), "flow", "x"),
}


def case(name: str) -> dict:
    return torch.load(require_fixture(f"diffusers/{name}.pt"), weights_only=True)


class RecordedNetwork:
    """Returns the recorded output of call i and keeps what it was given."""

    def __init__(self, d: dict) -> None:
        self.d, self.inputs, self.timesteps = d, [], []

    def __call__(self, x, timestep, class_labels=None):
        self.inputs.append(x.clone())
        self.timesteps.append(timestep.clone())
        return self.d["model_output"][len(self.inputs) - 1].to(x.dtype)


def harness(name: str, d: dict):
    """(model, sampler, x_init in the harness's x, noise) for a case."""
    solver, options, mapping, _ = CASES[name]
    dtype = getattr(torch, d["dtype"])
    model = load_diffusers(require_fixture(f"diffusers/{d['model']}"), scheduler=d["scheduler_config"],
                           time_mapping=mapping, dtype=dtype)
    sampler = make_sampler(solver, n_steps=d["num_inference_steps"], **options)
    problem = Problem(model)
    t0 = sampler.controller.grid(problem)[:1]
    alpha0, sigma0 = model.sde.marginal(t0)
    scale = float(alpha0) if CASES[name][3] == "ve" else 1.0  # the scheduler's x_init is x/α at its first level
    x_init = d["x_init"].to(dtype) * scale
    noise = RecordedNoise(list(d["noise"])) if d["noise"] is not None else SeededNoise(range(4))
    return model, sampler, x_init, noise


def to_state(name: str, model, t, x):
    """The scheduler's state at the harness's times t [k] of x [k, B, ...]: x, or x/α."""
    if CASES[name][3] == "x":
        return x
    alpha = model.sde.marginal(t)[0]
    return x / alpha.reshape(-1, 1, 1, 1, 1).to(x.dtype)


def rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


class Watch:
    """A method that keeps the state after each of its steps."""

    def __init__(self, method) -> None:
        self.method, self.states = method, []

    def __getattr__(self, name):
        return getattr(self.method, name)

    def step(self, *args, **kwargs):
        out = self.method.step(*args, **kwargs)
        self.states.append(out.x)
        return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_replay_recorded_outputs(name):
    """Same network inputs (timesteps, inputs), same trajectory, same NFE as diffusers' scheduler."""
    d = case(name)
    model, sampler, x_init, noise = harness(name, d)
    net = RecordedNetwork(d)
    model.net.network = net
    problem = Problem(model)
    method = Watch(sampler.method)
    with torch.no_grad():
        sol = solve(method, sampler.controller, problem, x_init, noise, sampler.denoise)
    N = d["num_calls"]
    assert sol.stats.nfe == problem.counter.nfe == len(net.inputs) == N
    taus = torch.stack([t.double() for t in net.timesteps])  # [N, B]
    ref_t = d["call_timestep"].double()[:, None].expand_as(taus)
    assert rel(taus, ref_t) < 1e-6, (taus[:, 0], ref_t[:, 0])
    assert rel(torch.stack(net.inputs), d["model_input"]) < 1e-5
    grid = sampler.controller.grid(problem)
    steps = len(method.states)  # the scheduler's x[i + 1] after call i, at the grid's points
    assert steps == len(grid) - 1
    assert rel(to_state(name, model, grid[1:], torch.stack(method.states)), d["x"][1:steps + 1]) < 1e-5
    assert rel(sol.x, d["final"]) < 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
def test_replay_end_to_end_with_the_real_network(name):
    """The folder loaded by the harness and sampled by its own sampler from the recorded x_T: every network
    output and the final sample as diffusers computed them."""
    d = case(name)
    model, sampler, x_init, noise = harness(name, d)
    outputs = []
    real = model.net.network

    def keep(x, timestep, class_labels=None):
        out = real(x, timestep, class_labels)
        outputs.append(out)
        return out

    model.net.network = keep
    with torch.no_grad():
        sol = sampler.sample(Problem(model), x_init, noise)
    assert sol.stats.nfe == d["num_calls"]
    assert rel(torch.stack(outputs), d["model_output"]) < 1e-5
    assert rel(sol.x, d["final"]) < 1e-5
