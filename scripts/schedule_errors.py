"""The error of every deterministic fixed-grid method × step schedule on an exact Gaussian mixture at
5, 10 and 20 NFE: the table of docs/schedules.md.

Generic over :data:`solvers.SAMPLERS`: every registered method whose default controller is a fixed
grid (:class:`solvers.FixedSteps`) and whose result, at its default options, does not depend on the
noise (two noise sources, one x_T: the same samples) is a row group; methods added later appear when
this is rerun. Problem: a 4-component mixture in 1×4×4 (means 0.7·N(0, I) from seed 0, std 0.15) on
the VP SDE (β 0.1–20, T = 1, eps = 1e-3: σ_ve from 152.2 to 0.0105), float64, 256 held-out x_T (seeds
0–255). Every solve ends at eps without a final denoise; the error is the mean over samples of
‖x − x_ref‖₂, x_ref the 2000-point Heun (edm_heun, Karras ρ = 7) solution from the same x_T. At each
NFE budget a method gets the largest n_steps whose declared NFE fits; the table gives the counted NFE.
GITS' schedule (solvers/gits.py; the reference's defaults, 64 warm-up samples, seeds 10^9…) is
computed once per n_steps. Beside each method at its defaults, :data:`VARIANTS` adds row groups for
options of issue 27's methods (DEIS' tAB/ρAB bases, a choice of EDM's design space) and the deterministic
settings of stochastic methods (SA-Solver τ = 0, stochastic DPM-Solver++(2S) η = 0).

A second table (:func:`order_mix_table`, between its own markers) sets DPM-Solver-fast's order mix
against fixed order (``method='singlestep_fixed'``) and multistep DPM-Solver-3 at the same budgets, on
the schedules that its budget controller takes without parameters.

    python scripts/schedule_errors.py                          # prints the markdown table
    python scripts/schedule_errors.py --doc docs/schedules.md  # rewrites the table between its markers
    python scripts/schedule_errors.py --json out.json          # also the numbers
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.gaussian import GaussianMixture  # noqa: E402
from models.sde import VPSDE  # noqa: E402
from solvers import SAMPLERS, FixedSteps, Problem, SeededNoise, is_method, make_sampler  # noqa: E402
from solvers.gits import gits_sigmas  # noqa: E402

BUDGETS = (5, 10, 20)
# name -> FixedSteps options; the GITS entry is filled per n_steps.
SCHEDULES = {
    "uniform": {"schedule": "uniform"},
    "quadratic": {"schedule": "quadratic"},
    "log_snr": {"schedule": "log_snr"},
    "karras ρ=7": {"schedule": "karras"},
    "karras ρ=3": {"schedule": "karras", "rho": 3.0},
    "polyexponential ρ=2": {"schedule": "polyexponential", "rho": 2.0},
    "edm_vp": {"schedule": "edm_vp"},
    "gits": {"schedule": "gits"},
}
BEGIN, END = "<!-- schedule_errors.py: begin -->", "<!-- schedule_errors.py: end -->"
MIX_BEGIN, MIX_END = "<!-- schedule_errors.py order mix: begin -->", "<!-- schedule_errors.py order mix: end -->"
# Row groups beyond each registered method at its defaults: label -> (registry name, options).
VARIANTS = {
    "deis basis=t": ("deis", {"basis": "t"}),
    "deis basis=rho": ("deis", {"basis": "rho"}),
    "edm_ablation sigma_schedule=vp scaling=vp": ("edm_ablation", {"sigma_schedule": "vp", "scaling": "vp"}),
    "edm_ablation ode_solver=euler sigma_schedule=ve": ("edm_ablation",
                                                         {"ode_solver": "euler", "sigma_schedule": "ve"}),
    "sa_solver tau=0": ("sa_solver", {"tau": 0.0}),
    "dpm_solver_pp_2s_sde eta=0": ("dpm_solver_pp_2s_sde", {"eta": 0.0}),
}
# Options that make a method stop at eps as the others do (EDM's design space steps on to σ = 0).
STOP_AT_EPS = {"edm_ablation": {"to_zero": False}}
# The order-mix table: label -> (registry name, options); the schedules DPM-Solver-fast's NFEBudget takes
# without parameters (it has no rho or sigmas).
ORDER_MIX = {
    "dpm_solver_fast": ("dpm_solver_fast", {}),
    "dpm_solver_fast method=singlestep_fixed": ("dpm_solver_fast", {"method": "singlestep_fixed"}),
    "dpm_solver method=multistep": ("dpm_solver", {"method": "multistep"}),
}
MIX_SCHEDULES = ("uniform", "quadratic", "log_snr", "karras ρ=7")
N_SAMPLES = 256
GITS_WARMUP = 64


def mixture() -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = 0.7 * torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.full((4,), 0.15, dtype=torch.float64), VPSDE())


@functools.cache
def start_and_reference() -> tuple[torch.Tensor, torch.Tensor]:
    problem = Problem(mixture())
    noise = SeededNoise(range(N_SAMPLES))
    x_T = problem.prior_sample(N_SAMPLES, noise, dtype=torch.float64)
    ref = make_sampler("edm_heun", n_steps=2000, denoise="none").sample(problem, x_T, noise).x
    return x_T, ref


@functools.cache
def gits_table(n_steps: int) -> tuple[float, ...]:
    sigmas, _ = gits_sigmas(Problem(mixture()), range(10**9, 10**9 + GITS_WARMUP), n_steps, dtype=torch.float64)
    return tuple(sigmas.tolist())


def deterministic(name: str, options: dict | None = None) -> bool:
    """Whether the method on a fixed grid gives the same finite samples from two noise sources."""
    problem = Problem(mixture())
    x_T = problem.prior_sample(4, SeededNoise(range(4)), dtype=torch.float64)
    try:
        opts = {**STOP_AT_EPS.get(name, {}), **(options or {})}
        sampler = make_sampler(name, n_steps=8, denoise="none", **opts)
        a = sampler.sample(Problem(mixture()), x_T, SeededNoise(range(4))).x
        b = sampler.sample(Problem(mixture()), x_T, SeededNoise(range(100, 104))).x
    except ValueError:  # needs options or a path this problem does not have (VE, tables, ...)
        return False
    return torch.equal(a, b) and bool(torch.isfinite(a).all())


def deterministic_methods() -> list[str]:
    """Registered methods on a fixed grid whose samples do not depend on the noise at their defaults."""
    return [name for name, cls in SAMPLERS.items()
            if is_method(cls) and isinstance(cls.controller, FixedSteps) and deterministic(name)]


def row_groups() -> dict[str, tuple[str, dict]]:
    """label -> (name, options): every deterministic method at its defaults, then :data:`VARIANTS`."""
    return {**{name: (name, {}) for name in deterministic_methods()}, **VARIANTS}


def options_for(schedule: str, n_steps: int) -> dict:
    opts = dict(SCHEDULES[schedule])
    if opts["schedule"] == "gits":
        opts["sigmas"] = gits_table(n_steps)
    return opts


def steps_for(name: str, budget: int, options: dict | None = None) -> int | None:
    """The largest n_steps whose declared NFE (without a final denoise) is at most ``budget``."""
    best = None
    for n in range(2, budget + 2):
        opts = {**STOP_AT_EPS.get(name, {}), **(options or {})}
        nfe = make_sampler(name, n_steps=n, denoise="none", **opts).expected_nfe
        if nfe is not None and nfe <= budget:
            best = n
    return best


def _error(sampler) -> tuple[float, int]:
    x_T, ref = start_and_reference()
    problem = Problem(mixture())
    sol = sampler.sample(problem, x_T, SeededNoise(range(N_SAMPLES)))
    return float((sol.x - ref).flatten(1).norm(dim=1).mean()), problem.counter.nfe


def error(name: str, schedule: str, budget: int, options: dict | None = None) -> tuple[float, int] | None:
    """(mean ‖x − x_ref‖₂, counted NFE) of method ``name`` (with ``options``) on ``schedule`` at the NFE
    ``budget``; None where no n_steps fits the budget or the sampler refuses the schedule."""
    options = {**STOP_AT_EPS.get(name, {}), **(options or {})}
    n = steps_for(name, budget, options)
    if n is None:
        return None
    try:
        sampler = make_sampler(name, n_steps=n, denoise="none", **options, **options_for(schedule, n))
    except ValueError:
        return None
    return _error(sampler)


def budget_error(name: str, schedule: str, budget: int, options: dict | None = None) -> tuple[float, int] | None:
    """As :func:`error` for a sampler that takes the budget itself (``nfe_budget``: DPM-Solver-fast)."""
    opts = SCHEDULES[schedule]
    if set(opts) != {"schedule"} or opts["schedule"] == "gits":  # NFEBudget takes no schedule parameters
        return None
    return _error(make_sampler(name, nfe_budget=budget, denoise="none", **opts, **(options or {})))


def _markdown(groups: dict, schedules, cell) -> tuple[list[str], dict]:
    rows, numbers = [], {}
    rows += ["| method | schedule | " + " | ".join(f"{b} NFE: error (NFE)" for b in BUDGETS) + " |",
             "|" + "---|" * (2 + len(BUDGETS))]
    for label, (name, options) in groups.items():
        shown = f"`{name}`" + label[len(name):]
        for schedule in schedules:
            cells = []
            for budget in BUDGETS:
                res = cell(name, schedule, budget, options)
                numbers[f"{label}|{schedule}|{budget}"] = res
                cells.append("—" if res is None else f"{res[0]:.4g} ({res[1]})")
            rows.append(f"| {shown} | {schedule} | " + " | ".join(cells) + " |")
    return rows, numbers


def table() -> tuple[str, dict]:
    """The method × schedule table and its summary line; numbers keyed 'label|schedule|budget'."""
    groups = row_groups()
    for label, (name, options) in VARIANTS.items():
        if not deterministic(name, options):
            raise ValueError(f"VARIANTS[{label!r}] depends on the noise")
    rows, numbers = _markdown(groups, SCHEDULES, error)
    return "\n".join(rows) + "\n\n" + summary(numbers), numbers


def order_mix_table() -> tuple[str, dict]:
    """DPM-Solver-fast's order mix against fixed order and multistep DPM-Solver-3 (:data:`ORDER_MIX`)."""
    def cell(name, schedule, budget, options):
        if name == "dpm_solver_fast":
            return budget_error(name, schedule, budget, options)
        return error(name, schedule, budget, options)

    rows, numbers = _markdown(ORDER_MIX, MIX_SCHEDULES, cell)
    return "\n".join(rows), numbers


