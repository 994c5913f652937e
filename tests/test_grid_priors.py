"""Truncated-T sweeps in the harness: fitted priors and step rules from a grid, end to end."""

from __future__ import annotations

import json

import pytest

from bench.grid import GridError, expand, load_grid
from bench.run import main

GRID = """
name: trunc
model:
  kind: mixture
  sde: {kind: vp}
  means: [[0.4, 0.8], [1.0, 0.6]]
  std: 0.1
  metrics: [sw2_exact]
eval: {num_samples: 1000, batch_size: 1000, seeds: '0-999', device: cpu, threads: 1}
sweeps:
  - {solver: euler_maruyama, T: 0.15, n_steps: 200, step_rule: fixed_dt,
     prior: [gaussian, {kind: moment, covariance: full}, {kind: flow, steps: 150, num_data: 2000}, oracle]}
"""


def test_fitted_priors_and_step_rule_from_a_grid(tmp_path):
    path = tmp_path / "trunc.yaml"
    path.write_text(GRID)
    runs = expand(load_grid(path))
    assert [r.prior["kind"] for r in runs] == ["gaussian", "moment", "flow", "oracle"]
    assert {r.options["n_steps"] for r in runs} == {30}  # fixed Δt: 200 steps at T = 1 → 30 at T = 0.15
    assert main(["--grid", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--no-report"]) == 0
    records = {r["prior"]["kind"]: r for r in
               (json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*.json"))}
    assert all(r["status"] == "ok" and r["nfe"] == 30 for r in records.values())
    assert records["flow"]["prior_network_calls"] == 1 and records["gaussian"]["prior_network_calls"] == 0
    assert "ORACLE" in records["oracle"]["prior_note"]
    sw2 = {k: r["sw2_exact"] for k, r in records.items()}
    # At T = 0.15 the naive N(0, I) start is far off the true marginal (mean ≈ 0.75·α_T ≠ 0), and a short
    # reverse process cannot move the mass back: every fitted prior does much better.
    assert max(sw2["moment"], sw2["flow"], sw2["oracle"]) < 0.5 * sw2["gaussian"], sw2


@pytest.mark.parametrize("prior, msg", [
    ("{kind: nope}", "expected one of: gaussian, moment, flow, oracle, file"),
    ("{kind: moment, steps: 3}", "unknown key 'steps' in prior of kind 'moment'"),
    ("{kind: file, path: /no/such/prior.pt}", "not found"),
    ("{kind: moment, covariance: banded}", "expected one of: full, diag"),
])
def test_bad_priors_rejected_at_load(tmp_path, prior, msg):
    path = tmp_path / "bad.yaml"
    path.write_text(GRID.replace(
        "prior: [gaussian, {kind: moment, covariance: full}, {kind: flow, steps: 150, num_data: 2000}, oracle]",
        f"prior: {prior}"))
    with pytest.raises(GridError, match=msg):
        load_grid(path)
