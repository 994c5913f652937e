"""Grid files: load a YAML grid, validate it, and expand its sweeps into runs.

A grid (see ``docs/grids.md``) names one or more models, an evaluation protocol and a list of
sweeps. Each sweep entry expands to the cartesian product of its list-valued keys; every cell is one
:class:`RunSpec` whose ``run_id`` is the sha1 of its canonical JSON (first 10 hex digits), so the
same cell always has the same id and a re-run can skip it.

Everything is checked here, before anything runs or is written: unknown keys, wrong types, solver
options (against :func:`solvers.sampler_options` and by building the sampler), non-positive step
counts and tolerances, ``T`` outside (eps, 1]. Errors are :class:`GridError` with one line naming the
file, the entry, the field and the valid choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.records import canonical
from bench.seeds import SeedRanges
from solvers import SAMPLERS, declared, make_sampler, sampler_class, sampler_options

__all__ = ["GridError", "EvalSpec", "GridSpec", "RunSpec", "load_grid", "parse_grid", "expand", "METRIC_NAMES",
           "canonical", "guidance_label"]

TOP_KEYS = ("name", "description", "model", "models", "data", "eval", "metrics", "sweeps")
EVAL_KEYS = ("num_samples", "batch_size", "seeds", "device", "dtype", "metrics", "timeout_s", "save_samples",
             "threads", "accel", "shard_size", "seed_sets")
ACCEL_KEYS = ("autocast", "channels_last", "compile", "max_batch")  # GPU paths (models.accel)
AUTOCAST = ("none", "bf16", "fp16")
MODEL_KEYS = ("kind", "name", "metrics", "data")  # plus the kind's own keys (bench.kinds.MODEL_KINDS)
DATA_KEYS = ("dataset", "root", "split", "fid_split", "res", "mode", "ref_path", "inception", "bpd_samples",
             "bpd_batch_size", "bpd_repeats")  # plus each metric's own keys (its registry entry's ``keys``)
# Any other sweep key is a solver option.
RUN_KEYS = ("solver", "model", "T", "eps", "prior", "step_rule", "metrics", "likelihood", "guidance")
GUIDANCE_KEYS = ("kind", "scale", "sigma_lo", "sigma_hi", "guide")  # models.guidance
DTYPES = ("float32", "float64", "bfloat16", "float16")
POSITIVE_OPTIONS = ("n_steps", "rtol", "atol", "tol", "snr", "steps_per_level", "corrector_steps", "step_size",
                    "max_steps", "h_init", "nfe_budget")
LIST_OPTIONS = ("sigmas",)  # solver options whose value is itself a list (of numbers)
# Upper bounds on counts that size allocations (a time grid of 10^12 steps is 8 TB), checked at load.
MAX_STEPS = 10**6
COUNT_OPTIONS = ("n_steps", "steps_per_level", "corrector_steps", "num_scales", "nfe_budget")
MAX_SAMPLES = 10**8
MAX_SEED = 2**63 - 1
DEFAULT_EVAL = {"num_samples": 1000, "batch_size": 500, "seeds": None, "device": "auto", "dtype": "float32",
                "metrics": [], "timeout_s": None, "save_samples": 64, "threads": None, "accel": {},
                "shard_size": None, "seed_sets": 1}
MAX_SEED_SETS = 100


def _metric_names() -> tuple[str, ...]:
    from bench.metrics import METRICS

    return tuple(METRICS)


METRIC_NAMES = _metric_names()


class GridError(ValueError):
    """A grid file that cannot be loaded; the message is one line naming file, entry and field."""


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping of the grid file holds one key twice (``key``, ``line``: the second one, ``first``: the first)."""

    def __init__(self, key: object, at: str, first: str, mark) -> None:
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=mark)
        self.key, self.at, self.first = key, at, first


