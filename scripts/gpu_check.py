"""GPU acceptance check (issue 20): every GPU path of the harness, measured once on one machine.

Random weights at the official CIFAR-10 sizes (NCSN++, NCSN++ deep, DDPM++; nf = 128), so nothing is
downloaded. Sections (each prints one JSON line; one failing section does not hide the others):

* ``env``      device, versions, precision flags (TF32, cuDNN benchmark).
* ``matmul``   a measured dense bf16 (and float32) matmul rate: the yardstick of the forward section.
* ``forward``  bare forward time of each network at each batch size in float32, bf16 autocast,
               channels_last and both (the harness's ``models.accel.AcceleratedNet``); FLOPs per
               forward counted by ``torch.utils.flop_counter`` (convolutions, matmuls, attention) and
               the achieved fraction of the measured bf16 matmul rate; peak memory; output error
               against float32.
* ``ratio``    one sampler of each family through ``python -m bench.run``'s own code path
               (``bench.run.main`` on a generated grid), the run's ``sampling_time_s`` against the
               network limit NFE × bare forward at the same batch, NFE read from the record (counted
               by the harness); the likelihood (``solvers.ProbabilityFlowLikelihood``, on-device
               torchdiffeq) against NFE × (forward + VJP).
* ``bf16``     the same seeds sampled in float32 twice (the run-to-run floor) and in bf16 autocast:
               per-sample differences, changed 8-bit pixels, and Fréchet distances in a fixed feature
               space (the shipped Fashion-MNIST classifier's features of grey 28×28 versions; Inception
               too where its TorchScript file is already on the machine), next to the distance between
               two float32 sets of different seeds (the sampling-noise scale).
* ``oom``      a batch that does not fit: on CUDA the process is capped below the batch's measured
               need (``torch.cuda.set_per_process_memory_fraction``) and the run must complete by
               splitting (record ``oom_splits`` > 0, status ok) with the samples of an uncapped run;
               on CPU (``--smoke``) the allocator's error is simulated by the network.
* ``workers``  ``python -m bench.run`` in a subprocess on a small grid (``--workers`` with one worker
               per visible GPU where the CLI has it): which worker ran what, and ``--plan``'s output
               (where the CLI has it) against the measured wall-clock.
* ``compile``  ``torch.compile`` (through ``AcceleratedNet``) with bf16 + channels_last: compile time
               and steady forward time; last, and cells that would not fit the time budget are skipped
               (said so in the output).

Usage::

    python scripts/gpu_check.py --out gpu_check.jsonl      # one GPU: full sizes, budget 400 s (< 8 min)
    python scripts/gpu_check.py --smoke                    # CPU, tiny sizes, well under a minute
    python scripts/gpu_check.py --sections forward,ratio   # some sections only

Exit code 0 if every section ran, 1 if one failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from models.accel import AcceleratedNet, Acceleration  # noqa: E402
from models.configs import get_config  # noqa: E402
from models.score import NetworkScore  # noqa: E402

MODULE = "gpu_check"  # the grids name the model factory as 'gpu_check:random_model'
NETWORKS = {"ncsnpp": "ve/cifar10_ncsnpp_continuous", "ncsnpp_deep": "ve/cifar10_ncsnpp_deep_continuous",
            "ddpmpp": "vp/cifar10_ddpmpp_continuous"}
SAMPLER_NET = "ddpmpp"  # the network of the sampler sections (VP: every family runs on it)
VARIANTS = {"float32": {}, "bf16": {"autocast": "bf16"}, "channels_last": {"channels_last": True},
            "bf16_channels_last": {"autocast": "bf16", "channels_last": True}}


@dataclass(frozen=True)
class CheckConfig:
    """Sizes of one check. ``FULL``: the acceptance run on one GPU; ``SMOKE``: every section on CPU.

    Attributes:
        nf: base width of the networks (official: 128).
        batches: batch sizes of the forward and compile sections.
        batch: batch size of the sampler sections (ratio, bf16, oom, workers).
        n_steps: steps of the fixed-step samplers (PC on VP needs more than β_max = 20).
        tol: rtol = atol of the adaptive ODE samplers.
        loose_tol: rtol = atol of adaptive Improved Euler (Gotta Go Fast's tolerances are of this order)
            and of the likelihood (whose solve has no step cap).
        max_steps: step cap of adaptive Improved Euler (bounds its time on random weights); the ODE
            solvers (up to 6 evaluations a step) get half of it.
        bf16_steps: Euler–Maruyama steps of the bf16 section.
        cell_s: target seconds of one timing loop.
        limit_calls: forwards per timing of the network limit (scaled to the run's NFE).
        budget_s: seconds for the whole check; later cells that would not fit are skipped.
        compile_backend: backend of ``torch.compile`` ('inductor' is what the harness uses; the smoke
            test takes 'eager': graph capture without code generation, which takes minutes on CPU).
        matmul_n: size of the square matmuls.
        threads: torch threads (None: torch's default).
        res_blocks: ``num_res_blocks`` per network where it differs from the official config (smoke only).
        compile_networks: the networks of the compile section, in order.
        min_reps: fewest calls of one timing loop (after 2 warm-up calls and a probe).
    """

    nf: int
    batches: tuple[int, ...]
    batch: int
    n_steps: int
    tol: float
    max_steps: int
    bf16_steps: int
    cell_s: float
    limit_calls: int
    budget_s: float
    compile_backend: str
    matmul_n: int
    threads: int | None = None
    loose_tol: float = 1e-2
    res_blocks: tuple[tuple[str, int], ...] = ()
    compile_networks: tuple[str, ...] = ("ddpmpp", "ncsnpp", "ncsnpp_deep")
    min_reps: int = 3

    def arch(self, network: str) -> dict:
        """Constructor overrides of ``network``: the width, and the depth where the smoke test reduces it."""
        depth = dict(self.res_blocks).get(network)
        return {"nf": self.nf} if depth is None else {"nf": self.nf, "num_res_blocks": depth}


FULL = CheckConfig(nf=128, batches=(128, 500), batch=500, n_steps=21, tol=1e-3, max_steps=100, bf16_steps=50,
                   cell_s=1.0, limit_calls=10, budget_s=400.0, compile_backend="inductor", matmul_n=8192)
SMOKE = CheckConfig(nf=8, batches=(2, 4), batch=4, n_steps=5, tol=1e-1, max_steps=50, bf16_steps=3, cell_s=0.0,
                    limit_calls=2, budget_s=120.0, compile_backend="eager", matmul_n=128, threads=1, loose_tol=1e-1,
                    res_blocks=(("ncsnpp", 1), ("ncsnpp_deep", 2), ("ddpmpp", 1)), compile_networks=("ddpmpp",),
                    min_reps=1)


# --- models ----------------------------------------------------------------------------------
class SimulatedOOM(nn.Module):
    """The network, raising the CUDA allocator's error above ``max_rows`` samples (CPU smoke only)."""

    def __init__(self, net: nn.Module, max_rows: int) -> None:
        super().__init__()
        self.net, self.max_rows = net, max_rows

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        if x.shape[0] > self.max_rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {x.shape[0]} > {self.max_rows} samples)")
        return self.net(x, labels)


@functools.cache
def _random_model(network: str, nf: int, num_res_blocks: int | None, seed: int, device: str) -> NetworkScore:
    config = get_config(NETWORKS[network])
    depth = {} if num_res_blocks is None else {"num_res_blocks": num_res_blocks}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # init_scale = 1: the official init makes the last layer of every residual branch and the
        # output layer ~0 (an all-zero score); sizes and FLOPs are the official ones either way.
        net = config.build(nf=nf, init_scale=1.0, **depth)
    return NetworkScore(net.to(device), config.make_sde(), config.shape, config.data_range, config.time_label,
                        config.num_scales)


def random_model(network: str = SAMPLER_NET, nf: int = 128, num_res_blocks: int | None = None, seed: int = 0,
                 device: str = "cpu", oom_above: int | None = None) -> NetworkScore:
    """A score model with random weights at the official CIFAR-10 size of ``network`` (a key of
    ``NETWORKS``; ``nf``/``num_res_blocks`` reduce it), built once per process (the grids of this
    script load it as a ``callable`` model).

    ``oom_above``: simulate the CUDA out-of-memory error above that many samples (CPU smoke test).
    """
    model = _random_model(network, nf, num_res_blocks, seed, device)
    if oom_above is not None:
        model = copy.copy(model)
        model.net = SimulatedOOM(model.net, oom_above)
    return model


def labels_at(model: NetworkScore, t: float, batch: int, device: torch.device) -> Tensor:
    """The network's labels at time t (continuous convention: σ(t) for VE, 999 t for VP/sub-VP)."""
    if model.time_label != "continuous":
        raise ValueError(f"labels_at: continuous models only, got {model.time_label!r}")
    tt = torch.full((batch,), t, dtype=torch.float64, device=device)
    labels = model.sde.marginal(tt)[1] if model.sde.kind == "ve" else 999.0 * tt
    return labels.float()


def count_flops(network: str, arch: dict, batch: int) -> int:
    """FLOPs of one forward at ``batch`` counted by torch.utils.flop_counter on the meta device
    (convolutions, matmuls and attention; normalisations and pointwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    config = get_config(NETWORKS[network])
    with torch.device("meta"):
        net = config.build(**arch)
        x = torch.zeros(batch, *config.shape)
        labels = torch.full((batch,), 0.5)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x, labels)
    return int(counter.get_total_flops())


# --- timing ----------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, target_s: float, warmup: int = 2,
               min_reps: int = 3, max_reps: int = 50) -> tuple[float, int]:
    """(seconds per call, calls timed): ``fn`` in one loop, synchronised at both ends, sized from a probe."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    probe = time.perf_counter() - t0
    reps = max(min_reps, min(max_reps, int(target_s / max(probe, 1e-9))))
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps, reps


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


@dataclass
class Context:
    """What the sections share: sizes, device, time budget, scratch folder, earlier results."""

    config: CheckConfig
    device: torch.device
    deadline: float
    workdir: Path
    smoke: bool
    results: dict = field(default_factory=dict)  # section name -> its result (later sections read them)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def fits(self, seconds: float) -> bool:
        """Whether a cell estimated at ``seconds`` fits the budget left (always, in the smoke test: it must
        run every cell whatever the load of the machine)."""
        return self.smoke or self.left() >= seconds

    def model(self, network: str = SAMPLER_NET) -> NetworkScore:
        return random_model(network, device=str(self.device), **self.config.arch(network))

    def model_section(self, **options) -> dict:
        """A grid model section loading :func:`random_model` (the script's own module, by name)."""
        return {"kind": "callable", "target": f"{MODULE}:random_model",
                "options": {"network": SAMPLER_NET, **self.config.arch(SAMPLER_NET), "device": str(self.device),
                            **options}}

    def grid(self, name: str, sweeps: list[dict], model: dict | None = None, **eval_options) -> Path:
        """Write a one-model grid for ``python -m bench.run`` and return its path."""
        import yaml

        b = self.config.batch
        ev = {"num_samples": b, "batch_size": b, "seeds": f"0-{b - 1}", "device": str(self.device),
              "dtype": "float32", "save_samples": 0, **eval_options}
        if self.config.threads:
            ev["threads"] = self.config.threads
        grid = {"name": name, "models": {SAMPLER_NET: model or self.model_section()}, "eval": ev, "sweeps": sweeps}
        path = self.workdir / name / "grid.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(grid, sort_keys=False))
        return path


def run_bench(grid: Path, out: Path, *extra: str) -> tuple[int, list[dict]]:
    """``python -m bench.run`` in this process (warm device, same model objects); (exit code, records)."""
    import io

    from bench.records import read_records
    from bench.run import main as bench_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = bench_main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report", *extra])
    sys.stderr.write(err.getvalue())
    if code == 2:  # the grid was refused (e.g. a renamed sampler option): nothing ran
        raise RuntimeError(f"bench.run refused {grid}: {err.getvalue().strip()[-500:]}")
    return code, list(read_records(out).values())


def forward_seconds(ctx: Context, model: NetworkScore, batch: int, backward: bool = False) -> float:
    """Seconds per bare forward ``net(x, labels)`` at ``batch`` (with one VJP when ``backward``), from a
    loop of ``config.limit_calls`` of them: NFE times this is the network limit of a run."""
    x = torch.randn(batch, *model.shape, device=ctx.device)
    labels = labels_at(model, 0.5, batch, ctx.device)
    v = torch.randn_like(x)

    def call():
        if backward:
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(model.net(xg, labels), xg, grad_outputs=v)
        else:
            with torch.no_grad():
                model.net(x, labels)

    k = ctx.config.limit_calls
    per_call, _ = time_calls(call, ctx.device, target_s=0.0, warmup=1, min_reps=k, max_reps=k)
    return per_call


# --- sections --------------------------------------------------------------------------------
def section_env(ctx: Context) -> dict:
    from bench.records import environment

    d = ctx.device
    info = {"device": str(d), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "float32_matmul_precision": torch.get_float32_matmul_precision(), "threads": torch.get_num_threads(),
            "config": dataclasses.asdict(ctx.config), "smoke": ctx.smoke, "git_revision": environment()["git_revision"]}
    if d.type == "cuda":
        p = torch.cuda.get_device_properties(d)
        info.update(device_name=p.name, capability=f"{p.major}.{p.minor}", total_memory_gb=p.total_memory / 2**30,
                    multiprocessors=p.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported())
    else:
        import platform

        info.update(device_name=f"cpu ({platform.processor() or platform.machine()})", cores=os.cpu_count())
    return info


def section_matmul(ctx: Context) -> dict:
    """Dense square matmul rates (2 n³ FLOPs per product) in bf16 and float32 (torch's default precision)."""
    n, rates = ctx.config.matmul_n, {}
    for name, dtype in (("bf16", torch.bfloat16), ("float32", torch.float32)):
        a = torch.randn(n, n, device=ctx.device, dtype=dtype)
        b = torch.randn(n, n, device=ctx.device, dtype=dtype)
        sec, reps = time_calls(lambda a=a, b=b: a @ b, ctx.device, target_s=ctx.config.cell_s, min_reps=5,
                               max_reps=200)
        rates[name] = {"tflops": 2 * n**3 / sec / 1e12, "ms": sec * 1e3, "reps": reps}
    return {"n": n, **rates}


def section_forward(ctx: Context) -> dict:
    """Bare forwards ``AcceleratedNet(net, options)(x, labels)`` per network, batch and variant."""
    bf16_rate = ctx.results.get("matmul", {}).get("bf16", {}).get("tflops")
    rows, cfg = [], ctx.config
    for network in NETWORKS:
        model = ctx.model(network)
        for batch in cfg.batches:
            flops = count_flops(network, cfg.arch(network), batch)
            x = torch.randn(batch, *model.shape, device=ctx.device)
            labels = labels_at(model, 0.5, batch, ctx.device)
            with torch.no_grad():
                ref = model.net(x, labels).float()
            for variant, options in VARIANTS.items():  # the channels_last ones last: they convert the weights
                acc = AcceleratedNet(model.net, Acceleration(**options))
                reset_peak(ctx.device)
                with torch.no_grad():
                    sec, reps = time_calls(lambda acc=acc, x=x, labels=labels: acc(x, labels), ctx.device,
                                           cfg.cell_s, min_reps=cfg.min_reps)
                    err = (acc(x, labels).float() - ref).norm() / ref.norm()
                achieved = flops / sec / 1e12
                rows.append({"network": network, "batch": batch, "variant": variant, "ms": sec * 1e3, "reps": reps,
                             "gflop": flops / 1e9, "tflops": achieved,
                             "fraction_of_bf16_matmul": achieved / bf16_rate if bf16_rate else None,
                             "peak_memory_mb": peak_mb(ctx.device), "rel_err_vs_float32": float(err)})
            model.net.to(memory_format=torch.contiguous_format)
    ctx.results["forward_ms"] = {(r["network"], r["batch"], r["variant"]): r["ms"] for r in rows}
    return {"rows": rows, "flops_counter": "torch.utils.flop_counter (conv, matmul, attention)"}


def _families(cfg: CheckConfig) -> dict[str, dict]:
    """One sampler of each family (issue 20 item 2) and its options."""
    n, tol = cfg.n_steps, cfg.tol
    ode = {"rtol": tol, "atol": tol, "max_steps": cfg.max_steps // 2}
    return {"euler_maruyama": {"n_steps": n},
            # (score_sde's discrete VP table behind the Langevin step size needs n_steps > β_max = 20.)
            "pc": {"predictor": "euler_maruyama", "corrector": "langevin", "snr": 0.16, "n_steps": max(n, 21)},
            "pf_heun": {"n_steps": n},
            "dpm_solver_pp": {"n_steps": n, "solver_order": 2},
            "adaptive_improved_euler": {"rtol": cfg.loose_tol, "atol": cfg.loose_tol,
                                        "max_steps": cfg.max_steps},
            "torchdiffeq_ode": ode,
            "scipy_ode": ode}


TARGETS = {"euler_maruyama": 1.02, "pc": 1.02, "pf_heun": 1.02, "dpm_solver_pp": 1.02,
           "adaptive_improved_euler": 1.05, "torchdiffeq_ode": 1.05, "likelihood": 1.05,
           "scipy_ode": None}  # scipy_ode: the host round trip is measured, not targeted


def section_ratio(ctx: Context) -> dict:
    """Each family's run through ``bench.run`` against NFE bare forwards at the same batch."""
    cfg, model, rows = ctx.config, ctx.model(), []
    b = cfg.batch
    fwd_ms = ctx.results.get("forward_ms", {}).get((SAMPLER_NET, b, "float32"))
    # A warm-up run: the first pass through the harness pays its one-time costs (imports, caches).
    run_bench(ctx.grid("ratio_warmup", [{"solver": "euler_maruyama", "n_steps": 2}]), ctx.workdir / "ratio_warmup")
    for solver, options in _families(cfg).items():
        per_step = 6 if solver in ("scipy_ode", "torchdiffeq_ode") else 2  # RK45 / dopri5: 6 evaluations a step
        expected = per_step * options.get("max_steps", options.get("n_steps", 0)) + 1  # NFE bound of the run
        if fwd_ms is not None and not ctx.fits(2.5 * expected * fwd_ms / 1e3):
            rows.append({"solver": solver, "skipped": f"time budget ({ctx.left():.0f} s left)"})
            continue
        try:
            rows.append(_sampler_ratio(ctx, model, solver, options))
        except Exception as e:  # one sampler failing must not hide the others
            rows.append({"solver": solver, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"})
    try:
        if fwd_ms is not None and not ctx.fits(2.5 * 100 * 3 * fwd_ms / 1e3):  # ~100 NFE of forward + VJP
            rows.append({"solver": "likelihood", "skipped": f"time budget ({ctx.left():.0f} s left)"})
        else:
            rows.append(_likelihood_ratio(ctx, model))
    except Exception as e:
        rows.append({"solver": "likelihood", "error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"})
    for r in rows:
        if r.get("ratio") is not None and r["target"] is not None:
            r["meets_target"] = r["ratio"] <= r["target"]
    failures = [f"{r['solver']}: {r.get('error') or r.get('message')}" for r in rows
                if "error" in r or r.get("status") == "error"]
    return {"network": SAMPLER_NET, "rows": rows, "failures": failures}


def _sampler_ratio(ctx: Context, model: NetworkScore, solver: str, options: dict) -> dict:
    """One run of ``solver`` through ``bench.run`` with the limit timed right before and after it."""
    b = ctx.config.batch
    before = forward_seconds(ctx, model, b)
    code, records = run_bench(ctx.grid(f"ratio_{solver}", [{"solver": solver, **options}]),
                              ctx.workdir / f"ratio_{solver}")
    after = forward_seconds(ctx, model, b)
    if len(records) != 1:
        raise RuntimeError(f"bench.run (exit code {code}) wrote {len(records)} records, expected 1")
    rec = records[0]
    nfe, forward_s = rec["nfe"], (before + after) / 2
    return {"solver": solver, "options": options, "batch": b, "status": rec["status"], "message": rec["message"][:200],
            "nfe": nfe, "sampling_s": rec["sampling_time_s"], "forward_ms": forward_s * 1e3,
            "limit_s": nfe * forward_s if nfe else None,
            "ratio": rec["sampling_time_s"] / (nfe * forward_s) if nfe else None,
            "target": TARGETS[solver], "oom_splits": rec.get("oom_splits"), "exit_code": code}


def _likelihood_ratio(ctx: Context, model: NetworkScore) -> dict:
    """The probability-flow likelihood (torchdiffeq on the device) against NFE × (forward + VJP)."""
    from solvers import Problem, SeededNoise
    from solvers.likelihood import ProbabilityFlowLikelihood

    cfg, b = ctx.config, ctx.config.batch
    lik = ProbabilityFlowLikelihood(backend="torchdiffeq", rtol=cfg.loose_tol, atol=cfg.loose_tol)
    g = torch.Generator(device=ctx.device).manual_seed(0)
    lo, hi = model.data_range
    x = lo + (hi - lo) * torch.rand(b, *model.shape, device=ctx.device, generator=g)
    problem = Problem(model)
    lik(problem, x[:2], SeededNoise(range(2), device=ctx.device))  # warm-up of the solver's own code
    before = forward_seconds(ctx, model, b, backward=True)  # and of the backward at this batch
    sync(ctx.device)
    t0 = time.perf_counter()
    res = lik(problem, x, SeededNoise(range(b), device=ctx.device))
    sync(ctx.device)
    solve_s = time.perf_counter() - t0
    per_call = (before + forward_seconds(ctx, model, b, backward=True)) / 2
    return {"solver": "likelihood", "options": dataclasses.asdict(lik), "batch": b, "status": str(res.status),
            "nfe": res.nfe, "n_vjp": res.n_vjp, "sampling_s": solve_s, "forward_backward_ms": per_call * 1e3,
            "limit_s": res.nfe * per_call, "ratio": solve_s / (res.nfe * per_call), "target": TARGETS["likelihood"],
            "bpd_mean": float(res.bpd.float().mean()) if res.bpd is not None else None}


class FixedFeatures:
    """A fixed feature space for 3×32×32 samples: the shipped Fashion-MNIST classifier's penultimate
    features (128-d) of their grey 28×28 versions (channel mean, bilinear antialiased resize), [0, 1]."""

    name = "fashion_cnn_grey28"

    def __init__(self, data_range: tuple[float, float], device: torch.device) -> None:
        from bench.metrics.classifier import load_classifier

        self.net, _ = load_classifier("fashion", device)
        self.lo, self.hi = data_range

    def __call__(self, x: Tensor) -> Tensor:
        x01 = ((x.float() - self.lo) / (self.hi - self.lo)).clamp(0, 1).mean(1, keepdim=True)
        grey = torch.nn.functional.interpolate(x01, size=(28, 28), mode="bilinear", antialias=True,
                                               align_corners=False)
        with torch.no_grad():
            return self.net.features(grey)


def frechet(features: Callable[[Tensor], Tensor], a: Tensor, b: Tensor) -> float:
    """Fréchet distance between the feature Gaussians of sample sets a and b (bench.metrics formula)."""
    from bench.metrics.frechet import frechet_distance
    from bench.metrics.stats import StreamingStats

    sa, sb = StreamingStats().update(features(a)), StreamingStats().update(features(b))
    return float(frechet_distance(sa.mean, sa.covariance, sb.mean, sb.covariance))


def section_bf16(ctx: Context) -> dict:
    """Euler–Maruyama on DDPM++ with the same seeds in float32 (twice) and in bf16 autocast."""
    from bench.metrics.inception import quantize_uint8
    from bench.models import accelerate
    from solvers import Problem, SeededNoise, make_sampler

    cfg, model, b = ctx.config, ctx.model(), ctx.config.batch
    sampler = make_sampler("euler_maruyama", n_steps=cfg.bf16_steps)
    views = {"float32": accelerate(model, {}), "bf16": accelerate(model, {"autocast": "bf16"})}

    def sample(view: str, first_seed: int) -> tuple[Tensor, float, int]:
        problem = Problem(views[view])
        seeds = range(first_seed, first_seed + b)
        noise = SeededNoise(seeds, device=ctx.device)
        sync(ctx.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            sol = sampler.sample(problem, problem.prior_sample(b, noise, device=ctx.device), noise)
        sync(ctx.device)
        return sol.x.float(), time.perf_counter() - t0, sol.stats.nfe

    x32, s32, nfe = sample("float32", 0)
    x32_again, _, _ = sample("float32", 0)
    x16, s16, nfe16 = sample("bf16", 0)
    x32_other, _, _ = sample("float32", b)
    flat32 = x32.flatten(1)

    def image(x: Tensor) -> Tensor:  # in the data range, non-finite values replaced (and counted apart)
        lo, hi = model.data_range
        return torch.nan_to_num(x, nan=0.5 * (lo + hi), posinf=hi, neginf=lo).clamp(lo, hi)

    def per_sample(x: Tensor) -> dict:
        d = (x.flatten(1) - flat32)
        rel = d.norm(dim=1) / flat32.norm(dim=1)
        q = quantize_uint8(image(x), model.data_range)
        q32 = quantize_uint8(image(x32), model.data_range)
        return {"max_abs": float(d.abs().max()), "rel_rms_median": float(rel.median()),
                "rel_rms_max": float(rel.max()), "uint8_pixels_changed": float((q != q32).float().mean())}

    features = FixedFeatures(model.data_range, ctx.device)
    result = {"network": SAMPLER_NET, "sampler": "euler_maruyama", "n_steps": cfg.bf16_steps, "batch": b, "nfe": nfe,
              "nfe_bf16": nfe16, "sampling_s": {"float32": s32, "bf16": s16},
              "nonfinite": {"float32": int((~torch.isfinite(x32)).sum()), "bf16": int((~torch.isfinite(x16)).sum())},
              "float32_rerun_vs_float32": per_sample(x32_again), "bf16_vs_float32": per_sample(x16),
              "feature_space": features.name,
              "fd": {"bf16_vs_float32": frechet(features, image(x16), image(x32)),
                     "float32_rerun_vs_float32": frechet(features, image(x32_again), image(x32)),
                     "float32_other_seeds_vs_float32": frechet(features, image(x32_other), image(x32))}}
    try:
        from bench.metrics.inception import InceptionFeatures

        inception = InceptionFeatures(device=ctx.device)
    except (FileNotFoundError, ValueError, ImportError) as e:
        result["inception"] = f"not used: {' '.join(str(e).split())[:160]}"
    else:
        def incep(x: Tensor) -> Tensor:
            return inception(quantize_uint8(image(x), model.data_range))

        result["fd_inception"] = {"bf16_vs_float32": frechet(incep, x16, x32),
                                  "float32_other_seeds_vs_float32": frechet(incep, x32_other, x32)}
    return result


@contextlib.contextmanager
def memory_cap(device: torch.device, cap_bytes: int):
    """Cap this process's CUDA caching allocator at ``cap_bytes`` (restored on exit)."""
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


def section_oom(ctx: Context) -> dict:
    """A batch too large for the device: split by the harness and completed, recorded as such."""
    from bench.records import samples_path

    model, b = ctx.model(), ctx.config.batch
    sweep = [{"solver": "euler_maruyama", "n_steps": 2}]
    code_ref, (ref,) = run_bench(ctx.grid("oom_reference", sweep, save_samples=b), ctx.workdir / "oom_reference")
    result: dict = {"batch": b, "reference": {"status": ref["status"], "oom_splits": ref.get("oom_splits")}}
    if ctx.device.type == "cuda":
        x = torch.randn(b, *model.shape, device=ctx.device)
        labels = labels_at(model, 0.5, b, ctx.device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(ctx.device)
        reset_peak(ctx.device)
        with torch.no_grad():
            model.net(x, labels)
        need = torch.cuda.max_memory_allocated(ctx.device) - base
        del x, labels
        cap = base + int(0.6 * need)  # the whole batch does not fit; half of it does
        result.update(cap_mb=cap / 2**20, batch_forward_need_mb=need / 2**20, how="set_per_process_memory_fraction")
        grid = ctx.grid("oom_capped", sweep, save_samples=b)
        with memory_cap(ctx.device, cap):
            code, (rec,) = run_bench(grid, ctx.workdir / "oom_capped")
    else:
        grid = ctx.grid("oom_capped", sweep, model=ctx.model_section(oom_above=b // 2), save_samples=b)
        result.update(how=f"simulated: the network raises torch.OutOfMemoryError above {b // 2} samples")
        code, (rec,) = run_bench(grid, ctx.workdir / "oom_capped")
    result.update(status=rec["status"], message=rec["message"][:300], oom_splits=rec.get("oom_splits"),
                  nfe=rec["nfe"], sampling_s=rec["sampling_time_s"], peak_memory_mb=rec.get("peak_memory_mb"),
                  exit_codes=[code_ref, code])
    if rec["status"] == "ok" and ref["status"] == "ok":
        a = torch.load(samples_path(ctx.workdir / "oom_capped", rec["run_id"]), weights_only=True)
        r = torch.load(samples_path(ctx.workdir / "oom_reference", ref["run_id"]), weights_only=True)
        result.update(samples_compared=len(a), max_abs_diff_vs_unsplit=float((a - r).abs().max()),
                      max_abs_unsplit=float(r.abs().max()),
                      bitwise_equal_to_unsplit=bool(torch.equal(a, r)))
    result["split_and_completed"] = rec["status"] == "ok" and (rec.get("oom_splits") or 0) > 0
    result["failures"] = [] if result["split_and_completed"] else [f"not split and completed: {rec['message'][:300]}"]
    return result


def _cli(args: list[str], timeout: float) -> tuple[int, str, float]:
    """``python -m bench.run ARGS`` in a subprocess: (exit code, output, wall seconds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(Path(__file__).resolve().parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "bench.run", *args], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=ROOT)
    return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0


def cli_help() -> str:
    """``python -m bench.run --help``, read in this process."""
    import io

    from bench.run import main as bench_main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        bench_main(["--help"])
    return buf.getvalue()


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(seconds|second|sec|s|minutes|minute|min|GPU-hours|hours|hour|h)\b")
_UNIT_S = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "min": 60, "minute": 60, "minutes": 60, "h": 3600,
           "hour": 3600, "hours": 3600, "GPU-hours": 3600}


def parse_total_seconds(text: str) -> float | None:
    """The last duration on the last line mentioning 'total' of a plan's output (best effort), in seconds."""
    for line in reversed(text.splitlines()):
        if "total" in line.lower():
            found = _DURATION.findall(line)
            if found:
                value, unit = found[-1]
                return float(value) * _UNIT_S[unit]
    return None


def section_workers(ctx: Context) -> dict:
    """``python -m bench.run`` as a user starts it: the local executor on the GPUs present, and ``--plan``."""
    from bench.records import read_records

    gpus = torch.cuda.device_count() if ctx.device.type == "cuda" else 0
    n_runs = max(2, 2 * gpus)
    steps = [2 + i for i in range(n_runs)]
    grid = ctx.grid("workers", [{"solver": "euler_maruyama", "n_steps": steps}], device="auto" if gpus else "cpu")
    out = ctx.workdir / "workers" / "out"
    helptext = cli_help()
    has = {flag: flag in helptext for flag in ("--plan", "--workers")}
    result: dict = {"gpus": gpus, "runs": n_runs, "cli_flags": has}
    if has["--plan"]:
        code, text, wall = _cli(["--grid", str(grid), "--out", str(ctx.workdir / "workers" / "plan"), "--plan"],
                                timeout=600.0 if ctx.smoke else max(30.0, ctx.left()))
        result["plan"] = {"exit_code": code, "wall_s": wall, "output_tail": text[-1500:],
                          "estimate_s_parsed": parse_total_seconds(text)}
    extra = ["--workers", str(max(1, gpus))] if has["--workers"] and gpus else []
    code, text, wall = _cli(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report", *extra],
                            timeout=600.0 if ctx.smoke else max(30.0, ctx.left()))
    records = list(read_records(out).values())
    result.update(exit_code=code, wall_s=wall, args=extra, output_tail=text[-800:] if code else "",
                  records=[{k: r.get(k) for k in ("run_id", "status", "executor", "worker_gpu", "device",
                                                  "device_name", "wall_time_s", "sampling_time_s", "nfe")}
                           for r in records])
    result["runs_wall_sum_s"] = sum(r.get("wall_time_s") or 0.0 for r in records)
    result["failures"] = [f"bench.run exit code {code}: {text[-300:]}"] if code or len(records) != n_runs else []
    result["per_gpu_workers_exercised"] = len({r.get("worker_gpu") for r in records} - {None}) > 1
    estimate = result.get("plan", {}).get("estimate_s_parsed")
    if estimate:
        result["plan_estimate_over_measured"] = estimate / wall
    return result


def section_compile(ctx: Context) -> dict:
    """``AcceleratedNet`` with bf16 + channels_last + ``torch.compile``: first call (compile) and steady time."""
    cfg, rows = ctx.config, []
    patch = contextlib.nullcontext()
    if cfg.compile_backend != "inductor":  # smoke test: the harness's code path, a cheap backend
        from unittest import mock

        patch = mock.patch.object(torch, "compile", functools.partial(torch.compile, backend=cfg.compile_backend))
    longest = 0.0  # the longest first call so far: a recompile for a new network or batch size costs about as much
    for network in cfg.compile_networks:
        model = ctx.model(network)
        with patch:
            acc = AcceleratedNet(model.net, Acceleration(autocast="bf16", channels_last=True, compile=True))
        for batch in cfg.batches:
            need = 1.5 * longest if longest else 60.0
            if not ctx.fits(need):
                rows.append({"network": network, "batch": batch, "skipped": f"time budget ({ctx.left():.0f} s left, "
                                                                           f"a compile takes ~{need:.0f} s)"})
                continue
            try:
                row = _compiled_forward(ctx, network, acc, batch)
            except Exception as e:  # one network failing to compile must not hide the others
                row = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"}
            longest = max(longest, row.get("first_call_s", 0.0))
            rows.append({"network": network, "batch": batch, "backend": cfg.compile_backend, **row})
        model.net.to(memory_format=torch.contiguous_format)
    failures = [f"{r['network']} batch {r['batch']}: {r['error']}" for r in rows if "error" in r]
    return {"variant": "bf16_channels_last_compile", "rows": rows, "failures": failures}


def _compiled_forward(ctx: Context, network: str, acc: AcceleratedNet, batch: int) -> dict:
    """First call (the compile) and steady time of the compiled network; its output against eager."""
    model = ctx.model(network)
    x = torch.randn(batch, *model.shape, device=ctx.device)
    labels = labels_at(model, 0.5, batch, ctx.device)
    with torch.no_grad():
        sync(ctx.device)
        t0 = time.perf_counter()
        out = acc(x, labels)
        sync(ctx.device)
        first_s = time.perf_counter() - t0
        sec, reps = time_calls(lambda: acc(x, labels), ctx.device, ctx.config.cell_s, min_reps=ctx.config.min_reps)
        ref = AcceleratedNet(model.net, Acceleration(autocast="bf16", channels_last=True))(x, labels).float()
    eager = ctx.results.get("forward_ms", {}).get((network, batch, "bf16_channels_last"))
    return {"first_call_s": first_s, "ms": sec * 1e3, "reps": reps, "eager_bf16_channels_last_ms": eager,
            "speedup_vs_eager": eager / (sec * 1e3) if eager else None,
            "rel_err_vs_eager": float((out.float() - ref).norm() / ref.norm())}


SECTIONS: dict[str, Callable[[Context], dict]] = {
    "env": section_env, "matmul": section_matmul, "forward": section_forward, "ratio": section_ratio,
    "bf16": section_bf16, "oom": section_oom, "workers": section_workers, "compile": section_compile,
}


# --- driver ----------------------------------------------------------------------------------
def _json_default(o):
    if isinstance(o, Path | torch.device | torch.dtype):
        return str(o)
    if isinstance(o, tuple | set):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def emit(line: dict, out: Path | None) -> None:
    text = json.dumps(line, default=_json_default)
    print(text, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(text + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="every section on CPU at tiny sizes (the CI test)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda; cpu with --smoke)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"time budget in seconds (default: {FULL.budget_s:g}; smoke {SMOKE.budget_s:g})")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    p.add_argument("--workdir", default=None, help="scratch folder for grids and records (default: a temp folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(f"error: unknown section(s) {', '.join(unknown)}; expected some of: {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    config = SMOKE if args.smoke else FULL
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --smoke (CPU, tiny sizes) or --device cpu", file=sys.stderr)
        return 2
    if args.budget_s is not None:
        config = dataclasses.replace(config, budget_s=args.budget_s)
    if config.threads:
        torch.set_num_threads(config.threads)
    sys.modules.setdefault(MODULE, sys.modules[__name__])  # so 'gpu_check:random_model' is this module
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    out = Path(args.out) if args.out else None
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="gpu_check-")))
        ctx = Context(config, device, start + config.budget_s, workdir, args.smoke)
        status = {}
        for name in sections:
            t0 = time.perf_counter()
            try:
                result = SECTIONS[name](ctx)
                ctx.results[name] = result
                line = {"section": name, "ok": not result.get("failures"), "wall_s": time.perf_counter() - t0,
                        "result": result}
            except Exception as e:  # one failing section must not hide the others
                line = {"section": name, "ok": False, "wall_s": time.perf_counter() - t0,
                        "error": f"{type(e).__name__}: {' '.join(str(e).split())[:1000]}",
                        "traceback": traceback.format_exc()[-3000:]}
            status[name] = line["ok"]
            emit(line, out)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        total = time.perf_counter() - start
        emit({"section": "summary", "ok": all(status.values()), "sections": status, "wall_s": total,
              "budget_s": config.budget_s, "within_budget": total <= config.budget_s + 60}, out)
    return 0 if all(status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
