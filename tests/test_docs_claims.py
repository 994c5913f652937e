"""docs/api.md's sampler tables and schedule list against the code: counted NFE per step, declared
orders (which tests/test_convergence.py and tests/test_fast_samplers.py fit), and the schedules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE
from solvers import SAMPLERS, Problem, SeededNoise, make_sampler, sampler_options
from solvers.grids import SCHEDULES

API = Path(__file__).resolve().parents[1] / "docs" / "api.md"
NUMBERS = re.compile(r"^\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)*$")  # "1", "1 / 2"


def _table_rows() -> list[dict[str, str]]:
    """Every row of every markdown table in docs/api.md, as {header: cell}."""
    rows, header = [], None
    for line in API.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            rows.append(dict(zip(header, cells)))
    return rows


def _claims(column: str) -> list[tuple[str, float]]:
    """(sampler, number) for each row whose ``column`` holds plain numbers, one per name in ``name``."""
    out = []
    for row in _table_rows():
        if "name" not in row or not NUMBERS.match(row.get(column, "")):
            continue
        names = re.findall(r"`([a-z_0-9]+)`", row["name"])
        values = [float(v) for v in row[column].split("/")]
        values = values * len(names) if len(values) == 1 else values
        assert len(values) == len(names), row
        out += list(zip(names, values))
    return out


NFE_CLAIMS = _claims("NFE per step") + _claims("NFE")
ORDER_CLAIMS = _claims("order")


def test_the_tables_make_claims_about_registered_samplers():
    assert len(NFE_CLAIMS) >= 10 and len(ORDER_CLAIMS) >= 7  # the parser still finds the tables
    assert {name for name, _ in NFE_CLAIMS + ORDER_CLAIMS} <= set(SAMPLERS)


def test_every_registered_sampler_has_a_row():
    """Each name in SAMPLERS is in the name column of one of docs/api.md's sampler tables."""
    documented = {n for row in _table_rows() if "name" in row for n in re.findall(r"`([a-z_0-9]+)`", row["name"])}
    assert set(SAMPLERS) <= documented, sorted(set(SAMPLERS) - documented)


@pytest.mark.parametrize("name, per_step", NFE_CLAIMS, ids=[n for n, _ in NFE_CLAIMS])
def test_nfe_per_step_is_counted(name, per_step):
    """The sampler at its defaults, 20 steps, no final denoise: counted calls / steps."""
    sde = VESDE(sigma_max=5.0) if name == "annealed_langevin" else VPSDE()
    problem = Problem(GaussianMixture(torch.zeros(2, 3), torch.tensor([0.3, 0.5]), sde))
    assert "n_steps" in sampler_options(name), name
    noise = SeededNoise(range(2))
    make_sampler(name, n_steps=21, denoise="none").sample(problem, problem.prior_sample(2, noise), noise)
    assert problem.counter.nfe / 20 == per_step


@pytest.mark.parametrize("name, order", ORDER_CLAIMS, ids=[n for n, _ in ORDER_CLAIMS])
def test_documented_order_is_the_declared_one(name, order):
    opts = {"n_steps": 21} if "n_steps" in sampler_options(name) else {}
    assert make_sampler(name, **opts).order == order


def test_every_schedule_is_documented():
    text = API.read_text()
    line = next(ln for ln in text.splitlines() if "`schedule`" in ln and "Common options" in ln)
    assert set(re.findall(r"`([a-z_0-9]+)`", line.split("`schedule`", 1)[1].split(")")[0])) == set(SCHEDULES)