def _line_column(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


class _GridLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that holds a key twice at any level (YAML 1.2 forbids it;
    PyYAML keeps the last value silently, so an edited grid would run something else than it reads).
    Keys merged in by ``<<`` may be overridden, as YAML's merge key means."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if first is not key_node:
                    raise _DuplicateKey(key, _line_column(key_node.start_mark), _line_column(first.start_mark),
                                        key_node.start_mark)
        return super().construct_mapping(node, deep)


@dataclass(frozen=True)
class EvalSpec:
    """How every run of a grid is evaluated (defaults for all runs; CLI overrides replace fields)."""

    num_samples: int
    batch_size: int
    seeds: str  # e.g. '0-999'; one seed per sample
    device: str  # 'auto', 'cpu', 'cuda', 'cuda:1'
    dtype: str
    metrics: tuple[str, ...]
    timeout_s: float | None
    save_samples: int  # samples kept beside each record for the sample-grid PNG
    threads: int | None
    accel: dict = field(default_factory=dict)  # autocast / channels_last / compile / max_batch
    shard_size: int | None = None  # samples per shard (None: bench.shards.DEFAULT_SHARD_SAMPLES)
    seed_sets: int = 1  # every cell runs on this many disjoint seed sets (bench.seeds.SeedRanges.seed_sets)


@dataclass(frozen=True)
class RunSpec:
    """One cell of a sweep: everything that determines its result (device excluded).

    ``identity()`` is the canonical dict hashed into ``run_id``: the spec, the content hashes of the
    files the run reads (``inputs``) and, for a batch-coupled sampler, ``batch_invariant: false`` beside
    the batch size and seeds that fix the batches' composition. ``device`` and ``timeout_s`` are
    carried but do not change a run's identity.
    """

    grid: str
    entry: int  # index of the sweep entry it came from
    model_name: str
    model: dict  # the model section (kind and its keys)
    data: dict
    solver: str
    options: dict  # solver options, validated
    T: float | None  # None: the SDE's own T
    eps: float | None
    prior: dict
    num_samples: int
    batch_size: int
    seeds: str
    dtype: str
    metrics: tuple[str, ...]
    likelihood: dict = field(default_factory=dict)  # ProbabilityFlowLikelihood options for 'bpd'
    # {role: sha256} of every file the result depends on (bench.hashing.run_inputs): part of the identity.
    inputs: dict = field(default_factory=dict)
    # models.guidance: {kind, scale, sigma_lo, sigma_hi, guide (a model name), guide_model (its section)};
    # empty: unguided. Part of the identity (the guide's files are in ``inputs`` as 'guide:<role>').
    guidance: dict = field(default_factory=dict)
    # False: the sampler couples the samples of a batch, so the batch composition (batch_size, seeds)
    # is part of the result; True: sample i is the same at any batch size.
    batch_invariant: bool = True
    device: str = "auto"
    timeout_s: float | None = None
    save_samples: int = 64
    threads: int | None = None
    accel: dict = field(default_factory=dict)
    shard_size: int | None = None  # a shard holds whole batches, so its size never changes a result
    seed_set: int = 0  # which of the grid's eval.seed_sets (its seeds say which samples: they are the identity)
    # Schedule 'gits': the σ values computed before dispatch (bench.gits_cache.resolve), or {'error': why};
    # not part of the identity (inputs['gits_schedule'], the cache key, is).
    schedule_table: dict = field(default_factory=dict)

    def identity(self) -> dict:
        from bench.metrics import METRICS

        uses_data = any(METRICS[m].reads_data for m in self.metrics)  # fd_*, exact metrics ship their references
        # Mixed precision changes the numbers; channels_last, compile and batch splitting do not.
        autocast = self.accel.get("autocast", "none")
        return ({"autocast": autocast} if autocast != "none" else {}) | (
                {"inputs": self.inputs} if self.inputs else {}) | (
                {"guidance": self.guidance} if self.guidance else {}) | (
                {} if self.batch_invariant else {"batch_invariant": False}) | {
                "model": self.model, "data": self.data if uses_data else {}, "solver": self.solver,
                "options": self.options, "T": self.T, "eps": self.eps, "prior": self.prior,
                "num_samples": self.num_samples, "batch_size": self.batch_size, "seeds": self.seeds,
                "dtype": self.dtype, "metrics": list(self.metrics), "likelihood": self.likelihood}

    @property
    def run_id(self) -> str:
        return hashlib.sha1(canonical(self.identity()).encode()).hexdigest()[:10]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        return cls(**{**d, "metrics": tuple(d["metrics"])})

    def replace(self, **changes) -> RunSpec:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class GridSpec:
    """A validated grid: its name, models, evaluation defaults and the expanded runs."""

    name: str
    path: str
    models: dict  # name -> model section
    data: dict
    eval: EvalSpec
    sweeps: tuple[dict, ...]
    runs: tuple[RunSpec, ...] = field(default_factory=tuple)
    model_facts: dict = field(default_factory=dict)  # name -> bench.kinds.ModelFacts, or None


# --- small checkers --------------------------------------------------------------------------
class _Where:
    """Builds error messages prefixed with the file and the entry."""

    def __init__(self, path: str, entry: str = "") -> None:
        self.path, self.entry = path, entry

    def at(self, entry: str) -> _Where:
        return _Where(self.path, entry)

    def error(self, msg: str) -> GridError:
        return GridError(f"{self.path}{' ' + self.entry if self.entry else ''}: {msg}")

    def keys(self, d: Any, valid: tuple[str, ...], what: str) -> dict:
        if not isinstance(d, dict):
            raise self.error(f"{what} must be a mapping, got {type(d).__name__} {d!r}")
        unknown = sorted(set(map(str, d)) - set(valid))
        if unknown:
            raise self.error(f"unknown key {unknown[0]!r} in {what}; expected one of: {', '.join(valid)}")
        return d

    def positive_int(self, name: str, v: Any, at_most: int | None = None) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise self.error(f"field {name!r} must be a positive integer, got {v!r}")
        if at_most is not None and v > at_most:
            raise self.error(f"field {name!r} must be at most {at_most:.0e}, got {v!r}")
        return v

    def name(self, field_name: str, v: Any) -> str:
        """A value that becomes part of a file name (bench.safety.check_name)."""
        from bench.safety import check_name

        why = check_name(v)
        if why is not None:
            raise self.error(f"field {field_name!r} {why}")
        return v

    def positive(self, name: str, v: Any) -> float:
        if not _is_number(v) or not v > 0 or not math.isfinite(v):
            hint = " (YAML reads 1e-5 as a string: write 1.0e-5)" if isinstance(v, str) else ""
            raise self.error(f"field {name!r} must be a positive number, got {v!r}{hint}")
        return v

    def choice(self, name: str, v: Any, choices) -> Any:
        if not isinstance(v, str) or v not in choices:
            raise self.error(f"invalid {name} {v!r}; expected one of: {', '.join(choices)}")
        return v


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _metrics(where: _Where, v: Any, what: str = "metrics") -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list | tuple) or not all(isinstance(m, str) for m in v):
        raise where.error(f"field {what!r} must be a list of metric names, got {v!r}")
    for m in v:
        where.choice("metric", m, _metric_names())  # the registry as it is now (a test may add an entry)
    return tuple(v)