def best_schedules(numbers: dict) -> dict[tuple[str, int], str]:
    """(row label, budget) -> the schedule of lowest error (ties: the first in SCHEDULES)."""
    best: dict[tuple[str, int], tuple[float, str]] = {}
    for key, res in numbers.items():
        name, schedule, budget = key.split("|")
        if res is not None and ((name, int(budget)) not in best or res[0] < best[name, int(budget)][0]):
            best[name, int(budget)] = (res[0], schedule)
    return {k: v[1] for k, v in best.items()}


def summary(numbers: dict) -> str:
    """One line per schedule: in how many (method, budget) cells it has the lowest error."""
    best = best_schedules(numbers)
    counts = {s: sum(v == s for v in best.values()) for s in SCHEDULES}
    parts = [f"{s} {n}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n]
    return (f"Lowest error of the {len(best)} (method, NFE budget) cells, by schedule: " + ", ".join(parts) + ".")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--doc", help="replace the table between the markers of this markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    text, numbers = table()
    mix, mix_numbers = order_mix_table()
    print(text, mix, sep="\n\n")
    if args.doc:
        doc = Path(args.doc).read_text()
        for begin, end, block in ((BEGIN, END, text), (MIX_BEGIN, MIX_END, mix)):
            head, rest = doc.split(begin, 1)
            _, tail = rest.split(end, 1)
            doc = f"{head}{begin}\n{block}\n{end}{tail}"
        Path(args.doc).write_text(doc)
    if args.json:
        Path(args.json).write_text(json.dumps({**numbers, **mix_numbers}, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
