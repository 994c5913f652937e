"""Denoising score matching for small score models, on CPU, seeded and resumable.

Objectives (``--sde``):
  * ``vp`` / ``subvp``: continuous time, t ~ U(eps, T), ε-prediction ``‖net(α_t x₀ + σ_t z, 999 t) − z‖²``
    (score_sde's continuous DDPM++; the score is −net/σ_t).
  * ``ve``: continuous time, ``‖σ_t s(x₀ + σ_t z, σ_t) + z‖²`` (λ(σ) = σ² weighting), σ_max from
    Technique 1 of Song & Ermon 2020 (largest pairwise distance of the training data) unless given.
  * ``ncsnv2``: NCSNv2's discrete noise scales: σ₁ = largest pairwise distance (Technique 1), the
    geometric ratio γ solving Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = C, C = 0.5 (Technique 2),
    i ~ U{0..L−1}, same σ²-weighted loss; the network divides by σ_i (Technique 3). Saved as a VE
    SDE with ``time_label='smld'`` and ``num_scales = L``.

All use Adam with linear warm-up, gradient-norm clipping and an EMA of the weights (Technique 5;
decay ``min(decay, (1+n)/(10+n))`` as score_sde). Every random draw comes from one seeded
generator whose state is checkpointed, so ``--resume`` continues exactly as an uninterrupted run.

Usage::

    python -m models.train --data digits --sde vp --steps 20000 --out models/weights/digits_vp.pt
"""

from __future__ import annotations

import argparse
import copy
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import Tensor, nn

from models.checkpoint_io import ModelSpec, read_checkpoint, save_checkpoint
from models.datasets import Dataset, load_dataset
from models.sde import VESDE, VPSDE, SubVPSDE, expand_like, make_sde, sde_to_dict
from models.unet import SmallUNet, UNetConfig

__all__ = [
    "TrainConfig",
    "OBJECTIVES",
    "max_pairwise_distance",
    "ncsnv2_ratio",
    "ncsnv2_num_scales",
    "train",
    "main",
]

