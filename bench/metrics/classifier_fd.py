"""``fd_digits`` and ``fd_fashion``: Fréchet distance in a shipped classifier's feature space.

FID's Inception is meaningless on 8×8 digits and poor on 28×28 grey clothes, so small datasets
get the Fréchet distance between the penultimate features (64-d digits, 128-d Fashion-MNIST) of
generated samples and of the dataset's train split, with the classifiers of
:mod:`bench.metrics.classifier`. Samples are mapped from ``data_range`` to [0, 1] and clipped to
it (what an image file could hold), but not quantised: the grey levels of digits (17) and of
Fashion-MNIST (256) are the data's, not a file format's.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from bench.metrics.classifier import CLASSIFIERS, load_classifier, train_stats_path, weights_path
from bench.metrics.feature_fd import FrechetMetric
from bench.metrics.inception import file_sha256
from bench.metrics.reference import ReferenceStats
from bench.metrics.registry import MetricEntry, RunFacts

__all__ = ["DIGITS", "FASHION", "make_classifier_fd"]


def make_classifier_fd(name: str, *, data_range: tuple[float, float] = (0.0, 1.0),
                       device: str | torch.device = "cpu", seeds: str | None = None) -> FrechetMetric:
    """Build the ``fd_{name}`` accumulator (``update(samples)``, then ``compute() -> (fd, protocol)``).

    Args:
        name: ``'digits'`` or ``'fashion'``.
        data_range: the range of the samples (mapped to [0, 1]).
        device: where the classifier runs.
        seeds: the samples' seeds, copied into the protocol.
    """
    net, meta = load_classifier(name, device)
    reference = ReferenceStats.load(train_stats_path(name), reference_dataset=f"{meta['dataset']}/train")
    lo, hi = data_range

    def prepare(x: Tensor) -> Tensor:
        if not torch.isfinite(x).all():
            raise ValueError("samples contain non-finite values")
        return ((x.detach().to(torch.float32) - lo) / (hi - lo)).clamp(0.0, 1.0).to(device)

    def features(x: Tensor) -> Tensor:
        return net.features(x)

    path = weights_path(name)
    protocol = {"feature_network": f"{path.name} (SmallCNN penultimate layer, {reference.mu.shape[0]}-d)",
                "feature_network_sha256": file_sha256(path), "classifier_test_accuracy": meta["test_accuracy"],
                "data_range": list(data_range), "preprocessing": "map to [0, 1], clip, no quantisation",
                "frechet": "scorebench eigh (float64)", "seeds": seeds}
    return FrechetMetric(f"fd_{name}", features, reference, protocol, prepare=prepare)


def _options(facts: RunFacts) -> dict:
    return {"data_range": facts.data_range, "device": facts.device, "seeds": facts.seeds}


def _applies(name: str, kind: str, shape: tuple[int, ...] | None, conditional: bool) -> str | None:
    size = CLASSIFIERS[name]["arch"]["size"]
    if shape is None or tuple(shape) == (1, size, size):
        return None
    return f"its classifier reads 1x{size}x{size} images; the model's samples are {'x'.join(map(str, shape))}"


def _files(name: str, data: dict) -> dict[str, Path]:
    files = {"classifier": weights_path(name), "train_stats": train_stats_path(name)}
    for p in files.values():
        if not Path(p).is_file():
            raise FileNotFoundError(f"metric 'fd_{name}' needs {p}, which is missing; train it with "
                                    f"`python -m bench.metrics.train_classifier --data {name}`")
    return files


def _entry(name: str, what: str) -> MetricEntry:
    return MetricEntry(name=f"fd_{name}", summary=f"Fréchet distance in the shipped {what} classifier's features",
                       build=partial(make_classifier_fd, name), options=_options, applies=partial(_applies, name),
                       files=partial(_files, name))


DIGITS = _entry("digits", "8x8 digits")
FASHION = _entry("fashion", "28x28 Fashion-MNIST")
