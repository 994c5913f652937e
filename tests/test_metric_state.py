"""Mergeable metric state: shards merged in any order equal one pass over all samples (≤ 1e-9 relative).

Each accumulator sees the same samples once in one pass (batches of 16) and once split into three
shards of unequal size whose states travel through ``torch.save`` / ``torch.load(weights_only=True)``
and are merged in a shuffled order into a fresh accumulator.
"""

from __future__ import annotations

import importlib.util
import io

import pytest
import torch

from bench.metrics import METRICS, SAMPLE_METRICS, make_metric
from bench.metrics.bpd import BitsPerDim
from bench.metrics.fid import compute_reference_stats
from models.gaussian import GaussianMixture
from models.sde import VPSDE
from tests.test_fid import _images, _StandInInception

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:DeprecationWarning")

# Three shards of 24, 16 and 20 samples, of whole batches of 8 as in the harness (a shard is a run of
# whole batches): the float32 feature networks give features that move at 1e-7 with the batch
# composition, which alone moves a distance of ~160 by ~2e-9 relative.
CUTS = (0, 24, 40, 60)
BATCH = 8


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """A scripted stand-in Inception and toy reference statistics (FID and KID) in a private cache."""
    from bench.metrics.assets import INCEPTION_FILE

    torch.manual_seed(123)
    folder = tmp_path_factory.mktemp("inception")
    torch.jit.script(_StandInInception().eval()).save(str(folder / INCEPTION_FILE))
    ref = compute_reference_stats(_images(40, 10).split(20), "toy", 32, "train", inception=folder,
                                  backend="scorebench", kid=True, out=folder / "toy_ref.npz")
    if importlib.util.find_spec("transformers") is not None:  # a random small DINOv2 and its reference statistics
        from bench.metrics.dinov2 import compute_dinov2_reference
        from tests.test_dinov2 import hub_state

        torch.save(hub_state(), folder / "dinov2_tiny.pth")
        compute_dinov2_reference(_images(40, 10).split(20), folder / "dinov2_ref.npz",
                                 weights=folder / "dinov2_tiny.pth", feats=True)
    return folder, ref


def _mixture() -> GaussianMixture:
    means = torch.tensor([[[0.5, -0.5], [0.2, 0.0]], [[-0.5, 0.5], [0.0, -0.3]]]).unsqueeze(1)
    return GaussianMixture(means, torch.tensor([0.2, 0.3]), VPSDE(), weights=torch.tensor([0.3, 0.7]))


def _case(name: str, inception) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    if name in ("fid", "kid", "prdc"):
        folder, ref = inception
        opts = {"dataset": "toy", "res": 32, "split": "train", "inception": folder, "backend": "scorebench",
                "ref_path": ref}
        if name == "prdc":
            opts |= {"ref_path": ref.with_name(ref.name[: -len(".npz")] + "_kid.npz"), "block": 7}
        if name == "kid":
            opts |= {"ref_path": ref.with_name(ref.name[: -len(".npz")] + "_kid.npz"), "num_subsets": 7,
                     "max_subset_size": 30}
        return opts, _images(60, 11, shift=0.1)
    if name == "inception_score":
        return {"inception": inception[0]}, _images(60, 11, shift=0.1)
    if name == "fd_dinov2":
        pytest.importorskip("transformers")
        folder = inception[0]
        return {"dinov2": str(folder / "dinov2_tiny.pth"), "dinov2_ref": str(folder / "dinov2_ref.npz")}, _images(
            60, 11, shift=0.1)
    if name == "prdc_dinov2":
        pytest.importorskip("transformers")
        folder = inception[0]
        return {"dinov2": str(folder / "dinov2_tiny.pth"), "dinov2_feats": str(folder / "dinov2_ref_feats.npz"),
                "block": 7}, _images(60, 11, shift=0.1)
    if name == "fd_digits":
        return {}, torch.rand(60, 1, 8, 8, generator=g)
    if name == "fd_fashion":
        return {}, torch.rand(60, 1, 28, 28, generator=g)
    mixture = _mixture()
    return {"model": mixture}, mixture.sample_data(60, generator=g) + 0.05


def _round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def results(name: str, metric) -> dict:
    """``{record column: (value, protocol)}`` of a filled accumulator (several for ``prdc``)."""
    return METRICS[name].results(metric)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# clip_score needs prompts with its samples: its merge and uncertainty are tested in test_clip_score.py.
