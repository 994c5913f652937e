"""The metric registry's entry: everything the harness needs to know about one metric.

A metric is one :class:`MetricEntry` in :data:`bench.metrics.METRICS` (a plain dict, name → entry),
declared in the metric's own module. The harness reads nothing else about a metric:

* the grid loader asks :attr:`MetricEntry.applies` whether it can score a model (kind, sample
  shape, conditional or not) and refuses the grid with the reason (exit 2);
* the run's identity hashes the content of :attr:`MetricEntry.files` (feature networks, reference
  statistics) and of :attr:`MetricEntry.datasets`, and includes the run's ``data`` section where
  :attr:`MetricEntry.reads_data`; the pre-flight check resolves the same files, so a missing one fails
  before any sampling;
* a shard builds the accumulator with :meth:`MetricEntry.make` from the run's :class:`RunFacts`,
  feeds it batches and stores its ``state()``; the run's record merges the shards' states into a
  fresh accumulator (built on the CPU; with the loaded model where :attr:`MetricEntry.needs_model`)
  and calls ``compute()`` — whose protocol carries the uncertainty (the jackknife over seed groups,
  :mod:`bench.metrics.uncertainty`);
* the report ranks by :attr:`MetricEntry.lower_is_better`, and the memory bound of ``--plan``
  reads :attr:`MetricEntry.state_bytes` and :attr:`MetricEntry.max_generated`.

This module, like every module of ``bench/metrics``, imports nothing from the rest of ``bench``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import Tensor

from bench.metrics.uncertainty import METHOD

__all__ = ["Metric", "MetricEntry", "RunFacts", "image_shape", "positive_ints", "require_res", "with_res"]


class Metric(Protocol):
    """A mergeable accumulator (see :mod:`bench.metrics`)."""

    name: str

    def update(self, samples: Tensor, ids: Tensor | None = None) -> None: ...

    def state(self) -> dict: ...

    def merge(self, state: dict) -> None: ...

    def compute(self) -> tuple[float, dict]: ...


@dataclass(frozen=True)
class RunFacts:
    """What a metric is told about the run it scores: plain values only.

    Attributes:
        data: the model's ``data`` section of the grid (dataset, split, reference files, ...).
        seeds: the run's seed ranges (copied into the protocol).
        device: where feature networks run.
        model: the loaded model (``data_range``, ``shape``; the mixture itself for exact metrics).
    """

    data: dict
    seeds: str | None = None
    device: str = "cpu"
    model: object | None = None

    @property
    def data_range(self) -> tuple[float, float]:
        return tuple(self.model.data_range)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.model.shape)


def _always(kind: str, shape: tuple[int, ...] | None, conditional: bool) -> str | None:
    return None


def _no_files(data: dict) -> dict[str, Path]:
    return {}


def _no_datasets(data: dict) -> list[tuple[str, str]]:
    return []


def _no_check(data: dict) -> None:
    return None


def positive_ints(*keys: str) -> Callable[[dict], None]:
    """A ``check`` that the data-section ``keys`` present are positive integers."""

    def check(data: dict) -> None:
        for k in keys:
            v = data.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"field {k!r} must be a positive integer, got {v!r}")

    return check


def with_res(data: dict, shape: tuple[int, ...] | None) -> dict:
    """The ``data`` section as a metric's ``files`` reads it for a model whose samples have ``shape`` (None:
    not known before loading): ``res`` defaults to the samples' size, as the metric's options default it
    (:attr:`RunFacts.shape`), so the reference statistics hashed and checked are those the metric reads."""
    if "res" in data or shape is None or len(shape) != 3:
        return data
    return {**data, "res": int(shape[-1])}


def require_res(data: dict) -> int:
    """``data['res']`` (set, or filled by :func:`with_res`) for a metric whose reference statistics are per image
    size. Raises ``ValueError`` naming the field where the samples' size is not known before loading."""
    res = data.get("res")
    if res is None:
        raise ValueError("field 'res' is not set and the model's sample size is not known before loading it; "
                         "set data: {res: <image size>} (it names the reference statistics)")
    return res


def image_shape(kind: str, shape: tuple[int, ...] | None, conditional: bool) -> str | None:
    """``applies`` of metrics on images of 1 or 3 channels (C×H×W)."""
    if shape is None or (len(shape) == 3 and shape[0] in (1, 3)):
        return None
    return f"it needs images of 1 or 3 channels (CxHxW); the model's samples are {'x'.join(map(str, shape))}"


@dataclass(frozen=True)
class MetricEntry:
    """One metric of the registry.

    Attributes:
        name: its key in :data:`bench.metrics.METRICS` and in records.
        summary: one line for docs and ``--help``.
        build: the accumulator's factory, ``build(**options) -> Metric``.
        options: the factory's options for a run, ``options(RunFacts) -> dict``.
        lower_is_better: its direction (Pareto fronts, budgets, targets of the report).
        applies: ``applies(model kind, sample shape or None, conditional) -> reason or None``; conditional is
            False, True (class labels) or ``"text"`` (a model with a prompts file).
        files: ``files(data section) -> {role: path}`` of every file it reads (hashed into the run's
            identity as ``<name>:<role>``); raises ``FileNotFoundError`` (a ``MissingAssetError``) naming
            the missing one and how to get it.
        datasets: ``datasets(data section) -> [(dataset, split)]`` it reads (hashed as ``dataset:<d>/<s>``).
        reads_data: the run's ``data`` section is part of its identity.
        needs_model: merging shard states needs the loaded model (``RunFacts.model``), not only its
            data range and shape.
        per_sample: scores the run's samples (False: computed apart, in its own shard: ``bpd``).
        state_bytes: bytes of mergeable state each sample adds (0: the state does not grow with N).
        max_generated: the most samples its state accepts (None: any).
        uncertainty: how the record's uncertainty is computed.
        values: for a metric with several values (``prdc``): ``{record column: lower is better}``; its
            ``compute()`` returns ``{column: (value, protocol)}`` instead of one ``(value, protocol)``.
        keys: the ``data``-section keys it reads beyond the common ones (its grid options).
        check: ``check(data section)`` raises ``ValueError`` naming a bad field of its options.
    """

    name: str
    summary: str
    build: Callable[..., Metric]
    options: Callable[[RunFacts], dict]
    lower_is_better: bool = True
    applies: Callable[[str, tuple[int, ...] | None, bool], str | None] = _always
    files: Callable[[dict], dict[str, Path]] = _no_files
    datasets: Callable[[dict], list[tuple[str, str]]] = _no_datasets
    reads_data: bool = False
    needs_model: bool = False
    per_sample: bool = True
    state_bytes: int = 0
    max_generated: int | None = None
    uncertainty: str = METHOD
    values: dict[str, bool] | None = None
    keys: tuple[str, ...] = ()
    check: Callable[[dict], None] = _no_check

    def make(self, facts: RunFacts) -> Metric:
        """A fresh accumulator for the run described by ``facts``."""
        return self.build(**self.options(facts))

    def columns(self) -> dict[str, bool]:
        """``{record column: lower is better}`` of the values it records (its name alone for most)."""
        return dict(self.values) if self.values is not None else {self.name: self.lower_is_better}

    def results(self, metric: Metric) -> dict[str, tuple[float, dict]]:
        """``{record column: (value, protocol)}`` of a filled accumulator."""
        out = metric.compute()
        return out if self.values is not None else {self.name: out}
