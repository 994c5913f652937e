"""Models named by a grid's model section: a plain registry of kinds, each with its keys, a
pre-flight check (files exist, before anything runs) and a loader returning a score model.

Kinds (``MODEL_KINDS``):

* ``mixture`` — an exact-score :class:`~models.gaussian.GaussianMixture`: explicit ``means``/
  ``stds``/``weights``, or ``components`` means drawn from N(0, ``scale``²) with seed ``seed`` on
  ``shape``, all with std ``std``; ``sde`` is a ``make_sde`` mapping.
* ``checkpoint`` — the project's own checkpoint (``models.checkpoint_io.load_model``): ``path``,
  ``weights`` ('ema' or 'raw').
* ``official`` — an official score_sde checkpoint (``models.checkpoints.load_official``):
  ``checkpoint`` (a path; relative paths are also looked up under ``$SCOREBENCH_CKPT_DIR``),
  ``config`` (e.g. 'vp/cifar10_ddpmpp_continuous'), ``ema``, ``overrides`` (network arguments).
* ``edm`` — an EDM network pickle, read without executing it; ``diffusers`` — a saved diffusers
  pipeline or model folder (both in :mod:`bench.model_kinds`).
* ``callable`` — ``target: 'package.module:function'`` called with ``options``; it returns any score
  model (an extension point for user models, and how the tests inject failing models).

``label`` (kinds ``edm``, ``diffusers``, ``callable``; :func:`bench.model_kinds.check_label`): the class
a class-conditional model is asked for — a fixed index, or ``'random'``, one per seed. Models are
loaded label-free (the key is not part of the cache key); :func:`batch_labels` gives each batch its
labels and the executor conditions the run's problem on them (``Problem.conditioned``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import model_kinds
from models.sde import make_sde

__all__ = ["MODEL_KINDS", "ModelKind", "ModelFacts", "check_model_section", "describe_model", "load_score_model",
           "batch_labels", "RunScore", "resolve_path", "CKPT_ENV"]

CKPT_ENV = "SCOREBENCH_CKPT_DIR"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str, env: str | None = None) -> Path | None:
    """An existing file for ``path``: as given (relative to the working directory), else under the
    folder in ``$env``, else relative to the project checkout (shipped weights such as
    ``models/weights/digits_vp.pt`` from any working directory); None if none exists."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_absolute():
        return None
    for base in ([Path(os.environ[env]).expanduser()] if env and os.environ.get(env) else []) + [PROJECT_ROOT]:
        if (base / p).is_file():
            return base / p
    return None


# --- mixture ---------------------------------------------------------------------------------
def _mixture(section: dict, device: str, dtype: torch.dtype):
    from models.gaussian import GaussianMixture

    sde = make_sde(**section.get("sde", {"kind": "vp"}))
    if "means" in section:
        means = torch.as_tensor(section["means"], dtype=torch.float64)
        stds = torch.as_tensor(section.get("stds", section.get("std", 0.1)), dtype=torch.float64)
    else:
        shape = tuple(section.get("shape", (2,)))
        k = int(section.get("components", 4))
        g = torch.Generator().manual_seed(int(section.get("seed", 0)))
        means = float(section.get("scale", 1.0)) * torch.randn(k, *shape, generator=g, dtype=torch.float64)
        stds = torch.as_tensor(float(section.get("std", 0.1)), dtype=torch.float64)
    weights = section.get("weights")
    data_range = tuple(section.get("data_range", (-1.0, 1.0)))
    return GaussianMixture(means, stds, sde, weights=None if weights is None else torch.as_tensor(weights),
                           data_range=data_range)


def _check_mixture(section: dict, files: bool = True) -> None:
    del files
    sde = section.get("sde", {"kind": "vp"})
    if not isinstance(sde, dict):
        raise ValueError(f"field 'sde' must be a mapping like {{kind: vp}}, got {sde!r}")
    make_sde(**sde)
    _mixture(section, "cpu", torch.float64)  # shapes, stds, weights


# --- the project's own checkpoints ------------------------------------------------------------
def _checkpoint(section: dict, device: str, dtype: torch.dtype):
    from models.checkpoint_io import load_model

    path = resolve_path(section["path"], CKPT_ENV)
    return load_model(path, weights=section.get("weights", "ema"), dtype=dtype, device=device)


def _check_checkpoint(section: dict, files: bool = True) -> None:
    if not isinstance(section.get("path"), str):
        raise ValueError(f"field 'path' (the checkpoint file) must be a string, got {section.get('path')!r}")
    if section.get("weights", "ema") not in ("ema", "raw"):
        raise ValueError(f"field 'weights' must be one of: ema, raw; got {section['weights']!r}")
    path = resolve_path(section["path"], CKPT_ENV)
    if files and path is None:
        data = (section.get("data") or {}).get("dataset", "<dataset>")
        raise FileNotFoundError(
            f"checkpoint {section['path']!r} not found (nor under ${CKPT_ENV}); train one with "
            f"`python -m models.train --data {data} --sde vp --out {section['path']}` or fix the path")
    if files:
        try:
            _peek(path, "checkpoint")
        except ValueError as e:
            raise ValueError(f"field 'path': {e}") from e


