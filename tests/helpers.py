"""Test helpers: the official fixtures' toy problem as an exact-score model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.gaussian import GaussianMixture
from models.sde import VESDE, VPSDE, SubVPSDE

SDE_CLASSES = {"VPSDE": VPSDE, "VESDE": VESDE, "subVPSDE": SubVPSDE}


def fixture_model(fx: dict, eps: float | None = None) -> GaussianMixture:
    """The fixture's mixture (REFERENCE fixtures §3.1) under the fixture's SDE."""
    cfg = dict(fx["settings"]["sde"])
    cls = SDE_CLASSES[cfg.pop("cls")]
    cfg.pop("N", None)
    sampling_eps = cfg.pop("sampling_eps", None)
    eps = eps if eps is not None else fx["settings"].get("eps", sampling_eps)
    sde = cls(**cfg, eps=eps)
    prob = fx["problem"]
    return GaussianMixture(prob["means_float64"], torch.tensor(float(prob["component_std"])), sde,
                           weights=torch.tensor(prob["weights"], dtype=torch.float64))


class RecordingScore:
    """Score wrapper that records the times it is called at."""

    def __init__(self, model) -> None:
        self.model, self.sde, self.shape, self.data_range = model, model.sde, model.shape, model.data_range
        self.t: list[float] = []

    def __call__(self, x, t):
        self.t.append(float(t[0]))
        return self.model(x, t)


DIGITS_VP = Path(__file__).resolve().parents[1] / "models" / "weights" / "digits_vp.pt"


def run_grid_text(tmp_path: Path, text: str) -> list[dict]:
    """Write a grid, run it with the CLI (no progress, no report), and return its records."""
    from bench.run import main

    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    assert main(["--grid", str(grid), "--out", str(tmp_path / "out"), "--no-progress", "--no-report"]) == 0
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "runs").glob("*.json"))]
