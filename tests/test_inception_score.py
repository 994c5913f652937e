"""Inception Score: the reference formula on recorded logits, 10 splits in seed order.

The reference, written out here: improved-GAN / StyleGAN2-ADA's estimator — consecutive splits,
p(y) the split's mean softmax row, IS_split = exp(mean_x KL(p(y|x) ‖ p(y))) with the KL from
``scipy.stats.entropy(p, q)``, the value the mean over splits. The logits are recorded from the
stand-in TorchScript Inception (the file's interface: ``forward(img, return_features, no_output_bias)``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from bench.metrics import make_metric
from bench.metrics.inception_score import inception_score
from tests.test_fid import _images, stand_in  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:DeprecationWarning")


def reference_is(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    n = len(probs)
    scores = []
    for i in range(splits):
        part = probs[i * n // splits: (i + 1) * n // splits]
        py = part.mean(0)
        scores.append(np.exp(np.mean([entropy(p, py) for p in part])))
    return float(np.mean(scores)), float(np.std(scores))


def test_formula_on_random_probabilities():
    logits = np.random.default_rng(0).normal(scale=3.0, size=(103, 1008))
    probs = softmax(logits, axis=1)
    ours, expected = inception_score(probs), reference_is(probs)
    assert ours == pytest.approx(expected, rel=1e-12)
    assert inception_score(np.tile(probs[:1], (20, 1)))[0] == pytest.approx(1.0, abs=1e-12)  # one class: IS = 1
    one_hot = np.eye(1008)[np.arange(100) % 50]  # 50 classes, each split holds 10 distinct ones: IS = 10
    assert inception_score(one_hot)[0] == pytest.approx(10.0, rel=1e-12)
    with pytest.raises(ValueError, match="at least 10 samples"):
        inception_score(probs[:9])


def test_metric_on_recorded_logits(stand_in):  # noqa: F811
    """The accumulator (batches out of seed order) against the reference formula on the stand-in's logits."""
    x = _images(50, 3)
    net = torch.jit.load(str(stand_in / "inception-2015-12-05.pt")).eval()
    u8 = (x * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        logits = (net.output(net(u8.float(), return_features=True)) - net.output.bias).double().numpy()
    expected, spread = reference_is(softmax(logits, axis=1))
    metric = make_metric("inception_score", inception=stand_in, seeds="0-49")
    ids = torch.arange(50)
    for lo, hi in ((30, 50), (0, 15), (15, 30)):  # batches out of order: the splits are by seed
        metric.update(x[lo:hi], ids[lo:hi])
    value, protocol = metric.compute()
    assert value == pytest.approx(expected, rel=1e-6) and protocol["split_std"] == pytest.approx(spread, rel=1e-4)
    assert protocol["splits"] == 10 and protocol["num_generated"] == 50
    assert protocol["uncertainty"]["groups"] == 10 and protocol["uncertainty"]["stderr"] > 0
    print(f"IS on 50 stand-in images: metric {value!r}, reference formula on recorded logits {expected!r}")
