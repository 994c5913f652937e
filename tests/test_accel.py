"""GPU-path options on CPU: autocast (bf16), channels_last, batch splitting on OOM."""

from __future__ import annotations

import pytest
import torch

from models.accel import AcceleratedNet, Acceleration, ChunkedScore
from models.score import CountingScore, NetworkScore
from models.sde import VPSDE
from models.unet import SmallUNet, UNetConfig
from tests.helpers import DIGITS_VP, run_grid_text


def net():
    torch.manual_seed(0)
    n = SmallUNet(UNetConfig(in_channels=1, image_size=8)).eval()
    for p in n.parameters():  # non-degenerate output
        p.data.add_(0.01 * torch.randn_like(p))
    return n


def test_channels_last_and_bf16_autocast_agree_with_plain_forward():
    base = net()
    x, labels = torch.randn(4, 1, 8, 8), torch.full((4,), 300.0)
    with torch.no_grad():
        ref = base(x, labels)
        cl = AcceleratedNet(base, Acceleration(channels_last=True))(x, labels)
        bf = AcceleratedNet(net(), Acceleration(autocast="bf16"))(x, labels)
    torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
    assert bf.dtype == torch.float32
    assert (bf - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 has ~3 significant digits
    with pytest.raises(ValueError, match="expected one of: none, bf16, fp16"):
        Acceleration(autocast="int8")


def test_chunked_score_splits_and_halves_on_oom():
    model = NetworkScore(net(), VPSDE(), (1, 8, 8))
    x, t = torch.randn(10, 1, 8, 8), torch.full((10,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x, t)
        calls = []

        class OOMAbove4:
            sde, shape, data_range = model.sde, model.shape, model.data_range

            def __call__(self, xx, tt):
                calls.append(xx.shape[0])
                if xx.shape[0] > 4:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
                return model(xx, tt)

        chunked = ChunkedScore(OOMAbove4())
        counter = CountingScore(chunked)
        out = counter(x, t)
    torch.testing.assert_close(out, ref)
    # 10 → OOM, halve to 5 → OOM, halve to 2 → five chunks; one NFE for the batch.
    assert calls == [10, 5, 2, 2, 2, 2, 2]
    assert counter.nfe == 1 and chunked.max_batch == 2 and chunked.splits == 2


def test_harness_run_with_accel_on_the_digits_model(tmp_path):
    """A grid run with eval.accel (bf16 autocast, channels_last, batch splitting) on a shipped network."""
    (record,) = run_grid_text(tmp_path,
        f"name: accel\nmodel: {{kind: checkpoint, path: {DIGITS_VP}}}\n"
        "eval: {num_samples: 6, batch_size: 6, seeds: '0-5', device: cpu, threads: 1,\n"
        "       accel: {autocast: bf16, channels_last: true, max_batch: 4}}\n"
        "sweeps:\n  - {solver: euler_maruyama, n_steps: 5}\n")
    assert record["status"] == "ok" and record["accel"]["autocast"] == "bf16"
    assert record["nfe"] == 5  # 4 steps + Tweedie: one NFE per call even when the batch is split in two
