"""models.tally: per-network calls and rows, read as differences between snapshots."""

import pytest
import torch

from models.tally import CountedNetwork, Tally


def test_counted_network_adds_calls_and_rows_per_name():
    tally = Tally()
    net = CountedNetwork(torch.nn.Linear(3, 2), tally, "vae_decoder")
    before = tally.snapshot()
    net(torch.zeros(4, 3))
    net(torch.zeros(6, 3))
    assert tally.since(before) == {"vae_decoder": {"calls": 2, "rows": 10}}
    mid = tally.snapshot()
    tally.add("guide", rows=8)
    assert tally.since(mid) == {"guide": {"calls": 1, "rows": 8}}
    assert list(net.parameters()) == list(net.net.parameters())


def test_unknown_network_name_is_refused():
    with pytest.raises(ValueError, match="unknown network name 'unet'.*denoiser"):
        CountedNetwork(torch.nn.Identity(), Tally(), "unet")
    with pytest.raises(ValueError, match="unknown network name"):
        Tally().add("vae", rows=1)
