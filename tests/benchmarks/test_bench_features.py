"""Feature extraction against the bare forward of its network at the same batch (bound 1.10 ×).

Extraction is what a metric's ``update`` runs before its statistics: ``metric.features(metric.prepare(x))``
on float samples in the model's data range — quantisation to uint8, the protocol's resize and
normalisation, the batching loop, the network, the feature read-out. The limit is the network alone on an
input already in its own format (:class:`~tests.benchmarks.conftest.Interleaved`: timed right before each
round; the statistic is the median over rounds of the paired ratio).

Networks (random weights: the cost of a forward does not depend on the weights):

* ``dinov2_pil`` / ``dinov2_torch``: transformers' ``Dinov2Model`` in DINOv2 ViT-S/14's shape (384-d, 12
  blocks; ViT-L/14 costs about 14× more per image for the same resize and normalisation, so its ratio is
  closer to 1) on 32 × 32 samples; limit: the model on normalised 224 × 224 inputs.
* ``inception_legacy`` / ``inception_clean``: a TorchScript network with the Inception file's interface
  and about its cost (≈ 7 GFLOP an image at 299 px; the real file cannot be fetched here); limit: the
  file's ``forward(img, return_features=True)`` on float 0..255 images (it resizes inside, as the real
  one) for ``legacy_tensorflow``, ``layers`` on 299 px inputs for ``clean``.
* ``fd_digits``: the shipped digits classifier; limit: its ``features`` on [0, 1] images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.metrics.reference import ReferenceStats
from tests.benchmarks.bounds import FEATURE_BOUND, check_bound
from tests.benchmarks.conftest import CLOCK, Interleaved

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:DeprecationWarning")


class _Layers(nn.Module):
    """pool_3 of an Inception-sized convolutional stack: [B, 3, 299, 299] → [B, 2048, 1, 1]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.convs = nn.ModuleList([nn.Conv2d(3, w, 3, 2), nn.Conv2d(w, 2 * w, 3, 1), nn.Conv2d(2 * w, 6 * w, 3, 2),
                                    nn.Conv2d(6 * w, 24 * w, 3, 2), nn.Conv2d(24 * w, 2048, 1, 2)])

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return F.adaptive_avg_pool2d(x, 1)


class InceptionSized(nn.Module):
    """The TorchScript Inception file's interface (casts to float32, resizes to 299 inside, ``layers``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = _Layers(width)

    def forward(self, img: Tensor, return_features: bool = False) -> Tensor:
        x = img.to(torch.float32)
        if x.shape[2] != 299 or x.shape[3] != 299:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128).view(-1, 2048)


def _reference(dim: int) -> ReferenceStats:
    return ReferenceStats(np.zeros(dim), np.eye(dim), None)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, full_size):
    """A DINOv2 transformers folder and a TorchScript Inception-interface file (full or tiny sizes)."""
    pytest.importorskip("transformers")
    from transformers import Dinov2Config, Dinov2Model

    from bench.metrics.assets import INCEPTION_FILE

    root = tmp_path_factory.mktemp("feature_nets")
    torch.manual_seed(0)
    size = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6) if full_size else dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=1)
    config = Dinov2Config(**size, mlp_ratio=4, patch_size=14, image_size=518, layerscale_value=1.0,
                          layer_norm_eps=1e-6)
    Dinov2Model(config).save_pretrained(str(root / "dinov2"))
    torch.jit.script(InceptionSized(32 if full_size else 2).eval()).save(str(root / INCEPTION_FILE))
    return root


RANGE = (-1.0, 1.0)  # the samples' data range
SAMPLE_SHAPE = {"fd_digits": (1, 8, 8)}
BATCH = {"dinov2_pil": 8, "dinov2_torch": 8, "inception_legacy": 8, "inception_clean": 8, "fd_digits": 1000}


def _case(name: str, root, batch: int, full_size: bool):
    """(metric, bare forward of its network on an input in the network's own format) for a network."""
    if name.startswith("dinov2"):
        from bench.metrics.dinov2 import make_fd_dinov2

        metric = make_fd_dinov2(dinov2=root / "dinov2", dinov2_resize=name.split("_")[1], data_range=RANGE,
                                reference=_reference(384 if full_size else 64), batch_size=batch)
        model = metric.features.model
        x = torch.randn(batch, 3, 224, 224)
        return metric, lambda: model(pixel_values=x).pooler_output
    if name.startswith("inception"):
        from bench.metrics.fid import make_fid

        mode = "legacy_tensorflow" if name == "inception_legacy" else "clean"
        metric = make_fid(inception=root, mode=mode, backend="scorebench", reference=_reference(2048),
                          data_range=RANGE, batch_size=batch)
        net = metric.features.net
        if mode == "legacy_tensorflow":
            x = torch.rand(batch, 3, 32, 32) * 255
            return metric, lambda: net(x, return_features=True)
        x = (torch.rand(batch, 3, 299, 299) * 255 - 128) / 128
        return metric, lambda: net.layers.forward(x)
    from bench.metrics.classifier_fd import make_classifier_fd

    metric = make_classifier_fd("digits", data_range=RANGE)
    x = torch.rand(batch, 1, 8, 8)
    return metric, lambda: metric.features(x)


@pytest.mark.parametrize("name", list(FEATURE_BOUND))
def test_feature_extraction_vs_bare_forward(benchmark, name, folders, full_size):
    batch = BATCH[name] if full_size else 2
    metric, bare = _case(name, folders, batch, full_size)
    shape = SAMPLE_SHAPE.get(name, (3, 32, 32))
    samples = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def extract():
        with torch.no_grad():
            return metric.features(metric.prepare(samples))

    def limit() -> float:
        with torch.no_grad():
            t0 = CLOCK()
            bare()
            return CLOCK() - t0

    feats = extract()
    assert feats.shape[0] == batch and torch.isfinite(feats).all()
    timed = Interleaved(limit)
    benchmark.pedantic(extract, setup=timed, rounds=7 if full_size else 1, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(batch=batch, network=name)
    if benchmark.stats is not None:
        benchmark.extra_info["bare_forward_s"] = timed.per_call(benchmark, 1)
        benchmark.extra_info["ratio_to_limit"] = ratio = timed.ratio(benchmark)
        benchmark.extra_info["bound"] = FEATURE_BOUND[name]
        check_bound(f"feature extraction ({name}) at batch {batch}", ratio, FEATURE_BOUND[name])