OBJECTIVES = ("vp", "subvp", "ve", "ncsnv2")
# Fields that may change between a run and its resumption.
RESUMABLE_FIELDS = ("steps", "max_minutes", "checkpoint_every", "log_every", "threads", "progress")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults suit digits (1×8×8) on one CPU thread.

    Args:
        data: dataset name (see :data:`models.datasets.DATASETS`).
        data_root: dataset location, if not the default.
        sde: objective, one of 'vp', 'subvp', 've', 'ncsnv2'.
        steps: total optimizer steps (a resumed run goes on to this number).
        batch_size: samples per step.
        lr: Adam learning rate after warm-up.
        warmup: linear warm-up steps.
        grad_clip: max gradient norm (0 disables clipping).
        ema_decay: EMA decay.
        seed: seed of the initialisation and of every random draw of the run.
        beta_min: VP/sub-VP β_min.
        beta_max: VP/sub-VP β_max.
        sigma_min: VE/NCSNv2 smallest σ.
        sigma_max: VE/NCSNv2 largest σ; 0 means Technique 1 (largest pairwise distance).
        ncsnv2_c: the C of Technique 2.
        dequantize: train on uniformly dequantized data instead of the grey levels themselves.
        ch: U-Net base channels.
        ch_mult: U-Net channel multipliers (one per resolution).
        num_res_blocks: U-Net residual blocks per resolution.
        attn_resolutions: resolutions with self-attention.
        dropout: U-Net dropout.
        checkpoint_every: write the checkpoint every this many steps (and at the end).
        log_every: steps per point of the recorded loss curve.
        threads: torch threads (1 for background training on shared cores).
        max_minutes: stop (and checkpoint) after this much wall time; 0 = no limit.
        progress: show a tqdm progress bar.
    """

    data: str = "digits"
    data_root: str | None = None
    sde: str = "vp"
    steps: int = 20000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 0.0
    ncsnv2_c: float = 0.5
    dequantize: bool = False
    ch: int = 16
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    checkpoint_every: int = 1000
    log_every: int = 100
    threads: int = 1
    max_minutes: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.sde not in OBJECTIVES:
            raise ValueError(f"unknown sde/objective {self.sde!r}; expected one of: {', '.join(OBJECTIVES)}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------------------------
# NCSNv2 Techniques 1 and 2.


def max_pairwise_distance(x: Tensor, max_points: int = 5000, seed: int = 0) -> float:
    """Largest Euclidean distance between two rows of x [N, ...] (Technique 1's σ₁).

    Exact for N ≤ max_points; otherwise over a seeded random subset of max_points rows (a lower
    bound, close for large data sets).
    """
    x = x.flatten(1).double()
    if len(x) > max_points:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_points]]
    best = 0.0
    for chunk in x.split(1024):
        best = max(best, torch.cdist(chunk, x).max().item())
    return best


def _phi(v: float) -> float:
    return 0.5 * (1 + math.erf(v / math.sqrt(2)))


def ncsnv2_ratio(dim: int, c: float = 0.5) -> float:
    """γ = σ_{i−1}/σ_i solving Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = C (Technique 2), by bisection."""
    if not 0 < c < 1:
        raise ValueError(f"C must be in (0, 1), got {c}")
    s = math.sqrt(2 * dim)

    def excess(gamma: float) -> float:  # decreasing in γ on γ ≥ 1
        return _phi(s * (gamma - 1) + 3 * gamma) - _phi(s * (gamma - 1) - 3 * gamma) - c

    lo, hi = 1.0, 2.0
    while excess(hi) > 0:
        hi *= 2
        if hi > 1e6:  # for √(2D) ≤ 3 the difference tends to ≥ Φ(3) as γ → ∞: no root for C < Φ(3)
            raise ValueError(f"Technique 2 has no ratio for dim={dim}, C={c}; give the noise scales explicitly")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def ncsnv2_num_scales(sigma_max: float, sigma_min: float, dim: int, c: float = 0.5) -> int:
    """Number L of geometric noise scales from σ_max down to σ_min at (at most) Technique 2's ratio."""
    gamma = ncsnv2_ratio(dim, c)
    return max(2, math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma)) + 1)


# ----------------------------------------------------------------------------------------------
# Building blocks.


def make_spec(cfg: TrainConfig, dataset: Dataset, train_x: Tensor) -> ModelSpec:
    """The model spec (network config, SDE, labels, data range) of a run, from its config and data."""
    if len(dataset.shape) != 3 or dataset.shape[1] != dataset.shape[2]:
        raise ValueError(f"SmallUNet needs square images [C, H, H]; {cfg.data} has shape {dataset.shape}")
    ve_like = cfg.sde in ("ve", "ncsnv2")
    sigma_max = cfg.sigma_max or (max_pairwise_distance(train_x, seed=cfg.seed) if ve_like else 0.0)
    net = {
        "in_channels": dataset.shape[0],
        "image_size": dataset.shape[1],
        "ch": cfg.ch,
        "ch_mult": list(cfg.ch_mult),
        "num_res_blocks": cfg.num_res_blocks,
        "attn_resolutions": list(cfg.attn_resolutions),
        "dropout": cfg.dropout,
        "groups": min(8, cfg.ch),
    }
    num_scales, time_label = 1000, "continuous"
    if cfg.sde in ("vp", "subvp"):
        sde = (VPSDE if cfg.sde == "vp" else SubVPSDE)(beta_min=cfg.beta_min, beta_max=cfg.beta_max)
        data_range = (-1.0, 1.0)
    elif cfg.sde == "ve":
        sde = VESDE(sigma_min=cfg.sigma_min, sigma_max=sigma_max)
        data_range = (0.0, 1.0)
        # Fourier features of log σ; scale 1 (not NCSN++'s 16) since this network has only ch/2 of them.
        net.update(embedding="fourier", fourier_scale=1.0, sigma_scaling="label", center_input=True)
    else:
        num_scales = ncsnv2_num_scales(sigma_max, cfg.sigma_min, train_x[0].numel(), cfg.ncsnv2_c)
        sde = VESDE(sigma_min=cfg.sigma_min, sigma_max=sigma_max)
        data_range, time_label = (0.0, 1.0), "smld"
        net.update(
            sigma_scaling="table",
            sigma_min=cfg.sigma_min,
            sigma_max=sigma_max,
            num_scales=num_scales,
            center_input=True,
        )
    return ModelSpec(
        network="small_unet",
        network_config=UNetConfig.from_dict(net).to_dict(),
        sde=sde_to_dict(sde),
        time_label=time_label,
        num_scales=num_scales,
        data_range=data_range,
        shape=dataset.shape,
        dataset=cfg.data,
        levels=dataset.levels,
    )


