"""The typed shard state: statistics added per batch, merged across shards in index order, summarised
for the record, and stored as a plain dict that ``torch.load(weights_only=True)`` reads back."""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from bench.shard_state import ShardState


@dataclass
class Stats:  # the fields of solvers' SolveStats that the state reads
    nfe: int
    n_steps: int
    n_accepted: int = 0
    n_rejected: int = 0
    nfe_per_sample: torch.Tensor | None = None
    extra: float | None = None

    def as_dict(self) -> dict:
        d = {"nfe": self.nfe, "n_steps": self.n_steps, "n_accepted": self.n_accepted, "n_rejected": self.n_rejected}
        return d | ({"h_min": self.extra} if self.extra is not None else {})


def _round_trip(state: ShardState) -> ShardState:
    buf = io.BytesIO()
    torch.save(state.to_dict(), buf)
    buf.seek(0)
    return ShardState.from_dict(torch.load(buf, weights_only=True))


def test_add_merge_and_summary():
    a, b = ShardState(), ShardState()
    a.add_batch(Stats(12, 6, 6, 1, torch.tensor([10.0, 14.0]), extra=0.1), 2)
    a.add_batch(Stats(20, 10, 10, 0, torch.tensor([20.0, 20.0, 20.0])), 3)
    b.add_batch(Stats(8, 4, 4, 2, torch.tensor([8.0])), 1)
    a.wall_time_s, b.wall_time_s, a.peak_memory_mb, b.peak_memory_mb = 1.0, 2.0, 50.0, 70.0
    a.prior_network_calls, b.oom_splits = 3, 2
    total = ShardState().merge(_round_trip(a)).merge(_round_trip(b))
    s = total.summary()
    assert s["nfe_per_batch"] == [12, 20, 8] and s["batch_sizes"] == [2, 3, 1] and s["steps_per_batch"] == [6, 10, 4]
    assert s["nfe_total"] == 40 and s["nfe"] == 40 / 3 and s["n_steps"] == 20 / 3
    assert s["n_accepted"] == 20 and s["n_rejected"] == 3
    assert s["nfe_per_sample_mean"] == (24 + 60 + 8) / 6 and s["nfe_per_sample_min"] == 8 and s[
        "nfe_per_sample_max"] == 20
    assert s["stats_extra"] == [{"h_min": 0.1}] and s["prior_network_calls"] == 3 and s["oom_splits"] == 2
    assert s["wall_time_s"] == 3.0 and s["peak_memory_mb"] == 70.0


def test_fixed_steps_and_empty():
    s = ShardState()
    for _ in range(3):
        s.add_batch(Stats(30, 30), 10)
    out = s.summary()
    assert out["nfe"] == 30 and out["n_steps"] == 30 and out["nfe_per_sample_mean"] is None
    empty = ShardState().summary()
    assert empty["nfe"] is None and empty["nfe_total"] == 0 and empty["nfe_per_sample_min"] is None
    assert set(ShardState.empty_record()) <= set(empty)
    failed = ShardState.from_dict({"status": "error", "message": "worker died", "wall_time_s": 0.0, "run_id": "x"})
    assert failed.status == "error" and failed.summary()["nfe_per_batch"] == []
