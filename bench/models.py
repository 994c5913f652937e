"""A loaded model as a run uses it: loading once per process (:func:`load_score_model`, from the
registry of model kinds :data:`bench.kinds.MODEL_KINDS`), the run's path (:class:`RunScore`,
:func:`run_sde`), per-batch class labels (:func:`batch_labels`) and the eval section's GPU paths
(:func:`accelerate`).

Models are loaded label-free (the section's ``label`` is not part of the cache key);
:func:`batch_labels` gives each batch its labels and the executor conditions the run's problem on
them (``Problem.conditioned``).
"""

from __future__ import annotations

import dataclasses

import torch

from bench.kinds import MODEL_KINDS, model_files
from bench.kinds.base import RANDOM_LABEL, check_label

__all__ = ["load_score_model", "batch_labels", "RunScore", "run_sde", "accelerate", "run_model", "DTYPES"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def _file_state(section: dict) -> tuple:
    """(path, size, mtime) of each file the section reads, so a replaced file is never served from the
    cache (a folder: of each file in it)."""
    state = []
    for path in model_files(section).values():
        for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            st = f.stat()
            state.append((str(f.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(state)


def batch_labels(section: dict, model, seeds) -> torch.Tensor | None:
    """The class labels [B] int64 of a batch of ``seeds`` for the section's ``label`` (None without one):
    a fixed class for every sample, or ``'random'``: :func:`solvers.noise.seed_labels`, a function of
    each seed alone. Checked against the loaded model's ``label_dim`` (ValueError as at grid load)."""
    from solvers.noise import seed_labels

    label_dim = int(getattr(model, "label_dim", 0) or 0)
    check_label(section, label_dim, f"the {section['kind']} model")
    label = section.get("label")
    if label is None:
        return None
    if label == RANDOM_LABEL:
        return seed_labels(seeds, label_dim)
    return torch.full((len(seeds),), int(label), dtype=torch.int64)


def load_score_model(section: dict, device: str = "cpu", dtype: str = "float32"):
    """Load (once per process) the model of a section, on ``device`` in ``dtype``; label- and prompt-free (the
    section's ``label`` is applied per batch, :func:`batch_labels`; its ``prompts`` per shard,
    :func:`bench.latent.encode_shard_prompts`)."""
    from bench.records import canonical

    section = {k: v for k, v in section.items() if k not in ("label", "prompts")}  # applied per shard / batch
    key = (canonical(section), _file_state(section), str(device), dtype)
    if key not in _CACHE:
        if len(_CACHE) >= 2:  # a worker keeps at most two models in memory
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = MODEL_KINDS[section["kind"]].load(section, str(device), DTYPES[dtype])
    return _CACHE[key]


def run_model(run, device: str, tally):
    """The model a run samples: loaded (cached), accelerated, every network counted in ``tally``
    (:class:`models.tally.CountedModel`: 'denoiser', 'guide'; an ADM classifier's forward and backward),
    and guided as ``run.guidance`` says (:func:`models.guidance.make_guidance`; the guide model loaded,
    cached, beside the main one). One call of the result is one guided denoiser evaluation (one NFE)."""
    from models.guidance import make_guidance
    from models.tally import CountedModel

    g = run.guidance or {}
    base = load_score_model(run.model, device, run.dtype)
    if callable(getattr(base, "counted", None)):  # an ADM model with its guiding classifier
        if g.get("kind") == "classifier":
            base = make_guidance("classifier", base, g["scale"])
        return accelerate(base.counted(tally), run.accel)
    model = CountedModel(accelerate(base, run.accel), tally, "denoiser")
    if not g:
        return model
    guide = None
    if g.get("guide_model"):
        guide_base = load_score_model(g["guide_model"], device, run.dtype)
        guide = CountedModel(accelerate(guide_base, run.accel), tally, "guide")
    return make_guidance(g["kind"], model, g["scale"], guide=guide, sigma_lo=g.get("sigma_lo"),
                         sigma_hi=g.get("sigma_hi"))
