"""Print a markdown model card for each checkpoint, from what the checkpoint itself records.

Usage::

    python scripts/model_card.py models/weights/digits_vp.pt [more.pt ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from models.checkpoint_io import load_model, read_checkpoint


def card(path: str) -> str:
    """Markdown card of one checkpoint: data, network, SDE, training command, steps, time, loss."""
    model = load_model(path)
    info, prov = model.info, model.info["provenance"]
    spec, cfg = info["spec"], prov["config"]
    net = spec.network_config
    size_kb = Path(path).stat().st_size / 1024
    stored = "EMA + raw weights" + ("" if read_checkpoint(path)["train_state"] is None else " + optimizer/RNG state")
    curve = prov["loss_curve"]
    tail = curve[-10:]
    last = sum(v for _, v in tail) / max(1, len(tail))
    sde = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in spec.sde.items())
    lines = [
        f"### `{Path(path).name}`",
        "",
        "| | |",
        "|---|---|",
        f"| data | `{info['dataset']}` train split ({prov['train_size']} images), shape {tuple(model.shape)}, "
        f"{info['levels']} grey levels, scaled to {tuple(model.data_range)} |",
        f"| SDE | {sde}; time label `{model.time_label}` |",
        f"| network | `{spec.network}`: ch={net['ch']}, ch_mult={tuple(net['ch_mult'])}, "
        f"res blocks={net['num_res_blocks']}, attention at {tuple(net['attn_resolutions']) or 'middle only'}, "
        f"embedding `{net['embedding']}`, σ-scaling `{net['sigma_scaling']}`; "
        f"**{prov['num_params']:,} parameters** |",
        f"| training | {prov['steps']} steps × batch {cfg['batch_size']}, Adam lr {cfg['lr']:g} "
        f"(warm-up {cfg['warmup']}), grad clip {cfg['grad_clip']:g}, EMA {cfg['ema_decay']:g}, seed {prov['seed']}, "
        f"{prov['threads']} CPU thread(s) |",
        f"| wall time | {prov['wall_time_s'] / 60:.1f} min (shared 2-core CPU), torch {prov['torch']} |",
        f"| final loss | {prov['final_loss']:.4f} (mean of the last {cfg['log_every']} steps); "
        f"{last:.4f} over the last {len(tail) * cfg['log_every']} steps |",
        f"| file | {size_kb:.0f} KiB ({stored}) |",
        "",
        "Command:",
        "",
        "```",
        *prov["commands"],
        "```",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(card(p) for p in sys.argv[1:]))
