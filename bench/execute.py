"""The body of one shard: load the model (cached per worker), draw the shard's samples batch by
batch with one seeded generator per sample, update the metric accumulators, and return the shard's
state (see :mod:`bench.shards`) — failures included, as a state with ``status`` and ``message``.
A class-conditional model's ``label`` is applied per batch: the sampler solves the run's problem
conditioned on the batch's labels (:func:`bench.models.batch_labels`), and the labels of the kept
samples are returned beside them (``sample_labels``).

:func:`execute_shard` never raises for a failing shard: non-finite samples and solver failures stop
at the failing batch (``status`` from the solver), a timeout, out of memory (CUDA, ``MemoryError``,
``std::bad_alloc``: status ``oom``, with what was being allocated) and any exception become the
status. :func:`execute_run` runs every shard of a run in this process and merges them: a whole run,
as :mod:`bench.run` executed before shards.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import socket
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.grid import RunSpec
from bench.latent import decode, encode_shard_prompts, image_view
from bench.models import DTYPES, RunScore, batch_labels, load_score_model, run_model, run_sde
from bench.prompts import read_prompts
from bench.records import canonical, now
from bench.seeds import SeedRanges
from bench.shard_state import ShardState
from bench.shards import BPD, Shard, merge_record, run_shards, shard_state
from models.conditions import take_rows
from models.tally import Tally

__all__ = ["execute_shard", "execute_unit", "execute_run", "merge_states", "merge_or_fail", "build_metrics",
           "resolve_device", "RunTimeout"]


class RunTimeout(Exception):
    """A run went past its ``timeout_s`` (checked between batches)."""



def _classifier_counts(model) -> tuple[int, int] | None:
    """(calls, rows) of the model's guiding classifier so far (models.adm.guidance), None without one."""
    calls = getattr(model, "classifier_nfe", None)
    return None if calls is None else (int(calls), int(model.classifier_rows))


def schedule_options(run: RunSpec) -> dict:
    """The run's solver options, with schedule 'gits' given the σ values computed before dispatch
    (bench.gits_cache.resolve); ValueError with the reason where they could not be computed."""
    table = run.schedule_table
    if "error" in table:
        raise ValueError(table["error"])
    return {**run.options, "sigmas": tuple(table["sigmas"])} if "sigmas" in table else run.options


def schedule_record(sampler, sde) -> dict | None:
    """The record's ``schedule``: name, parameters and the σ values of a fixed grid
    (:meth:`solvers.fixed.FixedSteps.schedule_record`); None for adaptive and self-contained samplers."""
    from solvers import FixedSteps

    controller = getattr(sampler, "controller", None)
    return controller.schedule_record(sde) if isinstance(controller, FixedSteps) else None


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def build_metrics(run: RunSpec, model, device: str) -> dict:
    """Fresh accumulators of the run's sample metrics (``bpd`` is its own shard), from their registry entries."""
    from bench.metrics import METRICS, RunFacts

    facts = RunFacts(data=run.data, seeds=run.seeds, device=device, model=model)
    return {m: METRICS[m].make(facts) for m in run.metrics if METRICS[m].per_sample}