def _peek(path: Path, kind: str) -> dict:
    """``{'spec': ...}`` of the checkpoint at ``path``, checked before anything runs to be of ``kind``
    ('checkpoint': the project's format, 'official': score_sde's): an empty, garbage or other-kind file
    is a ValueError naming the right kind. Read with ``weights_only=True``, tensors memory-mapped
    where the file allows, so a large official checkpoint costs little; only the spec is kept."""
    from models.checkpoint_io import FORMAT, CheckpointError, read_checkpoint

    key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns, kind)
    if key in _PEEKED:
        return _PEEKED[key]
    if kind == "checkpoint":
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as e:
            raise ValueError(f"{e}{'; use kind: official' if 'official score_sde' in str(e) else ''}") from e
    else:
        try:
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # not a zip archive: no memory map
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # empty, truncated, not a torch file, or objects outside the allowed set
            raise ValueError(f"{path}: cannot read as a torch checkpoint "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
        if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
            raise ValueError(f"{path} is a scorebench checkpoint, not an official score_sde one; use kind: checkpoint "
                             f"with path: {path}")
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
            got = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise ValueError(f"{path} is not an official score_sde checkpoint: expected a dict with 'model' "
                             f"(and 'ema'), got {got}")
    _PEEKED[key] = {"spec": ckpt.get("spec")}  # what the load-time checks read; the weights are let go
    return _PEEKED[key]


_PEEKED: dict[tuple, dict] = {}


@dataclass(frozen=True)
class ModelFacts:
    """What a model section determines before its network is loaded, for the checks at grid load."""

    shape: tuple[int, ...]  # one sample
    sde: object  # the model's own SDE (T, eps)


def _describe_mixture(section: dict, files: bool = True) -> ModelFacts:
    del files
    model = _mixture(section, "cpu", torch.float64)
    return ModelFacts(tuple(model.shape), model.sde)


def _describe_checkpoint(section: dict, files: bool = True) -> ModelFacts | None:
    path = resolve_path(section["path"], CKPT_ENV)
    if not files or path is None:
        return None
    spec = _peek(path, "checkpoint")["spec"]
    return ModelFacts(tuple(spec["shape"]), make_sde(**spec["sde"]))


def _describe_official(section: dict, files: bool = True) -> ModelFacts:
    del files
    from models.configs import get_config

    config = get_config(section["config"])
    return ModelFacts(tuple(config.shape), make_sde(**config.sde))


# --- official score_sde checkpoints ---------------------------------------------------------
def _official(section: dict, device: str, dtype: torch.dtype):
    from models.checkpoints import load_official

    path = resolve_path(section["checkpoint"], CKPT_ENV)
    model = load_official(path, section["config"], ema=section.get("ema", True), device=device,
                          **section.get("overrides", {}))
    model.net.to(dtype=dtype)
    return model


def _check_official(section: dict, files: bool = True) -> None:
    from models.checkpoints import OFFICIAL_CHECKPOINTS_URL
    from models.configs import get_config

    if not isinstance(section.get("config"), str):
        raise ValueError("field 'config' (the score_sde config name, e.g. 'vp/cifar10_ddpmpp_continuous') is required")
    get_config(section["config"])
    ckpt = section.get("checkpoint")
    if not isinstance(ckpt, str):
        raise ValueError(f"field 'checkpoint' (path of the official .pth file) must be a string, got {ckpt!r}")
    if files and resolve_path(ckpt, CKPT_ENV) is None:
        where = f" (nor under ${CKPT_ENV}={os.environ[CKPT_ENV]})" if os.environ.get(CKPT_ENV) else \
            f" (set ${CKPT_ENV} to the folder holding it)"
        raise FileNotFoundError(
            f"official checkpoint {ckpt!r} not found{where}; download {section['config']}/checkpoint_<n>.pth "
            f"from the score_sde_pytorch Google Drive folder ({OFFICIAL_CHECKPOINTS_URL})")
    if files:
        try:
            _peek(resolve_path(ckpt, CKPT_ENV), "official")
        except ValueError as e:
            raise ValueError(f"field 'checkpoint': {e}") from e


# --- user callables -------------------------------------------------------------------------
def _import_target(target: str) -> Callable:
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(f"field 'target' must be 'package.module:function', got {target!r}")
    module, _, name = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import model target {target!r}: {e}") from e
    return fn


def _callable(section: dict, device: str, dtype: torch.dtype):
    return _import_target(section["target"])(**section.get("options", {}))


def _check_callable(section: dict, files: bool = True) -> None:
    del files
    _import_target(section.get("target"))
    model_kinds.check_label(section)  # the model's classes are known once it is loaded (batch_labels)


@dataclass(frozen=True)
class ModelKind:
    keys: tuple[str, ...]  # the kind's own keys in a model section
    check: Callable[..., None]  # check(section, files): raises ValueError / FileNotFoundError
    load: Callable[[dict, str, torch.dtype], object]
    # describe(section, files) -> ModelFacts | None: shape and SDE without loading the network (None: unknown)
    describe: Callable[..., ModelFacts | None] | None = None


MODEL_KINDS: dict[str, ModelKind] = {
    "mixture": ModelKind(("sde", "means", "stds", "std", "weights", "shape", "components", "scale", "seed",
                          "data_range"), _check_mixture, _mixture, _describe_mixture),
    "checkpoint": ModelKind(("path", "weights"), _check_checkpoint, _checkpoint, _describe_checkpoint),
    "official": ModelKind(("checkpoint", "config", "ema", "overrides"), _check_official, _official,
                          _describe_official),
    "edm": ModelKind(model_kinds.EDM_KEYS, model_kinds.check_edm, model_kinds.load_edm_section),
    "diffusers": ModelKind(model_kinds.DIFFUSERS_KEYS, model_kinds.check_diffusers, model_kinds.load_diffusers_section),
    "callable": ModelKind(("target", "options", "label"), _check_callable, _callable),
}


def check_model_section(section: dict, files: bool = True) -> None:
    """Check a model section (names valid; with ``files``, its files exist); loads nothing heavy."""
    MODEL_KINDS[section["kind"]].check(section, files)


def describe_model(section: dict, files: bool = True) -> ModelFacts | None:
    """The sample shape and SDE of a checked model section, where known without loading the network."""
    describe = MODEL_KINDS[section["kind"]].describe
    return describe(section, files) if describe is not None else None


class RunScore:
    """The score model as one run sees it: the same network, with the run's SDE (T, eps overridden).

    The wrapped model keeps its own SDE for its time labels, so truncating T changes only where
    samplers start, not what the network is fed.
    """

    def __init__(self, model, sde) -> None:
        self.model = model
        self.sde = sde
        self.shape = tuple(model.shape)
        self.data_range = tuple(model.data_range)

    def __call__(self, x, t):
        return self.model(x, t)

    def conditioned(self, labels) -> RunScore:
        from models.score import conditioned

        return RunScore(conditioned(self.model, labels), self.sde)

    def __getattr__(self, name: str):
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)