def _seeds(where: _Where, v: Any, n: int) -> str:
    """The first ``n`` seeds as a range spec ('0-999', '0-9,20'): never expanded to a list."""
    if v is None:
        return f"0-{n - 1}"
    negative = any(p.strip().startswith("-") or "--" in p for p in v.split(",")) if isinstance(v, str) else \
        isinstance(v, int) and not isinstance(v, bool) and v < 0
    if negative:  # parse_seeds would read '-5-3' as a range with an empty bound
        raise where.error(f"field 'seeds' must be non-negative integers (like '0-999'), got {v!r}")
    try:
        seeds = SeedRanges.parse(v)
    except (TypeError, ValueError) as e:
        raise where.error(f"field 'seeds' must be like '0-999', an int or a list of ints, got {v!r} ({e})") from e
    if len(seeds) > MAX_SAMPLES:  # counted from the ranges: '0-999999999999' is never expanded
        raise where.error(f"field 'seeds' gives {len(seeds):.3g} seeds; at most {MAX_SAMPLES:.0e}, got {v!r}")
    ranges = sorted(seeds.ranges)
    if ranges and (ranges[0][0] < 0 or max(hi for _, hi in ranges) - 1 > MAX_SEED):
        raise where.error(f"field 'seeds' must be non-negative integers below 2^63, got {v!r}")
    for (_, hi), (lo, _) in zip(ranges, ranges[1:]):
        if lo < hi:  # sorted half-open ranges overlap: a seed given twice
            raise where.error(f"field 'seeds' repeats seed {lo} (each sample needs its own seed)")
    if len(seeds) < n:
        raise where.error(f"field 'seeds' gives {len(seeds)} seeds but num_samples is {n}")
    return str(seeds.head(n))


def _device(where: _Where, v: Any) -> str:
    ok = isinstance(v, str) and (v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()))
    if not ok:
        raise where.error(f"invalid device {v!r}; expected one of: auto, cpu, cuda, cuda:N")
    return v


def parse_eval(where: _Where, raw: dict, overrides: dict | None = None) -> EvalSpec:
    """Validate the eval section, applying CLI ``overrides`` (num_samples, batch_size, device)."""
    where = where.at("eval")
    raw = dict(where.keys(raw or {}, EVAL_KEYS, "eval"))
    for k, v in (overrides or {}).items():
        if v is not None:
            raw[k] = v
    d = {**DEFAULT_EVAL, **raw}
    n = where.positive_int("num_samples", d["num_samples"])  # bounded by bench.bounds (with the estimate)
    bs = where.positive_int("batch_size", d["batch_size"])
    seeds = _seeds(where, d["seeds"], n)
    timeout = d["timeout_s"]
    if timeout is not None:
        where.positive("timeout_s", timeout)
    save = d["save_samples"]
    if not isinstance(save, int) or isinstance(save, bool) or save < 0:
        raise where.error(f"field 'save_samples' must be an integer >= 0, got {save!r}")
    threads = d["threads"]
    if threads is not None:
        where.positive_int("threads", threads)
    if d["shard_size"] is not None:
        where.positive_int("shard_size", d["shard_size"])
    k = where.positive_int("seed_sets", d["seed_sets"], at_most=MAX_SEED_SETS)
    if k > 1 and max(hi for _, hi in SeedRanges.parse(seeds).seed_sets(k)[-1].ranges) - 1 > MAX_SEED:
        raise where.error(f"field 'seed_sets' {k} shifts seeds {seeds!r} beyond 2^63 - 1")
    return EvalSpec(num_samples=n, batch_size=bs, seeds=seeds, device=_device(where, d["device"]),
                    dtype=where.choice("dtype", d["dtype"], DTYPES), metrics=_metrics(where, d["metrics"]),
                    timeout_s=timeout, save_samples=save, threads=threads, accel=_accel(where, d["accel"]),
                    shard_size=d["shard_size"], seed_sets=k)


