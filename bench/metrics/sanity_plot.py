"""The FD sanity curve of docs/metrics.md: FD of a sample set against its own statistics, with noise.

    python -m bench.metrics.sanity_plot            # writes docs/img/fd_sanity.png, prints the table

For each shipped classifier, a fixed image set (digits: the train split; Fashion-MNIST: the test
split, to keep it to minutes on a CPU) is corrupted with Gaussian noise of growing standard
deviation (images in [0, 1], clipped after the noise), and its fd against the clean set's own
statistics is measured; a dashed line marks fd(test split vs train split), the shipped reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bench.metrics.classifier import CLASSIFIERS, load_classifier
from bench.metrics.frechet import frechet_distance
from bench.metrics.train_classifier import feature_stats, load_split

NOISE = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
SETS = {"digits": "train", "fashion": "test"}
OUT = Path(__file__).resolve().parents[2] / "docs" / "img" / "fd_sanity.png"


def curve(name: str) -> tuple[list[float], float]:
    """fd of the noised set against the clean set, per noise level, and the shipped fd(test vs train)."""
    net, meta = load_classifier(name)
    x, _ = load_split(name, SETS[name])
    clean = feature_stats(net, x)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    fds = []
    for s in NOISE:
        st = feature_stats(net, (x + s * noise).clamp(0, 1))
        fds.append(frechet_distance(st.mean, st.covariance, clean.mean, clean.covariance))
        print(f"{name:8s} noise {s:<5} fd {fds[-1]:.6g}", flush=True)
    return fds, meta["fd_test_vs_train"]


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(1)
    fig, axes = plt.subplots(1, len(CLASSIFIERS), figsize=(9, 3.4))
    for ax, name in zip(axes, CLASSIFIERS):
        fds, test_vs_train = curve(name)
        ax.plot(NOISE[1:], fds[1:], "o-", label=f"{SETS[name]} split + noise vs itself")
        ax.axhline(test_vs_train, ls="--", c="gray", label=f"test vs train: {test_vs_train:.3g}")
        ax.set(xscale="log", yscale="log", xlabel="noise std (images in [0, 1])", ylabel=f"fd_{name}",
               title=f"fd_{name} (σ = 0: {fds[0]:.1e})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