def _peak_memory(device: str) -> tuple[float, str]:
    """(peak memory in MiB, what was measured)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS (cpu)"  # KiB on Linux


def _oom_message(kind: str, e: BaseException, phase: str) -> str:
    return f"{kind} while {phase}: {' '.join(str(e).split())[:500]}"


def execute_shard(run: RunSpec, shard: Shard, budget_s: float | None = None, progress: bool | None = False) -> dict:
    """Compute one shard of ``run`` and return its state (a :class:`~bench.shard_state.ShardState` as its
    dict); never raises for a failing shard.

    Args:
        run: the run.
        shard: which of its shards (:func:`bench.shards.run_shards`).
        budget_s: seconds left of the run's ``timeout_s`` (None: no limit).
        progress: a tqdm bar over the shard's batches (None: automatic).
    """
    from tqdm.auto import tqdm

    from bench.priors import build_prior
    from models.sde import sde_to_dict
    from solvers import Problem, SeededNoise, Status, make_sampler, sampler_config

    device = resolve_device(run.device)
    dtype = DTYPES[run.dtype]
    state = ShardState(created=now(), worker=f"{socket.gethostname()}:{os.getpid()}",
                       info={"device": device, "threads": torch.get_num_threads()})
    kept: list[torch.Tensor] = []
    kept_labels: list[torch.Tensor] = []
    t_start = time.perf_counter()
    sampling_s = metric_s = 0.0
    peak_mb = 0.0  # CUDA peak before a decode resets the statistics
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)
    model = None
    phase = f"loading model {run.model_name!r}"
    try:
        tally = Tally()
        model = run_model(run, device, tally)
        sde = run_sde(model, run.T, run.eps)
        info = state.info
        info.update(sde=sde_to_dict(sde), device_name=device_name(device), data_range=list(model.data_range),
                    shape=list(model.shape))
        base = load_score_model(run.model, device, run.dtype)  # the loaded model (cached): its encoder, its VAE
        latent = getattr(base, "decoder", None) is not None
        own = getattr(base, "tally", None)  # text encoder and VAE decoder calls
        own0 = own.snapshot() if own is not None else {}
        if latent:  # the metrics and saved samples are the decoded images
            info.update(shape=list(base.image_shape), latent_shape=list(base.shape), data_range=[-1.0, 1.0],
                        decode={"vae": "diffusers AutoencoderKL", "decode_batch": base.decoder.chunk})
        phase = "building the prior"
        prior = build_prior(run.prior, model, sde, run.data, device, model_key=canonical(run.model))
        info["prior_class"] = type(prior).__name__
        if run.prior.get("kind") == "oracle":
            info["prior_note"] = "ORACLE prior: held-out data diffused to T (uses data)"
        problem = Problem(RunScore(model, sde), prior)
        if run.guidance:
            info["guidance"] = {k: v for k, v in run.guidance.items() if k != "guide_model"}
        if run.model.get("label") is not None:
            info["labels"] = {"label": run.model["label"], "label_dim": int(getattr(model, "label_dim", 0) or 0),
                              "seed_to_label": "solvers.noise.seed_labels" if run.model["label"] == "random"
                              else "fixed"}
        phase = "building the sampler"
        sampler = make_sampler(run.solver, **schedule_options(run))
        info["sampler"] = sampler_config(sampler)
        info["schedule"] = schedule_record(sampler, sde)
        if shard.index == BPD:
            from bench.dataset_bpd import dataset_bpd

            phase = "computing bits/dim of the dataset"
            t0 = time.perf_counter()
            value, protocol = dataset_bpd(run, problem, device, dtype)
            metric_s += time.perf_counter() - t0
            state.bpd_value, state.bpd_protocol, state.status = value, protocol, "ok"
        else:
            phase = "building the metrics"
            metrics = build_metrics(run, image_view(base) if latent else model, device)
            seeds = SeedRanges.parse(run.seeds)
            text = None
            if "prompts" in run.model:  # encoded once for the shard; each batch takes its rows
                phase = f"encoding the prompts of samples {shard.start}-{shard.stop - 1}"
                text, prompt_idx, state.text_encode_time_s = encode_shard_prompts(
                    run.model["prompts"], base, range(shard.start, shard.stop),
                    seeds.slice(shard.start, shard.stop), run.batch_size, device)
                info["prompts"] = {**run.model["prompts"], "first_prompt_indices": prompt_idx[:8]}
                texts = read_prompts(run.model["prompts"])
                shard_prompts = [texts[i] for i in prompt_idx]
            starts = range(shard.start, shard.stop, run.batch_size)
            first_batch = shard.start // run.batch_size
            n_batches = math.ceil(run.num_samples / run.batch_size)
            bar = tqdm(starts, desc=f"{shard}", unit="batch", leave=False, position=1,
                       disable=progress is False if progress is not None else None)
            for j, lo in enumerate(bar):
                if budget_s is not None and time.perf_counter() - t_start > budget_s:
                    raise RunTimeout(f"timeout: {time.perf_counter() - t_start:.1f}s > timeout_s={run.timeout_s} "
                                     f"after {first_batch + j} of {n_batches} batches")
                batch_seeds = seeds.slice(lo, min(lo + run.batch_size, shard.stop))
                B = len(batch_seeds)
                phase = (f"sampling batch {first_batch + j} ({B} samples of shape {list(model.shape)}, "
                         f"{run.dtype}, one generator each)")
                noise = SeededNoise(batch_seeds, device=device)
                labels = batch_labels(run.model, model, batch_seeds)  # [B] classes, or None (unconditional)
                if text is not None:  # the batch's rows of the shard's encoded prompts
                    rows = take_rows(text, slice(lo - shard.start, lo - shard.start + B))
                    batch_problem = problem.conditioned({k: v.to(device) for k, v in rows.items()})
                else:
                    batch_problem = problem if labels is None else problem.conditioned(labels.to(device))
                synchronize(device)
                t0 = time.perf_counter()
                x_init = problem.prior_sample(B, noise, dtype=dtype, device=device)
                # Network passes of a fitted prior are not score calls: counted apart from NFE.
                state.prior_network_calls += getattr(prior, "network_calls", 0)
                guide0 = _classifier_counts(model)
                networks0 = tally.snapshot()
                sol = sampler.sample(batch_problem, x_init, noise)
                synchronize(device)
                sampling_s += time.perf_counter() - t0
                if guide0 is not None:  # a guiding classifier's gradient evaluations, counted apart from NFE
                    calls, rows = (b - a for a, b in zip(guide0, _classifier_counts(model), strict=True))
                    sol.stats.extra.update(classifier_nfe=calls, classifier_nfe_per_sample=rows / B)
                state.add_batch(sol.stats, B)
                state.add_networks(tally.since(networks0))  # every network's calls and rows in this batch
                if sol.status != Status.OK:
                    state.status = str(sol.status.value)
                    state.message = (f"batch {first_batch + j} (seeds {batch_seeds[0]}-{batch_seeds[-1]}): "
                                        f"{sol.message or sol.status.value}")
                    break
                x = sol.x
                if latent:  # decoded by the model's VAE: timed apart, counted as vae_decoder, not NFE
                    phase = f"decoding batch {first_batch + j} with the VAE"
                    if device.startswith("cuda") and torch.cuda.is_available():
                        peak_mb = max(peak_mb, torch.cuda.max_memory_allocated(device) / 2**20)
                    x, seconds, decode_mb = decode(base, x, device)
                    state.decode_time_s += seconds
                    if decode_mb is not None:
                        state.decode_peak_memory_mb = max(state.decode_peak_memory_mb or 0.0, decode_mb)
                phase = f"updating the metrics on batch {first_batch + j}"
                t0 = time.perf_counter()
                ids = torch.tensor(batch_seeds, dtype=torch.int64)
                for metric in metrics.values():
                    if text is not None and getattr(metric, "takes_prompts", False):  # CLIP score: each sample's prompt
                        metric.update(x, ids, prompts=shard_prompts[lo - shard.start:lo - shard.start + B])
                    else:
                        metric.update(x, ids)
                metric_s += time.perf_counter() - t0
                room = run.save_samples - lo  # keep the samples at positions < save_samples
                if room > 0:
                    kept.append(x[:room].detach().float().cpu())
                    if labels is not None:
                        kept_labels.append(labels[:room])
            bar.close()
            if own is not None:  # the text encoder's and the VAE decoder's calls during the shard
                state.add_networks(own.since(own0))
            if state.status == "running":
                state.metrics = {name: m.state() for name, m in metrics.items()}
                state.status = "ok"
    except RunTimeout as e:
        state.status, state.message = "timeout", str(e)
    except torch.cuda.OutOfMemoryError as e:
        state.status, state.message = "oom", _oom_message("CUDA out of memory", e, phase)
    except MemoryError as e:
        state.status, state.message = "oom", _oom_message("MemoryError", e, phase)
    except Exception as e:  # any failure becomes the shard's status; the sweep goes on
        if "std::bad_alloc" in str(e) or "DefaultCPUAllocator: can't allocate memory" in str(e):
            state.status, state.message = "oom", _oom_message("out of host memory", e, phase)
        else:
            tb = traceback.extract_tb(e.__traceback__)[-1]
            state.status = "error"
            state.message = (f"{type(e).__name__}: {' '.join(str(e).split())[:1000]} "
                             f"(at {Path(tb.filename).name}:{tb.lineno})")
    state.samples = torch.cat(kept) if kept else None
    state.sample_labels = torch.cat(kept_labels).tolist() if kept_labels else None
    state.sampling_time_s, state.metric_time_s = sampling_s, metric_s
    state.wall_time_s, state.finished = time.perf_counter() - t_start, now()
    state.oom_splits = getattr(model, "splits", 0)
    state.peak_memory_mb, state.peak_memory_kind = _peak_memory(device)
    state.peak_memory_mb = max(state.peak_memory_mb, peak_mb)
    return state.to_dict()


def execute_unit(run: RunSpec, shard: Shard, budget_s: float | None = None, progress: bool | None = False,
                 info: dict | None = None) -> dict:
    """What a worker computes for ``shard`` (:func:`execute_shard`; ``info`` is added to its ``info``).
    When the shard is its run's only one and succeeded, the run's record is merged here too, where the
    state already is: ``state['merged'] = (record, kept samples)`` (:func:`merge_states`), so the driver
    only writes it — a merge is then as parallel as the shards."""
    state = execute_shard(run, shard, budget_s, progress)
    state["info"].update(info or {})
    if state["status"] == "ok" and len(run_shards(run)) == 1:
        state["merged"] = merge_or_fail(run, [shard_state(shard, state)])
        state.update(metrics={}, samples=None)  # in the record now: not sent to the driver twice
    return state


def execute_run(run: RunSpec, progress: bool | None = None) -> tuple[dict, torch.Tensor | None]:
    """Run every shard of ``run`` here, one after another, and return ``(record, kept samples)``."""
    states, failure, spent = [], None, 0.0
    for shard in run_shards(run):
        budget = None if run.timeout_s is None else run.timeout_s - spent
        s = shard_state(shard, execute_shard(run, shard, budget, progress))  # with its run id and index
        spent += s["wall_time_s"]
        if s["status"] != "ok":
            failure = s
            break
        states.append(s)
    return merge_states(run, states, failure)


def merge_or_fail(run: RunSpec, states: list[dict], failure: dict | None = None) -> tuple[dict, torch.Tensor | None]:
    """:func:`merge_states`, or a failed record giving the reason where merging raises."""
    try:
        return merge_states(run, states, failure)
    except Exception as e:  # noqa: BLE001  (a merge that fails fails the run, with the reason)
        from bench.records import failed_record

        return failed_record(run, "error", f"merging shards: {type(e).__name__}: {e}"), None


def merge_states(run: RunSpec, states: list[dict], failure: dict | None = None) -> tuple[dict, torch.Tensor | None]:
    """The record of ``run`` from its shard states: fresh accumulators (on the CPU) merge the shards'
    metric states (:func:`bench.shards.merge_record`). Image metrics read the data range and size
    from the shards; metrics that need the model (exact mixtures) load it (cheap)."""
    from bench.metrics import METRICS

    metrics = {}
    if failure is None:
        info = next((s["info"] for s in states if "data_range" in s.get("info", {})), None)
        if any(METRICS[m].needs_model for m in run.metrics) or info is None:
            model = load_score_model(run.model, "cpu", run.dtype)
        else:
            model = SimpleNamespace(data_range=tuple(info["data_range"]), shape=tuple(info["shape"]))
        metrics = build_metrics(run, model, "cpu")
    return merge_record(run, states, metrics, failure)
