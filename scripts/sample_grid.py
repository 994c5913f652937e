"""Draw a grid of samples from a checkpoint with a registered sampler and save it as a PNG.

Usage::

    python scripts/sample_grid.py models/weights/digits_vp.pt --out docs/img/digits_vp.png
    python scripts/sample_grid.py --real digits --out docs/img/digits_real.png   # training images

Samples are drawn with one seeded generator per sample (seeds 0..n−1), mapped back from the model's
data range to [0, 1], rounded to the dataset's grey levels and tiled with matplotlib (no torchvision).
This lives outside ``models/`` because it imports ``solvers``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def tile(images: np.ndarray, nrow: int, pad: int = 1, scale: int = 4) -> np.ndarray:
    """Tile images [N, C, H, W] in [0, 1] into one [H', W'] (grey) or [H', W', 3] array, upscaled."""
    n, c, h, w = images.shape
    ncol = -(-n // nrow)
    grid = np.ones((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for k, img in enumerate(images):
        i, j = divmod(k, nrow)
        grid[:, pad + i * (h + pad) : pad + i * (h + pad) + h, pad + j * (w + pad) : pad + j * (w + pad) + w] = img
    grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_png(images: np.ndarray, path: Path, nrow: int, scale: int) -> None:
    """Save images [N, C, H, W] in [0, 1] as one PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, tile(images, nrow, scale=scale), cmap="gray", vmin=0.0, vmax=1.0)


def sample_images(
    checkpoint: str, n: int, sampler: str, n_steps: int, options: dict | None = None
) -> tuple[np.ndarray, dict]:
    """n samples in [0, 1], quantized to the dataset's levels, and a record of how they were drawn."""
    from models.checkpoint_io import load_model
    from models.score import CountingScore
    from solvers import Problem, SeededNoise, make_sampler

    model = load_model(checkpoint)
    problem = Problem(score=CountingScore(model))
    noise = SeededNoise(range(n))
    x = problem.prior_sample(n, noise)
    start = time.perf_counter()
    with torch.no_grad():
        sol = make_sampler(sampler, n_steps=n_steps, **(options or {})).sample(problem, x, noise)
    wall = time.perf_counter() - start
    lo, hi = model.data_range
    unit = ((sol.x - lo) / (hi - lo)).clamp(0, 1)
    levels = model.info["levels"]
    if levels is not None:
        unit = torch.round(unit * (levels - 1)) / (levels - 1)
    record = {
        "checkpoint": str(checkpoint),
        "sampler": sampler,
        "n_steps": n_steps,
        "options": options or {},
        "nfe": sol.stats.nfe,
        "status": str(sol.status.value if hasattr(sol.status, "value") else sol.status),
        "num_samples": n,
        "seeds": f"0-{n - 1}",
        "wall_time_s": round(wall, 1),
        "nonfinite": int((~torch.isfinite(sol.x)).sum()),
    }
    return unit.numpy(), record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="model checkpoint (omit with --real)")
    parser.add_argument("--real", help="tile training images of this dataset instead of sampling")
    parser.add_argument("--out", required=True, help="PNG path")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--nrow", type=int, default=8, help="images per row")
    parser.add_argument("--sampler", default="reverse_diffusion")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--option", action="append", default=[], help="extra sampler option KEY=VALUE (json value)")
    parser.add_argument("--scale", type=int, default=0, help="pixel upscaling (default: 4 up to 16 px, else 2)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.real:
        from models.datasets import load_dataset

        ds = load_dataset(args.real, "train")
        images, record = ds.to_model_range(ds.data[: args.n], data_range=(0.0, 1.0)).numpy(), {"real": args.real}
    elif args.checkpoint:
        options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
        images, record = sample_images(args.checkpoint, args.n, args.sampler, args.steps, options)
    else:
        parser.error("give a checkpoint or --real DATASET")
    scale = args.scale or (4 if images.shape[-1] <= 16 else 2)
    save_png(images, Path(args.out), args.nrow, scale)
    print(json.dumps({**record, "out": args.out}))


if __name__ == "__main__":
    main()