@pytest.mark.parametrize("name", sorted(set(SAMPLE_METRICS) - {"clip_score"}))
def test_merged_shards_equal_one_pass(name, inception):
    opts, x = _case(name, inception)
    ids = torch.arange(100, 100 + len(x))
    whole = make_metric(name, **opts)
    for i in range(0, len(x), BATCH):
        whole.update(x[i: i + BATCH], ids[i: i + BATCH])
    expected = results(name, whole)

    states = []
    for lo, hi in zip(CUTS[:-1], CUTS[1:], strict=True):
        shard = make_metric(name, **opts)
        for i in range(lo, hi, BATCH):
            shard.update(x[i: min(i + BATCH, hi)], ids[i: min(i + BATCH, hi)])
        states.append(_round_trip(shard.state()))
    for order in ((2, 0, 1), (1, 2, 0)):
        merged = make_metric(name, **opts)
        for k in order:
            merged.merge(states[k])
        for column, (value, merged_protocol) in results(name, merged).items():
            assert _rel(value, expected[column][0]) <= 1e-9, (column, value, expected[column][0])
            assert merged_protocol["num_generated"] == expected[column][1]["num_generated"] == len(x)
    # An empty shard merges as nothing, and a state of another metric is refused.
    merged.merge(_round_trip(make_metric(name, **opts).state()))
    assert all(_rel(v, expected[c][0]) <= 1e-9 for c, (v, _) in results(name, merged).items())
    other = "loglik_exact" if name != "loglik_exact" else "fd_exact"
    with pytest.raises(ValueError, match=f"cannot merge a state of metric {other!r}"):
        merged.merge({"metric": other})


def test_kid_order_is_by_id_so_shards_in_any_order_agree(inception):
    """KID's subsets depend on the order of the features: with ids, the order is theirs, not arrival's."""
    opts, x = _case("kid", inception)
    ids = torch.arange(len(x))
    forward, backward = make_metric("kid", **opts), make_metric("kid", **opts)
    forward.update(x, ids)
    backward.update(x[30:], ids[30:])
    backward.update(x[:30], ids[:30])
    assert forward.compute()[0] == backward.compute()[0]
    no_ids = make_metric("kid", **opts)
    no_ids.update(x[30:])
    no_ids.update(x[:30])
    assert no_ids.compute()[0] != forward.compute()[0]  # arrival order: different subsets
    with pytest.raises(ValueError, match="max_generated=50"):
        make_metric("kid", **opts, max_generated=50).update(x, ids)


def test_bpd_sums_merge_to_the_mean_and_standard_error():
    v = 3.0 + torch.randn(101, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.2
    ids = torch.arange(101)
    whole = BitsPerDim()
    for i in range(0, 101, 10):
        whole.update(v[i: i + 10], ids[i: i + 10], nfe=100 + i)
    mean, protocol = whole.compute()
    assert mean == pytest.approx(float(v.mean()), rel=1e-14)
    assert protocol["stderr"] == pytest.approx(float(v.std() / 101**0.5), rel=1e-10)
    shards = []
    for lo, hi in ((0, 40), (40, 41), (41, 101)):
        s = BitsPerDim()
        for i in range(lo, hi, 10):
            s.update(v[i: min(i + 10, hi)], ids[i: min(i + 10, hi)], nfe=100 + i)
        shards.append(_round_trip(s.state()))
    merged = BitsPerDim()
    for k in (2, 0, 1):
        merged.merge(shards[k])
    m2, p2 = merged.compute()
    assert _rel(m2, mean) <= 1e-12 and _rel(p2["stderr"], protocol["stderr"]) <= 1e-9
    assert p2["nfe_per_batch"] == [100 + i for i in (0, 10, 20, 30)] + [140] + [100 + i for i in range(41, 101, 10)]


def _state_bytes(state) -> int:
    """Bytes of the tensors and arrays in a state dict (nested), as torch.save stores them."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return 0


@pytest.mark.parametrize("name", sorted(set(SAMPLE_METRICS) - {"clip_score"}))
def test_state_size_is_what_the_registry_declares(name, inception):
    """docs/metrics.md's memory statement: a metric with ``state_bytes == 0`` keeps a state of the same size
    after 20 and 60 samples; one that keeps per-sample rows grows by its rows and their int64 ids, at most
    ``state_bytes`` + 8 bytes a sample (``state_bytes`` is declared for the real feature network; the
    stand-ins here are no wider)."""
    opts, x = _case(name, inception)
    sizes = {}
    for n in (20, 60):
        metric = make_metric(name, **opts)
        for i in range(0, n, BATCH):
            metric.update(x[i: min(i + BATCH, n)], torch.arange(i, min(i + BATCH, n)))
        sizes[n] = _state_bytes(metric.state())
    per_sample = (sizes[60] - sizes[20]) / 40
    declared = METRICS[name].state_bytes
    if declared == 0:
        assert per_sample == 0, (name, sizes)
    else:
        assert 8 < per_sample <= declared + 8, (name, per_sample, declared)