def _accel(where: _Where, raw: Any) -> dict:
    """The eval section's ``accel`` mapping (GPU paths), validated."""
    if raw is None:
        return {}
    accel = dict(where.keys(raw, ACCEL_KEYS, "accel"))
    if "autocast" in accel:
        where.choice("autocast", accel["autocast"], AUTOCAST)
    for key in ("channels_last", "compile"):
        if key in accel and not isinstance(accel[key], bool):
            raise where.error(f"field {key!r} must be true or false, got {accel[key]!r}")
    if accel.get("max_batch") is not None:
        where.positive_int("max_batch", accel["max_batch"])
    return accel


def _parse_data(where: _Where, raw: Any) -> dict:
    from bench.metrics import METRICS

    d = dict(where.keys(raw or {}, (*DATA_KEYS, *(k for e in METRICS.values() for k in e.keys)), "data"))
    for entry in METRICS.values():
        try:
            entry.check(d)
        except ValueError as e:
            raise where.error(str(e)) from e
    for k in ("bpd_samples", "bpd_batch_size", "bpd_repeats", "res"):
        if k in d:
            where.positive_int(k, d[k])
    for k in ("dataset", "root", "split", "fid_split", "mode", "ref_path", "inception"):
        if k in d and not isinstance(d[k], str):
            raise where.error(f"field {k!r} must be a string, got {d[k]!r}")
    for k in ("split", "fid_split"):  # part of reference-statistics file names
        if k in d:
            where.name(k, d[k])
    if "mode" in d:
        from bench.metrics.assets import MODES

        where.choice("mode", d["mode"], MODES)
    if "dataset" in d:
        from models.datasets import DATASETS

        where.choice("dataset", d["dataset"], tuple(DATASETS))
    return d


def _parse_models(where: _Where, raw: dict, top_data: dict, files: bool = True) -> dict:
    from bench.kinds import MODEL_KINDS, check_model_section

    if ("model" in raw) == ("models" in raw):
        raise where.error("give exactly one of 'model' (one model) or 'models' (name -> model)")
    if "model" in raw:
        section = raw["model"]
        if not isinstance(section, dict):
            raise where.at("model").error(f"must be a mapping, got {section!r}")
        sections = {str(section.get("name") or "model"): section}
    else:
        sections = raw["models"]
        if not isinstance(sections, dict) or not sections:
            raise where.at("models").error("must be a non-empty mapping of name -> model section")
    out = {}
    for name, section in sections.items():
        w = where.at(f"models.{name}" if "models" in raw else "model")
        w.name("model name" if "models" in raw else "name", str(name))  # it names plot files
        if not isinstance(section, dict):
            raise w.error(f"must be a mapping, got {section!r}")
        kind = w.choice("model kind", section.get("kind"), tuple(MODEL_KINDS))
        own = MODEL_KINDS[kind].keys
        w.keys(section, (*MODEL_KEYS, *own), f"model section (kind {kind!r})")
        section = dict(section)
        section.pop("name", None)
        if "metrics" in section:
            section["metrics"] = list(_metrics(w, section["metrics"]))
        section["data"] = {**top_data, **_parse_data(w, section.get("data"))}
        try:
            section = check_model_section(section, files)
        except (TypeError, ValueError, FileNotFoundError) as e:
            raise w.error(" ".join(str(e).split())) from e
        out[str(name)] = section
    return out


def _check_prompt_counts(where: _Where, models: dict, num_samples: int, named: bool) -> None:
    """A prompts file with ``pick: index`` needs one prompt per sample (bench.prompts)."""
    from bench.prompts import check_enough

    for name, section in models.items():
        if isinstance(section.get("prompts"), dict):
            try:
                check_enough(section["prompts"], num_samples)
            except ValueError as e:
                raise where.at(f"models.{name}" if named else "model").error(str(e)) from e


def _model_facts(where: _Where, models: dict, files: bool) -> dict:
    """name -> bench.kinds.ModelFacts (shape, SDE) where known without loading a network."""
    from bench.kinds import describe_model

    facts = {}
    for name, section in models.items():
        try:
            facts[name] = describe_model({k: v for k, v in section.items() if k not in ("metrics", "data")}, files)
        except (TypeError, ValueError, KeyError) as e:
            raise where.at(f"models.{name}").error(" ".join(str(e).split())) from e
    return facts


def _metric_applies(metric: str, kind: str, shape: tuple[int, ...] | None, conditional: bool) -> str | None:
    """Why ``metric`` cannot apply to a model of ``kind`` with samples of ``shape``, or None (its registry entry)."""
    from bench.metrics import METRICS

    return METRICS[metric].applies(kind, None if shape is None else tuple(shape), conditional)


