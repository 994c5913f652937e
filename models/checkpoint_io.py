"""The project's own checkpoint format: one file that rebuilds a score model without other inputs.

A checkpoint is a ``torch.save``d plain dict (loadable with ``weights_only=True``)::

    {"format": "scorebench-checkpoint", "version": 1,
     "spec": {network, network_config, sde, time_label, num_scales, data_range, shape, dataset, levels},
     "ema": state_dict, "raw": state_dict or None,
     "provenance": {steps, seed, loss_curve, wall_time_s, torch, commands, ...},
     "train_state": {optimizer, rng, ...} or None}   # only what ``--resume`` needs; dropped by slim

Official score_sde checkpoints (``{'model', 'ema', 'optimizer', 'step'}``) are a different format
and are refused here with a message saying so.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.score import TIME_LABELS, NetworkScore
from models.sde import make_sde
from models.unet import build_network

__all__ = [
    "load_weights_only",
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "ModelSpec",
    "save_checkpoint",
    "read_checkpoint",
    "build_from_spec",
    "load_model",
    "slim_checkpoint",
]

FORMAT = "scorebench-checkpoint"
VERSION = 1
_REQUIRED = ("format", "version", "spec", "ema", "provenance")


class CheckpointError(ValueError):
    """A file is not a readable scorebench checkpoint, or its weights do not fit its network."""


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint needs besides weights to rebuild its score model.

    Args:
        network: registry name in :data:`models.unet.NETWORKS` (e.g. 'small_unet').
        network_config: plain-dict config of that network.
        sde: ``sde_to_dict`` form of the SDE.
        time_label: 'continuous' or 'smld' (see :mod:`models.score`).
        num_scales: N of a discrete ('smld') model; 1000 (unused) for continuous ones.
        data_range: (−1, 1) centered or (0, 1) uncentered.
        shape: shape of one sample.
        dataset: registry name in :data:`models.datasets.DATASETS`.
        levels: grey levels of the source data (17 for digits, 256 for 8-bit), None for toys.
    """

    network: str
    network_config: dict
    sde: dict
    time_label: str
    num_scales: int
    data_range: tuple[float, float]
    shape: tuple[int, ...]
    dataset: str
    levels: int | None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.time_label not in TIME_LABELS:
            raise ValueError(
                f"unknown time_label {self.time_label!r}; expected one of: {', '.join(TIME_LABELS)}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data_range"], d["shape"] = list(self.data_range), list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        missing = sorted(set(cls.__dataclass_fields__) - set(d) - {"extra"})
        if missing:
            raise CheckpointError(f"checkpoint spec lacks {missing}")
        return cls(**{**d, "data_range": tuple(d["data_range"]), "shape": tuple(d["shape"])})


def load_weights_only(path: str | Path, what: str = "a torch checkpoint"):
    """``torch.load(path, weights_only=True)`` on the CPU, memory-mapped where the file allows (a large
    checkpoint then costs little to inspect). ValueError naming the file and ``what`` it was read as
    when it is empty, truncated, not a torch file, or holds objects the safe loader refuses."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip archive: no memory map
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read as {what} ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e


def save_checkpoint(
    path: str | Path,
    spec: ModelSpec,
    ema: dict,
    raw: dict | None = None,
    provenance: dict | None = None,
    train_state: dict | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file, then rename).

    Args:
        path: destination file.
        spec: how to rebuild the model.
        ema: EMA weights (state dict) — what :func:`load_model` uses by default.
        raw: the raw (non-averaged) weights, or None.
        provenance: training record (steps, seed, loss curve, wall time, torch version, commands).
        train_state: optimizer/RNG state for ``--resume``, or None for a slim file.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "ema": {k: v.detach().cpu() for k, v in ema.items()},
        "raw": None if raw is None else {k: v.detach().cpu() for k, v in raw.items()},
        "provenance": provenance or {},
        "train_state": train_state,
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint dict; every failure is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or not a torch file at all
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    if ckpt.get("format") != FORMAT:
        hint = (
            " (this looks like an official score_sde checkpoint; load it with the score_sde loader)"
            if {"model", "ema", "step"} <= set(ckpt)
            else ""
        )
        raise CheckpointError(f"{path}: not a {FORMAT} file{hint}")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint version {ckpt.get('version')!r} (expected {VERSION})"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return ckpt


def build_from_spec(spec: ModelSpec, state: dict | None = None, source: str = "<state>") -> nn.Module:
    """Rebuild the network of ``spec`` and, if given, load ``state`` strictly."""
    try:
        net = build_network(spec.network, spec.network_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: cannot rebuild network {spec.network!r}: {e}") from e
    if state is not None:
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{source}: weights do not match the network config: {e}") from e
    return net


def load_model(
    path: str | Path,
    weights: str = "ema",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> NetworkScore:
    """Load a checkpoint as a :class:`NetworkScore` (network in eval mode).

    Args:
        path: checkpoint file.
        weights: 'ema' (default, what samples and metrics use) or 'raw'.
        dtype: parameter dtype of the network.
        device: device of the network.

    Returns:
        The score model, with ``info`` = {'dataset', 'levels', 'provenance', 'spec', 'path'}.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: corrupted file, another format, or weights that do not fit the config.
        ValueError: unknown ``weights``.
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"unknown weights {weights!r}; expected one of: ema, raw")
    ckpt = read_checkpoint(path)
    spec = ModelSpec.from_dict(ckpt["spec"])
    state = ckpt[weights]
    if state is None:
        raise CheckpointError(f"{path}: has no {weights!r} weights (slimmed checkpoint)")
    net = build_from_spec(spec, state, str(path)).to(device=device, dtype=dtype)
    try:
        sde = make_sde(**spec.sde)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad SDE {spec.sde}: {e}") from e
    model = NetworkScore(net, sde, spec.shape, spec.data_range, spec.time_label, spec.num_scales)
    model.info = {
        "dataset": spec.dataset,
        "levels": spec.levels,
        "provenance": ckpt["provenance"],
        "spec": spec,
        "path": str(path),
    }
    return model


def slim_checkpoint(src: str | Path, dst: str | Path, keep_raw: bool = True) -> Path:
    """Copy a checkpoint without its resume state (optimizer, RNG); optionally drop raw weights too."""
    ckpt = read_checkpoint(src)
    spec = ModelSpec.from_dict(ckpt["spec"])
    return save_checkpoint(
        dst, spec, ckpt["ema"], ckpt["raw"] if keep_raw else None, ckpt["provenance"], None
    )
