"""Test helpers: the official fixtures' toy problem as an exact-score model; EDM snapshots written
without EDM's code."""

from __future__ import annotations

import io
import json
import pickle
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


# --- EDM snapshots written without EDM's code ----------------------------------------------------
def _reconstruct_persistent_obj(meta):  # pickled under EDM's name (torch_utils.persistence)
    return meta


def _module_dict():  # pickled under torch.nn.modules.container.ModuleDict
    return None


class _EDMNamePickler(pickle._Pickler):
    """Writes the two stand-ins above under the global names EDM's snapshots use."""

    NAMES = {id(_reconstruct_persistent_obj): ("torch_utils.persistence", "_reconstruct_persistent_obj"),
             id(_module_dict): ("torch.nn.modules.container", "ModuleDict")}

    def save(self, obj, save_persistent_id=True):
        if id(obj) in self.NAMES:
            module, name = self.NAMES[id(obj)]
            super().save(module)
            super().save(name)
            self.write(pickle.STACK_GLOBAL)
            return
        super().save(obj, save_persistent_id)


class _Record:
    """A module pickled as EDM's persistence writes it: REDUCE(_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, module, init_kwargs: dict | None = None) -> None:
        self.module, self.init_kwargs = module, init_kwargs

    def __reduce__(self):
        state = dict(self.module.__dict__)
        state["_modules"] = {k: _as_stored(v) for k, v in self.module._modules.items()}
        if self.init_kwargs is not None:
            state["_init_args"], state["_init_kwargs"] = (), dict(self.init_kwargs)
        meta = {"type": "class", "version": 6, "module_src": "# not executed\n",
                "class_name": type(self.module).__name__, "state": state}
        return (_reconstruct_persistent_obj, (meta,))


class _Dict:
    """A torch.nn.ModuleDict as EDM's snapshots hold it (a plain object: NEWOBJ/REDUCE + BUILD)."""

    def __init__(self, module) -> None:
        self.module = module

    def __reduce__(self):
        state = dict(self.module.__dict__)
        state["_modules"] = {k: _as_stored(v) for k, v in self.module._modules.items()}
        return (_module_dict, (), state)


def _as_stored(module):
    if module is None:
        return None
    return _Dict(module) if isinstance(module, torch.nn.ModuleDict) else _Record(module)


def write_edm_pickle(path: Path, net: torch.nn.Module, init_kwargs: dict) -> Path:
    """Write ``net`` (a models.edm.precond network built with ``init_kwargs``) as an EDM snapshot
    ``{'ema': net}``, in the layout EDM's ``torch_utils.persistence`` writes (shared/fixtures/edm
    README §2), for networks the fixtures do not cover (e.g. class-conditional ones)."""
    buf = io.BytesIO()
    _EDMNamePickler(buf, protocol=4).dump({"ema": _Record(net, init_kwargs)})
    Path(path).write_bytes(buf.getvalue())
    return Path(path)