def _parse_prior(where: _Where, v: Any) -> dict:
    """A sweep entry's ``prior`` (see bench/priors.py for the kinds)."""
    from bench.priors import PRIOR_KEYS, PRIOR_KINDS

    if v is None:
        return {"kind": "gaussian"}
    if isinstance(v, str):
        return {"kind": where.choice("prior", v, PRIOR_KINDS)}
    d = dict(where.keys(v, ("kind", *sorted({k for keys in PRIOR_KEYS.values() for k in keys})), "prior"))
    d.setdefault("kind", "gaussian")
    kind = where.choice("prior kind", d["kind"], PRIOR_KINDS)
    where.keys({k: d[k] for k in d if k != "kind"}, PRIOR_KEYS[kind], f"prior of kind {kind!r}")
    if "std" in d:
        where.positive("prior.std", d["std"])
    if "mean" in d and not _is_number(d["mean"]):
        raise where.error(f"field 'prior.mean' must be a number, got {d['mean']!r}")
    if "variant" in d:
        where.choice("prior.variant", d["variant"], ("sde", "paper"))
    if "covariance" in d:
        where.choice("prior.covariance", d["covariance"], ("full", "diag"))
    for key in ("steps", "num_data", "copies"):
        if key in d:
            where.positive_int(f"prior.{key}", d[key], at_most=MAX_STEPS if key == "steps" else MAX_SAMPLES)
    if kind == "file":
        if not isinstance(d.get("path"), str):
            raise where.error("prior of kind 'file' needs a 'path'")
        from bench.kinds.base import resolve_path

        found = resolve_path(d["path"])
        if found is None:
            raise where.error(f"prior file {d['path']!r} not found (write one with models.fitted_priors.save_prior)")
        from models.fitted_priors import load_prior

        try:  # a weights_only load of a small file: an empty or foreign file is refused before anything runs
            load_prior(found)
        except Exception as e:
            raise where.error(f"field 'prior.path': {found} is not a readable prior file "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
    return d


def _parse_likelihood(where: _Where, v: Any) -> dict:
    """Options of :class:`solvers.ProbabilityFlowLikelihood` for the 'bpd' metric (validated)."""
    if v is None:
        return {}
    import dataclasses as dc

    from solvers.likelihood import ProbabilityFlowLikelihood

    valid = tuple(sorted(f.name for f in dc.fields(ProbabilityFlowLikelihood)))
    d = dict(where.keys(v, valid, "likelihood"))
    for k in ("rtol", "atol", "eps"):
        if k in d:
            where.positive(f"likelihood.{k}", d[k])
    try:
        ProbabilityFlowLikelihood(**d)
    except (TypeError, ValueError) as e:
        raise where.error(f"likelihood: {e}") from e
    return d


def _check_time(where: _Where, T: Any, eps: Any) -> None:
    if eps is not None:
        where.positive("eps", eps)
    if T is not None:
        if not _is_number(T):
            raise where.error(f"field 'T' must be a number in (eps, 1], got {T!r}")
        lo = eps if eps is not None else 0.0
        if not (lo < T <= 1.0):
            raise where.error(f"field 'T' must be in (eps={lo:g}, 1], got {T!r}")


def _check_run_time(where: _Where, name: str, sde, T: Any, eps: Any) -> None:
    """``T`` and ``eps`` against the SDE of model ``name``: eps < T <= the SDE's T, as the run's SDE needs."""
    T_run = sde.T if T is None else float(T)
    eps_run = sde.eps if eps is None else float(eps)
    if not eps_run < T_run:
        if T is None:
            raise where.error(f"field 'eps' must be below T={sde.T:g} (model {name!r}), got {eps!r}")
        src = f"eps={eps_run:g}" if eps is not None else f"the SDE's default eps={sde.eps:g} (model {name!r})"
        raise where.error(f"field 'T' must be above {src}, got {T!r}; set a smaller 'eps' or a larger 'T'")
    if T_run > sde.T:
        raise where.error(f"field 'T' must be at most the SDE's T={sde.T:g} (model {name!r}), got {T!r}")


def _check_path(where: _Where, name: str, solver: str, sampler, sde, T: Any, eps: Any) -> None:
    """The sampler against the run's path (solvers.requirements): one line naming the reason."""
    from solvers.requirements import refusal

    changes = {k: float(v) for k, v in (("T", T), ("eps", eps)) if v is not None}
    try:
        path = dataclasses.replace(sde, **changes) if changes else sde
    except ValueError as e:
        raise where.error(f"model {name!r}: {e}") from e
    why = refusal(sampler, path)
    if why is not None:
        raise where.error(f"solver {solver!r} cannot run on model {name!r}: {why}")


def _guidance_cells(where: _Where, v: Any) -> list:
    """A ``guidance`` value as the list of its cells: one mapping, or a list of them, each expanded over
    its own list-valued keys (``scale: [1, 2, 4]`` is an axis like any list-valued sweep key)."""
    out = []
    for g in v if isinstance(v, list) else [v]:
        if not isinstance(g, dict):
            out.append(g)  # refused with its reason by _parse_guidance
            continue
        axes = {k: x for k, x in g.items() if isinstance(x, list)}
        for k, x in axes.items():
            if not x:
                raise where.error(f"field 'guidance.{k}' is an empty list")
        out += [{**g, **dict(zip(axes, combo))} for combo in itertools.product(*axes.values())]
    return out


def _is_axis(key: str, v: Any) -> bool:
    """Whether a sweep entry's value is an axis: a list, except ``metrics`` and a σ table given as one flat
    list of numbers (``sigmas: [80, 10, 1, 0.002]``; a list of tables or table names is an axis)."""
    if not isinstance(v, list) or key == "metrics":
        return False
    return not (key in LIST_OPTIONS and v and all(_is_number(x) for x in v))


def expand_entry(where: _Where, entry: dict) -> list[dict]:
    """The cartesian product of an entry's list-valued keys (:func:`_is_axis`; a ``guidance`` mapping's
    list-valued keys are axes too: :func:`_guidance_cells`)."""
    if "guidance" in entry:
        entry = {**entry, "guidance": _guidance_cells(where, entry["guidance"])}
    axes = {k: v for k, v in entry.items() if _is_axis(k, v)}
    for k, v in axes.items():
        if not v:
            raise where.error(f"field {k!r} is an empty list")
    fixed = {k: v for k, v in entry.items() if k not in axes}
    cells = []
    for combo in itertools.product(*axes.values()):
        cells.append({**fixed, **dict(zip(axes, combo))})
    return cells


def guidance_label(g: dict | None) -> str:
    """A run's guidance in a few characters ('' unguided): 'cfg w=2', 'interval w=2 σ∈(0.1,2]',
    'autoguidance w=2 guide=xs', 'cfg w=1.4 uncond=xs_uncond', 'classifier s=1'."""
    if not g:
        return ""
    kind = g["kind"]
    text = f"{kind} {'s' if kind == 'classifier' else 'w'}={g['scale']:g}"
    if kind == "interval":
        text += f" σ∈({g['sigma_lo']:g},{g['sigma_hi']:g}]"
    if g.get("guide"):
        text += f" {'guide' if kind == 'autoguidance' else 'uncond'}={g['guide']}"
    return text


def _conditional(section: dict) -> bool:
    """Whether a model section asks for conditioned samples (class labels, or text prompts)."""
    return section.get("label") is not None or section.get("prompts") is not None


def _parse_guidance(where: _Where, v: Any, name: str, models: dict, facts: dict | None) -> dict:
    """A run's ``guidance`` for model ``name``, validated (:mod:`models.guidance`): the canonical dict
    {kind, scale[, sigma_lo, sigma_hi][, guide, guide_model]} (empty: unguided)."""
    from bench.kinds import MODEL_KINDS
    from models.guidance import GUIDANCE_KINDS
    from models.sde import sde_to_dict

    if v is None:
        return {}
    g = dict(where.keys(v, GUIDANCE_KEYS, "guidance"))
    kind = where.choice("guidance kind", g.get("kind"), GUIDANCE_KINDS)
    scale = g.get("scale")
    if not _is_number(scale) or not 0 <= scale < math.inf:
        raise where.error(f"field 'guidance.scale' must be a number >= 0, got {scale!r}")
    out = {"kind": kind, "scale": float(scale)}
    section = models[name]
    if kind == "interval":
        for k in ("sigma_lo", "sigma_hi"):
            if not _is_number(g.get(k)) or not 0 <= g[k] < math.inf:
                raise where.error(f"field 'guidance.{k}' must be a number >= 0 (guidance kind 'interval'), "
                                  f"got {g.get(k)!r}")
        if not g["sigma_lo"] < g["sigma_hi"]:
            raise where.error(f"guidance interval: sigma_lo ({g['sigma_lo']!r}) must be below sigma_hi "
                              f"({g['sigma_hi']!r})")
        out.update(sigma_lo=float(g["sigma_lo"]), sigma_hi=float(g["sigma_hi"]))
    elif "sigma_lo" in g or "sigma_hi" in g:
        raise where.error(f"fields 'guidance.sigma_lo'/'sigma_hi' belong to guidance kind 'interval', not {kind!r}")
    if kind == "autoguidance" and g.get("guide") is None:
        raise where.error(f"guidance kind 'autoguidance' needs 'guide': another model of the grid; expected one of: "
                          f"{', '.join(m for m in models if m != name)}")
    if kind == "classifier":
        if "guide" in g:
            raise where.error("guidance kind 'classifier' takes no 'guide' (the classifier is the model section's)")
        if section["kind"] != "adm" or not isinstance(section.get("classifier"), dict):
            raise where.error(f"guidance kind 'classifier' needs an adm model with a 'classifier' section; model "
                              f"{name!r} (kind {section['kind']!r}) has none")
    if kind != "autoguidance" and not _conditional(section):
        raise where.error(f"guidance kind {kind!r} needs a conditional model; model {name!r} is unconditional "
                          f"(no 'label' or 'prompts')")
    guide = g.get("guide")
    if guide is not None:
        if not isinstance(guide, str) or guide not in models or guide == name:
            raise where.error(f"field 'guidance.guide' must name another model of the grid's models section; "
                              f"got {guide!r}, expected one of: {', '.join(m for m in models if m != name)}")
        gsec = models[guide]
        if kind in ("cfg", "interval") and _conditional(gsec):
            raise where.error(f"guidance kind {kind!r}: guide {guide!r} stands for the unconditional branch and must "
                              f"be unconditional (no 'label'); a conditional guide is kind 'autoguidance'")
        if kind == "autoguidance" and _conditional(gsec) and not _conditional(section):
            raise where.error(f"guidance kind 'autoguidance': guide {guide!r} is conditional but model {name!r} "
                              f"is not")
        main, other = (facts or {}).get(name), (facts or {}).get(guide)
        if main is not None and other is not None:
            if tuple(main.sample_shape) != tuple(other.sample_shape):
                raise where.error(f"guide {guide!r} draws samples of shape {list(other.sample_shape)}, model "
                                  f"{name!r} of {list(main.sample_shape)}; expected equal")
            if sde_to_dict(main.sde) != sde_to_dict(other.sde):
                raise where.error(f"guide {guide!r} is on another path than model {name!r} "
                                  f"({sde_to_dict(other.sde)} vs {sde_to_dict(main.sde)}); expected the same")
        out.update(guide=guide, guide_model={k: x for k, x in gsec.items() if k not in ("metrics", "data", "label")})
    if kind in ("cfg", "interval") and guide is None and not MODEL_KINDS[section["kind"]].null_condition:
        raise where.error(f"guidance kind {kind!r} on model {name!r}: a {section['kind']} network has no null "
                          f"condition it was trained with; give 'guide': an unconditional model of the grid (EDM2's "
                          f"CFG guides by an unconditional network)")
    return out


def _run_from_cell(where: _Where, grid: str, i: int, cell: dict, models: dict, ev: EvalSpec,
                   facts: dict | None = None) -> list[RunSpec]:
    solver = cell.get("solver")
    if solver is None:
        raise where.error(f"missing field 'solver'; expected one of: {', '.join(SAMPLERS)}")
    if isinstance(solver, str) and ":" in solver:  # a user's sampler class, "package.module:Class"
        try:
            sampler_class(solver)
        except ValueError as e:
            raise where.error(str(e)) from e
    else:
        where.choice("solver", solver, tuple(SAMPLERS))
    options = {k: v for k, v in cell.items() if k not in RUN_KEYS}
    valid = sampler_options(solver)
    for k, v in options.items():
        if k not in valid:
            raise where.error(f"unknown option {k!r} for solver {solver!r}; expected one of: {', '.join(valid)}")
        if k in POSITIVE_OPTIONS and v is not None:
            if k in ("n_steps", "steps_per_level", "corrector_steps", "max_steps", "nfe_budget"):
                where.positive_int(k, v, at_most=MAX_STEPS if k in COUNT_OPTIONS else None)
            else:
                where.positive(k, v)
        if k in COUNT_OPTIONS and _is_number(v) and v > MAX_STEPS:
            where.positive_int(k, v, at_most=MAX_STEPS)
    if options.get("schedule") == "gits" and options.get("sigmas") is not None:
        raise where.error("field 'sigmas' cannot be given with schedule 'gits': GITS computes its σ values per model "
                          "(bench.gits_cache); use schedule 'table' for a σ table of your own")
    try:
        sampler = make_sampler(solver, **options)
        batch_invariant = bool(declared(sampler)["batch_invariant"])
    except (TypeError, ValueError) as e:
        raise where.error(f"solver {solver!r}: {e}") from e
    T, eps = cell.get("T"), cell.get("eps")
    _check_time(where, T, eps)
    step_rule = cell.get("step_rule")
    if step_rule is not None:
        from models.fitted_priors import steps_for_T

        where.choice("step_rule", step_rule, ("fixed_dt", "fixed_steps"))
        if "n_steps" not in options:
            raise where.error(f"step_rule needs a fixed-step solver with n_steps (solver {solver!r})")
        # fixed_dt: n_steps names the count at T = 1, the run takes ∝ T of them (Δt kept).
        options = {**options, "n_steps": steps_for_T(options["n_steps"], float(T or 1.0), step_rule)}
    prior = _parse_prior(where, cell.get("prior"))
    likelihood = _parse_likelihood(where, cell.get("likelihood"))
    names = cell.get("model", list(models))
    names = [names] if isinstance(names, str) else names
    runs = []
    for name in names:
        if name not in models:
            raise where.error(f"unknown model {name!r}; expected one of: {', '.join(models)}")
        section = models[name]
        if "metrics" in cell:
            metrics = _metrics(where, cell["metrics"])
        elif "metrics" in section:
            metrics = tuple(section["metrics"])
        else:
            metrics = ev.metrics
        model = {k: v for k, v in section.items() if k not in ("metrics", "data")}
        guidance = _parse_guidance(where, cell.get("guidance"), name, models, facts)
        fact = (facts or {}).get(name)
        if fact is not None:
            _check_run_time(where, name, fact.sde, T, eps)
            _check_path(where, name, solver, sampler, fact.sde, T, eps)
        for m in metrics:
            why = _metric_applies(m, model["kind"], None if fact is None else fact.shape,
                                  "text" if "prompts" in model else model.get("label") is not None)
            if why is not None:
                raise where.error(f"metric {m!r} cannot apply to model {name!r}: {why}")
        runs.append(RunSpec(grid=grid, entry=i, model_name=name, model=model, data=section["data"], solver=solver,
                            options=options, T=None if T is None else float(T),
                            eps=None if eps is None else float(eps), prior=prior, num_samples=ev.num_samples,
                            batch_size=ev.batch_size, seeds=ev.seeds, dtype=ev.dtype, metrics=metrics,
                            likelihood=likelihood if "bpd" in metrics else {}, device=ev.device, guidance=guidance,
                            batch_invariant=batch_invariant,
                            timeout_s=ev.timeout_s, save_samples=ev.save_samples,
                            threads=ev.threads, accel=ev.accel, shard_size=ev.shard_size))
    if ev.seed_sets > 1:  # each cell again on disjoint seed sets (EDM: 0-49999, 50000-99999, 100000-149999)
        sets = [str(s) for s in SeedRanges.parse(ev.seeds).seed_sets(ev.seed_sets)]
        runs = [run.replace(seeds=seeds, seed_set=j) for run in runs for j, seeds in enumerate(sets)
                if j == 0 or set(run.metrics) != {"bpd"}]  # bits/dim draws no samples: one run
    return runs


def expand(spec: GridSpec) -> tuple[RunSpec, ...]:
    """All runs of a grid, in sweep order, duplicates (same run_id) dropped."""
    where = _Where(spec.path)
    runs, seen = [], set()
    for i, entry in enumerate(spec.sweeps):
        w = where.at(f"sweeps[{i}]")
        for cell in expand_entry(w, entry):
            for run in _run_from_cell(w, spec.name, i, cell, spec.models, spec.eval, spec.model_facts):
                if run.run_id not in seen:
                    seen.add(run.run_id)
                    runs.append(run)
    return tuple(runs)


def parse_grid(raw: Any, path: str = "<grid>", overrides: dict | None = None, files: bool = True) -> GridSpec:
    """Validate a grid already read from YAML and expand it.

    Args:
        raw: the YAML document.
        path: the file name used in error messages.
        overrides: CLI overrides of the eval section (num_samples, batch_size, device).
        files: check that model files exist (off for ``--dry-run``).

    Raises:
        GridError: anything invalid, with file, entry, field and the valid choices.
    """
    where = _Where(path)
    where.keys(raw, TOP_KEYS, "the grid")
    name = raw.get("name")
    where.name("name", name)  # the default results folder is results/<name>
    eval_raw = dict(raw.get("eval") or {})
    if "metrics" in raw:
        eval_raw.setdefault("metrics", raw["metrics"])
    ev = parse_eval(where, eval_raw, overrides)
    data = _parse_data(where.at("data"), raw.get("data"))
    models = _parse_models(where, raw, data, files)
    if files:
        _check_prompt_counts(where, models, ev.num_samples, "models" in raw)
    sweeps = raw.get("sweeps")
    if not isinstance(sweeps, list) or not sweeps:
        raise where.at("sweeps").error("must be a non-empty list of sweep entries")
    for i, entry in enumerate(sweeps):
        if not isinstance(entry, dict):
            raise where.at(f"sweeps[{i}]").error(f"must be a mapping, got {entry!r}")
    spec = GridSpec(name=name, path=path, models=models, data=data, eval=ev, sweeps=tuple(sweeps),
                    model_facts=_model_facts(where, models, files))
    return dataclasses.replace(spec, runs=_with_inputs(expand(spec), spec.model_facts))


def _with_inputs(runs: tuple[RunSpec, ...], facts: dict) -> tuple[RunSpec, ...]:
    """Each run with the content hashes of the files it reads (bench.hashing; once per file)."""
    from bench.gits_cache import gits_key
    from bench.hashing import run_inputs

    out, seen = [], set()
    for run in runs:
        fact = facts.get(run.model_name)
        inputs = run_inputs(run.model, run.data, run.prior, run.metrics, None if fact is None else fact.shape)
        key = gits_key(run, inputs)  # schedule 'gits': its cache key (model files, options, seeds, teacher)
        if key is not None:
            inputs["gits_schedule"] = key
        if run.guidance.get("guide_model"):  # the guide network's files are part of the run's identity
            inputs |= {f"guide:{role}": sha for role, sha in
                       run_inputs(run.guidance["guide_model"], {}, {"kind": "gaussian"}, ()).items()}
        run = run.replace(inputs=dict(sorted(inputs.items())))
        if run.run_id not in seen:
            seen.add(run.run_id)
            out.append(run)
    return tuple(out)


def load_grid(path: str | Path, overrides: dict | None = None, files: bool = True) -> GridSpec:
    """Read, validate and expand a grid file (see :func:`parse_grid`)."""
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise GridError(f"{shown}: grid file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GridError(f"{shown}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        f"save the grid as UTF-8 YAML") from e
    except OSError as e:
        raise GridError(f"{shown}: cannot read the grid file ({e.strerror})") from e
    try:
        raw = yaml.load(text, Loader=_GridLoader)  # noqa: S506  (a SafeLoader)
    except _DuplicateKey as e:
        raise GridError(f"{shown}: duplicate key {e.key!r} at {e.at} (first at {e.first}); YAML would keep only "
                        f"the last value: remove one") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise GridError(f"{shown}: malformed YAML{at}: {problem}") from e
    if not isinstance(raw, dict):
        raise GridError(f"{shown}: the grid must be a YAML mapping, got {type(raw).__name__}")
    return parse_grid(raw, shown, overrides, files)
