"""What every model kind shares: the :class:`ModelKind` record of the registry
(:data:`bench.kinds.MODEL_KINDS`), :class:`ModelFacts`, where checkpoint files are looked up, and
class labels (``label``).

``label`` (:func:`check_label`): a class index k (every sample asks for class k) or ``'random'`` (one
class per seed, uniform, from a stream of its own: :func:`solvers.noise.seed_labels`). It is required
for a class-conditional network and refused for an unconditional one — both checked when the grid
loads where the kind can read the number of classes without loading the network. The harness applies
it per batch (:func:`bench.models.batch_labels`), never at load: a cached network is label-free.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ModelKind", "ModelFacts", "CKPT_ENV", "PROJECT_ROOT", "RANDOM_LABEL", "resolve_path", "resolve_folder",
           "where_env", "check_label"]

CKPT_ENV = "SCOREBENCH_CKPT_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
RANDOM_LABEL = "random"  # label: random — one class per seed (solvers.noise.seed_labels)


@dataclass(frozen=True)
class ModelFacts:
    """What a model section determines before its network is loaded, for the checks at grid load."""

    shape: tuple[int, ...]  # one sample, as the metrics see it (a latent model's decoded image)
    sde: object  # the model's own path (T, eps)
    sampled: tuple[int, ...] | None = None  # what the sampler draws, where it differs from shape (latents)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape if self.sampled is None else self.sampled


@dataclass(frozen=True)
class ModelKind:
    """One entry of the model-kind registry: everything the harness knows of a kind.

    Attributes:
        keys: the kind's own keys in a grid's model section (besides kind, name, metrics, data).
        check: ``check(section, files)``: ValueError / FileNotFoundError naming the field (with
            ``files``, its files exist and their headers are right); loads nothing heavy.
        load: ``load(section, device, dtype)``: the score model, label-free.
        describe: ``describe(section, files) -> ModelFacts | None``: shape and path without loading
            the network (None: unknown until loaded).
        files: ``files(section) -> {role: path}``: the files or folders the run reads, hashed into
            its identity (:func:`bench.hashing.run_inputs`); missing ones are left out.
        resolve: ``resolve(section, files) -> section``: the checked section with the defaults the
            model's files decide written in, so that every record states them (e.g. a diffusers
            model's time mapping).
        null_condition: whether its conditional models may carry the null condition they were trained
            with (``null_condition(n)``: classifier-free guidance without a separate unconditional
            network, :mod:`models.guidance`); False refuses ``guidance: {kind: cfg}`` without a guide
            at grid load (the loaded model is checked again when the run starts).
    """

    keys: tuple[str, ...]
    check: Callable[[dict, bool], None]
    load: Callable[[dict, str, torch.dtype], object]
    describe: Callable[[dict, bool], ModelFacts | None] | None = None
    files: Callable[[dict], dict[str, Path]] = lambda section: {}
    resolve: Callable[[dict, bool], dict] = lambda section, files: section
    null_condition: bool = True


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


def resolve_folder(path: str) -> Path | None:
    """An existing folder for ``path``: as given, else under ``$SCOREBENCH_CKPT_DIR``; None if none."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if not p.is_absolute() and os.environ.get(CKPT_ENV) and (Path(os.environ[CKPT_ENV]).expanduser() / p).is_dir():
        return Path(os.environ[CKPT_ENV]).expanduser() / p
    return None


def where_env() -> str:
    """The tail of a not-found message: where else the file was looked for."""
    if os.environ.get(CKPT_ENV):
        return f" (nor under ${CKPT_ENV}={os.environ[CKPT_ENV]})"
    return f" (set ${CKPT_ENV} to the folder holding it)"


def check_label(section: dict, label_dim: int | None = None, network: str = "the network") -> None:
    """The section's ``label`` against the model's number of classes (None: not known yet, the value's
    form only). ValueError naming the field and its valid choices."""
    label = section.get("label")
    is_index = isinstance(label, int) and not isinstance(label, bool) and label >= 0
    if label is not None and label != RANDOM_LABEL and not is_index:
        raise ValueError(f"field 'label' must be a class index >= 0 or {RANDOM_LABEL!r} (one class per seed), "
                         f"got {label!r}")
    if label_dim is None:
        return
    choices = f"a class index in 0..{label_dim - 1} or {RANDOM_LABEL!r} (one class per seed)"
    if label_dim == 0 and label is not None:
        raise ValueError(f"field 'label' ({label!r}) given, but {network} is unconditional (label_dim 0); "
                         f"remove 'label'")
    if label_dim > 0 and label is None:
        raise ValueError(f"{network} is class-conditional ({label_dim} classes): field 'label' is required; "
                         f"expected {choices}")
    if is_index and label >= label_dim:
        raise ValueError(f"field 'label' must be {choices}, got {label!r}")
