"""Print the parity tables of docs/discrete.md: every public diffusers fixture case replayed through the
harness (tests/test_diffusers_replay.py) and k-diffusion's samplers side by side
(tests/test_kdiffusion_side_by_side.py). The tests enforce the bounds; this prints the measured values.

    SCOREBENCH_FIXTURES=../shared/fixtures python scripts/replay_tables.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solvers import Problem  # noqa: E402
from solvers.solve import solve  # noqa: E402
from tests import test_diffusers_replay as dr  # noqa: E402
from tests import test_kdiffusion_side_by_side as kd  # noqa: E402


def diffusers_table() -> None:
    print("| case | scheduler | harness sampler (options) | mapping | timestep rel. err | input rel. err "
          "| trajectory rel. err | real-network output rel. err | final rel. err | NFE (ours / diffusers) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(dr.CASES):
        d = dr.case(name)
        solver, options, mapping, _ = dr.CASES[name]
        model, sampler, x_init, noise = dr.harness(name, d)
        net = dr.RecordedNetwork(d)
        model.net.network = net
        problem = Problem(model)
        method = dr.Watch(sampler.method)
        with torch.no_grad():
            sol = solve(method, sampler.controller, problem, x_init, noise, sampler.denoise)
        taus = torch.stack([t.double() for t in net.timesteps])
        t_err = dr.rel(taus, d["call_timestep"].double()[:, None].expand_as(taus))
        in_err = dr.rel(torch.stack(net.inputs), d["model_input"])
        grid = sampler.controller.grid(problem)
        traj = dr.to_state(name, model, grid[1:], torch.stack(method.states))
        tr_err = dr.rel(traj, d["x"][1:len(method.states) + 1])
        # end to end with the real network
        model, sampler, x_init, noise = dr.harness(name, d)
        outputs, real = [], model.net.network

        def keep(x, timestep, class_labels=None, real=real, outputs=outputs):
            out = real(x, timestep, class_labels)
            outputs.append(out)
            return out

        model.net.network = keep
        with torch.no_grad():
            sol2 = sampler.sample(Problem(model), x_init, noise)
        out_err = dr.rel(torch.stack(outputs), d["model_output"])
        opts = ", ".join(f"{k}={v}" for k, v in options.items())
        print(f"| {name} | {d['scheduler_class']} | {solver} ({opts}) | {mapping} | {t_err:.1e} | {in_err:.1e} | "
              f"{tr_err:.1e} | {out_err:.1e} | {max(dr.rel(sol.x, d['final']), dr.rel(sol2.x, d['final'])):.1e} | "
              f"{sol.stats.nfe} / {d['num_calls']} |")


def kdiffusion_table() -> None:
    print("| k-diffusion sampler | harness sampler (options) | final rel. diff | NFE (ours / k-diffusion) |")
    print("|---|---|---|---|")
    for name in sorted(kd.PAIRS):
        sol, ref, calls, _ = kd.run_both(name)
        solver, options = kd.PAIRS[name]
        opts = ", ".join(f"{k}={v}" for k, v in options.items())
        print(f"| {name} | {solver} ({opts}) | {kd.rel(sol.x, ref):.1e} | {sol.stats.nfe} / {calls} |")
    sol, ref, calls, _ = kd.run_both("sample_euler", quantize=True)
    print(f"| sample_euler, quantize=True | euler, time_mapping quantize | {kd.rel(sol.x, ref):.1e} | "
          f"{sol.stats.nfe} / {calls} |")


if __name__ == "__main__":
    diffusers_table()
    print()
    kdiffusion_table()
