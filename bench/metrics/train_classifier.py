"""Train a feature classifier for ``fd_digits`` / ``fd_fashion`` and write its shipped files.

    python -m bench.metrics.train_classifier --data digits
    python -m bench.metrics.train_classifier --data fashion

One thread, seeded (same seed ⇒ same weights on the same torch build). Writes
``bench/metrics/weights/{name}_cnn.pt`` (architecture, float32 weights, metadata with the test
accuracy and the fd of the test split against the train split) and
``{name}_cnn_train_stats.npz`` (the train split's feature mean, covariance and count: the
reference statistics of ``fd_{name}``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import Tensor, nn

from bench.metrics.classifier import CLASSIFIERS, SmallCNN, train_stats_path, weights_path
from bench.metrics.frechet import frechet_distance
from bench.metrics.stats import StreamingStats

DEFAULTS = {"digits": {"epochs": 40, "batch_size": 32, "lr": 2e-3},
            "fashion": {"epochs": 8, "batch_size": 128, "lr": 2e-3}}


def load_split(name: str, split: str) -> tuple[Tensor, Tensor]:
    """Images [N, 1, H, W] in [0, 1] (float32) and labels [N] of a classifier's dataset split."""
    from models.datasets import load_dataset

    ds = load_dataset(CLASSIFIERS[name]["dataset"], split)
    return ds.to_model_range(data_range=(0.0, 1.0)), ds.labels


@torch.no_grad()
def accuracy(net: SmallCNN, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``net`` on (x, y)."""
    correct = sum((net(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


@torch.no_grad()
def feature_stats(net: SmallCNN, x: Tensor, batch_size: int = 1000) -> StreamingStats:
    """Streaming statistics of the penultimate features of images x."""
    stats = StreamingStats()
    for i in range(0, len(x), batch_size):
        stats.update(net.features(x[i:i + batch_size]))
    return stats


def train(name: str, epochs: int, batch_size: int, lr: float, seed: int) -> tuple[SmallCNN, dict]:
    """Train classifier ``name`` with Adam and a cosine learning-rate decay; returns it and its metadata."""
    torch.manual_seed(seed)
    x_train, y_train = load_split(name, "train")
    x_test, y_test = load_split(name, "test")
    net = SmallCNN(**CLASSIFIERS[name]["arch"])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    start = time.time()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(x_train), batch_size):
            idx = perm[i:i + batch_size]
            loss = loss_fn(net(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, test acc {accuracy(net, x_test, y_test):.4f} "
              f"({time.time() - start:.0f} s)", flush=True)
    meta = {"dataset": CLASSIFIERS[name]["dataset"], "test_accuracy": accuracy(net, x_test, y_test),
            "train_accuracy": accuracy(net, x_train, y_train), "n_train": len(x_train), "n_test": len(x_test),
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "torch": str(torch.__version__),
            "input": "[B, 1, H, W] in [0, 1] at native resolution (models.datasets to_model_range((0, 1)))"}
    return net, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics.train_classifier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, choices=sorted(CLASSIFIERS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    opts = {**DEFAULTS[args.data], **{k: v for k, v in vars(args).items() if k in DEFAULTS[args.data] and v}}
    net, meta = train(args.data, seed=args.seed, **opts)
    # Reference statistics of fd_{name}: the train split's features; and fd(test vs train) as a sanity number.
    train_stats = feature_stats(net, load_split(args.data, "train")[0])
    test_stats = feature_stats(net, load_split(args.data, "test")[0])
    meta["fd_test_vs_train"] = frechet_distance(test_stats.mean, test_stats.covariance,
                                                train_stats.mean, train_stats.covariance)
    meta["feature_dim"] = train_stats.dim
    state = {k: v.float().contiguous() for k, v in net.state_dict().items()}
    path = weights_path(args.data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save({"arch": CLASSIFIERS[args.data]["arch"], "state_dict": state, "meta": meta}, tmp)
    tmp.replace(path)
    train_stats.save(train_stats_path(args.data), source=f"{meta['dataset']} train split, {path.name} features")
    print(f"wrote {path} and {train_stats_path(args.data)}: {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