def dsm_loss(net: nn.Module, spec: ModelSpec, sde, x0: Tensor, g: torch.Generator) -> Tensor:
    """Denoising score matching loss of one batch x0 [B, ...] (mean over batch and dimensions)."""
    b = x0.shape[0]
    z = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    if spec.time_label == "smld":
        # NCSNv2: uniform noise level index, σ² weighting.
        i = torch.randint(0, spec.num_scales, (b,), generator=g)
        sigma = net.sigmas[i].to(x0.dtype)
        score = net(x0 + expand_like(sigma, x0) * z, i)
        return (expand_like(sigma, x0) * score + z).pow(2).mean()
    t = sde.eps + (sde.T - sde.eps) * torch.rand(b, generator=g, dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    x_t = expand_like(alpha, x0) * x0 + expand_like(sigma, x0) * z
    if sde.kind == "ve":
        score = net(x_t, sigma.to(x0.dtype))
        return (expand_like(sigma, x0) * score + z).pow(2).mean()
    eps_pred = net(x_t, (999.0 * t).to(x0.dtype))
    return (eps_pred - z).pow(2).mean()


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float, num_updates: int) -> None:
    """EMA step with score_sde's warm-up ``min(decay, (1+n)/(10+n))``."""
    d = min(decay, (1 + num_updates) / (10 + num_updates))
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p, 1 - d)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else cfg.lr