def run_sde(model, T: float | None, eps: float | None):
    """The model's SDE with ``T``/``eps`` replaced where given (validated by the SDE)."""
    changes = {k: v for k, v in (("T", T), ("eps", eps)) if v is not None}
    return dataclasses.replace(model.sde, **changes) if changes else model.sde


def accelerate(model, accel: dict):
    """The run's view of a loaded model with the eval section's GPU paths (``accel``): autocast,
    channels_last and torch.compile of the network (a shallow copy, so the cached model is untouched),
    and batch splitting (``max_batch``, halved on CUDA out-of-memory) around the score."""
    import copy

    from models.accel import AcceleratedNet, Acceleration, ChunkedScore

    options = Acceleration(**{k: accel[k] for k in ("autocast", "channels_last", "compile") if k in accel})
    if options.enabled:
        if not hasattr(model, "net"):
            raise ValueError("eval.accel autocast/channels_last/compile need a network model "
                             f"(got {type(model).__name__})")
        model = copy.copy(model)
        model.net = AcceleratedNet(model.net, options)
    return ChunkedScore(model, accel.get("max_batch"))


_CACHE: dict[tuple, object] = {}


def _file_state(section: dict) -> tuple | None:
    """(path, size, mtime) of a section's checkpoint, so a replaced file is never served from the cache."""
    name = section.get("path") if section.get("kind") == "checkpoint" else section.get("checkpoint")
    path = resolve_path(name, CKPT_ENV) if isinstance(name, str) else None
    if path is None:
        return None
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def batch_labels(section: dict, model, seeds) -> torch.Tensor | None:
    """The class labels [B] int64 of a batch of ``seeds`` for the section's ``label`` (None without one):
    a fixed class for every sample, or ``'random'``: :func:`solvers.noise.seed_labels`, a function of
    each seed alone. Checked against the loaded model's ``label_dim`` (ValueError as at grid load)."""
    from solvers.noise import seed_labels

    label_dim = int(getattr(model, "label_dim", 0) or 0)
    model_kinds.check_label(section, label_dim, f"the {section['kind']} model")
    label = section.get("label")
    if label is None:
        return None
    if label == model_kinds.RANDOM_LABEL:
        return seed_labels(seeds, label_dim)
    return torch.full((len(seeds),), int(label), dtype=torch.int64)


def load_score_model(section: dict, device: str = "cpu", dtype: str = "float32"):
    """Load (once per process) the model of a section, on ``device`` in ``dtype``; label-free (the
    section's ``label`` is applied per batch, :func:`batch_labels`)."""
    from bench.records import canonical

    section = {k: v for k, v in section.items() if k != "label"}
    key = (canonical(section), _file_state(section), str(device), dtype)
    if key not in _CACHE:
        if len(_CACHE) >= 2:  # a worker keeps at most two models in memory
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = MODEL_KINDS[section["kind"]].load(section, str(device), DTYPES[dtype])
    return _CACHE[key]
