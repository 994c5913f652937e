"""The model kinds a grid's model section can name: one registry entry per kind
(:class:`~bench.kinds.base.ModelKind`: its grid keys, check, loader, facts and the files hashed into
the run's identity), one module per kind. Adding a kind is one module plus its line here."""

from __future__ import annotations

from pathlib import Path

from bench.kinds import adm, checkpoint, diffusers, edm, edm2, mixture, official, user_callable
from bench.kinds.base import ModelFacts, ModelKind

__all__ = ["MODEL_KINDS", "ModelKind", "ModelFacts", "check_model_section", "describe_model", "model_files"]

MODEL_KINDS: dict[str, ModelKind] = {
    "mixture": mixture.KIND,
    "checkpoint": checkpoint.KIND,
    "official": official.KIND,
    "edm": edm.KIND,
    "edm2": edm2.KIND,
    "diffusers": diffusers.KIND,
    "callable": user_callable.KIND,
    "adm": adm.KIND,
}


def check_model_section(section: dict, files: bool = True) -> dict:
    """Check a model section (names valid; with ``files``, its files exist; loads nothing heavy) and
    return it with the defaults its files decide written in (:attr:`ModelKind.resolve`)."""
    kind = MODEL_KINDS[section["kind"]]
    kind.check(section, files)
    return kind.resolve(section, files)


def describe_model(section: dict, files: bool = True) -> ModelFacts | None:
    """The sample shape and path of a checked model section, where known without loading the network."""
    describe = MODEL_KINDS[section["kind"]].describe
    return describe(section, files) if describe is not None else None


def model_files(section: dict) -> dict[str, Path]:
    """``{role: path}`` of the existing files or folders the section's model reads."""
    kind = MODEL_KINDS.get(section.get("kind"))
    return kind.files(section) if kind is not None else {}