# ----------------------------------------------------------------------------------------------
# The loop.


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, command: str | None = None) -> Path:
    """Train (or resume) and write the checkpoint to ``out``; returns ``out``.

    Runs with ``cfg.threads`` torch threads and restores the previous thread count afterwards.

    Args:
        cfg: the run.
        out: checkpoint path (also read by ``resume``).
        resume: continue from ``out``; its config must equal ``cfg`` except for RESUMABLE_FIELDS.
        command: command line to record (defaults to sys.argv).

    Raises:
        ValueError: a resumed config that differs in a non-resumable field.
        FloatingPointError: a non-finite loss (the checkpoint is written first).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, Path(out), resume, command)
    finally:
        torch.set_num_threads(previous)


def _train(cfg: TrainConfig, out: Path, resume: bool, command: str | None) -> Path:
    command = command or shlex.join([sys.executable, *sys.argv])

    dataset = load_dataset(cfg.data, "train", root=cfg.data_root)
    ckpt = read_checkpoint(out) if resume else None
    if ckpt is not None:
        old = ckpt["provenance"]["config"]
        diff = {k: (old.get(k), v) for k, v in cfg.to_dict().items() if k not in RESUMABLE_FIELDS and old.get(k) != v}
        if diff:
            raise ValueError(f"--resume: config differs from {out} in {diff} (stored, given)")
        if ckpt["train_state"] is None:
            raise ValueError(f"--resume: {out} has no training state (slimmed checkpoint)")
        spec = ModelSpec.from_dict(ckpt["spec"])
    else:
        spec = make_spec(cfg, dataset, dataset.to_model_range(data_range=(0.0, 1.0)))

    data_range = spec.data_range
    train_x = dataset.to_model_range(data_range=data_range)  # [N, C, H, W]
    sde = make_sde(**spec.sde)

    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        net = SmallUNet(UNetConfig.from_dict(spec.network_config))
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    step, wall, loss_curve, window, commands = 0, 0.0, [], [], []
    if ckpt is not None:
        ts = ckpt["train_state"]
        net.load_state_dict(ckpt["raw"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ts["optimizer"])
        g.set_state(ts["generator"])
        torch.set_rng_state(ts["torch_rng"])
        window = list(ts["loss_window"])
        prov = ckpt["provenance"]
        step, wall, loss_curve, commands = (
            prov["steps"],
            prov["wall_time_s"],
            prov["loss_curve"],
            prov["commands"],
        )
    commands = [*commands, command]
    n_params = sum(p.numel() for p in net.parameters())

    saved_at = -1

    def checkpoint() -> None:
        nonlocal saved_at
        saved_at = step
        provenance = {
            "steps": step,
            "seed": cfg.seed,
            "loss_curve": loss_curve,
            "final_loss": loss_curve[-1][1] if loss_curve else None,
            "wall_time_s": wall + (time.perf_counter() - t_start),
            "torch": str(torch.__version__),
            "threads": cfg.threads,
            "commands": commands,
            "config": cfg.to_dict(),
            "num_params": n_params,
            "train_size": len(dataset),
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        train_state = {
            "optimizer": opt.state_dict(),
            "generator": g.get_state(),
            "torch_rng": torch.get_rng_state(),
            "loss_window": list(window),
        }
        save_checkpoint(out, spec, ema.state_dict(), net.state_dict(), provenance, train_state)

    t_start = time.perf_counter()
    deadline = t_start + 60 * cfg.max_minutes if cfg.max_minutes > 0 else math.inf
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"{cfg.data}/{cfg.sde}", mininterval=2.0)
    net.train()
    while step < cfg.steps:
        # One optimizer step.
        idx = torch.randint(0, len(train_x), (cfg.batch_size,), generator=g)
        x0 = train_x[idx]
        if cfg.dequantize and dataset.levels is not None:
            x0 = dataset.to_model_range(dataset.data[idx], data_range, dequantize=g)
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        loss = dsm_loss(net, spec, sde, x0, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(ema, net, cfg.ema_decay, step)
        step += 1
        # Bookkeeping.
        window.append(loss.item())
        if step % cfg.log_every == 0:
            loss_curve.append([step, sum(window) / len(window)])
            window = []
            if bar is not None:
                bar.set_postfix(loss=f"{loss_curve[-1][1]:.4f}")
        if bar is not None:
            bar.update(1)
        if not math.isfinite(loss.item()):
            checkpoint()
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}; checkpoint written to {out}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
        if time.perf_counter() > deadline:
            break
    if bar is not None:
        bar.close()
    if saved_at != step:
        checkpoint()
    return out


# ----------------------------------------------------------------------------------------------
# Command line.


def _parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint path (written periodically and at the end)")
    parser.add_argument("--resume", action="store_true", help="continue from --out")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.type == "tuple[int, ...]":
            parser.add_argument(flag, type=_parse_ints, default=f.default, help="comma-separated ints")
        elif f.name == "data_root":
            parser.add_argument(flag, default=None)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            parser.add_argument(flag, type=kind, default=f.default)
    return parser


def main(argv: list[str] | None = None) -> Path:
    """Entry point of ``python -m models.train``."""
    args = build_parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    cfg = replace(TrainConfig(), **values)
    argv = sys.argv[1:] if argv is None else argv
    out = train(cfg, args.out, resume=args.resume, command=shlex.join(["python", "-m", "models.train", *argv]))
    ckpt = read_checkpoint(out)
    prov = ckpt["provenance"]
    print(f"wrote {out}: {prov['steps']} steps, final loss {prov['final_loss']}, {prov['wall_time_s']:.0f} s")
    return out


if __name__ == "__main__":
    main()
