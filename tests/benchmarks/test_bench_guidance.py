"""Guidance and per-network counting (issue 26), on a real network: EDM2's magnitude-preserving U-Net
and preconditioning (the fixture's configuration, 3×16×16, 4 classes, random weights; no file needed).

* ``guided_step``: one classifier-free-guided denoiser evaluation on B rows (the wrapper builds the
  2B-row condition, runs ONE batched forward, splits and mixes) against one bare forward of the same
  2B rows, timed right before each round (:class:`~tests.benchmarks.conftest.Interleaved`); fails
  above :data:`~tests.benchmarks.bounds.GUIDED_STEP_BOUND`. Two separate B-row forwards (what a
  harness without batching pays) are timed too and reported beside it.
* ``counting_overhead``: what counting every network adds to a run: a guided Heun run whose networks
  are counted (:class:`models.tally.CountedModel` and the executor's snapshot per batch) against the
  same run uncounted, on a null network (so the difference is the counting alone), as a fraction of
  the same run's forwards on the real network; fails above
  :data:`~tests.benchmarks.bounds.COUNTING_BOUND`.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from models.edm.loader import sde_for
from models.edm2.encoders import sample_space_from_record
from models.edm2.loader import EDM2Score
from models.edm2.precond import Precond
from models.guidance import ClassifierFreeGuidance
from models.score import conditioned
from models.tally import CountedModel, Tally
from solvers import Problem, SeededNoise, make_sampler
from tests.benchmarks.bounds import COUNTING_BOUND, GUIDED_STEP_BOUND, check_bound
from tests.benchmarks.conftest import CLOCK, Interleaved

LABEL_DIM = 4


class NullLabelEDM2(EDM2Score):
    """EDM2's network with a null condition of zero label vectors — for timing only (EDM2's own
    networks are not trained with label dropout; its CFG guides by an unconditional network)."""

    def null_condition(self, n: int) -> torch.Tensor:
        return torch.zeros(n, LABEL_DIM)


def edm2_network(full_size: bool) -> NullLabelEDM2:
    torch.manual_seed(0)
    net = Precond(img_resolution=16, img_channels=3, label_dim=LABEL_DIM, model_channels=32 if full_size else 16,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], channels_per_head=16).eval()
    net.requires_grad_(False)
    return NullLabelEDM2(net, sde_for(net), sample_space_from_record(None, "benchmark"))


class NullPrecond(torch.nn.Module):
    """EDM2's interface at no cost (D(x) = x): a run on it is everything but the network."""

    label_dim, img_channels, img_resolution, sigma_min, sigma_max, kind = LABEL_DIM, 3, 16, 0.0, float("inf"), "edm"

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, sigma, class_labels=None):
        del sigma, class_labels
        return x


@pytest.mark.parametrize("batch", [8, 32])
def test_guided_step_vs_one_forward_of_2b_rows(benchmark, batch, full_size):
    batch = batch if full_size else 2
    model = edm2_network(full_size)
    labels = torch.arange(batch) % LABEL_DIM
    guided = conditioned(ClassifierFreeGuidance(model, 2.0), labels)
    x = torch.randn(batch, 3, 16, 16) * 2.0
    t = torch.full((batch,), 0.5, dtype=torch.float64)
    sigma = model.sde.marginal(t)[1]
    x2, sigma2 = torch.cat([x, x]), torch.cat([sigma, sigma]).float()
    labels2 = torch.cat([torch.eye(LABEL_DIM)[labels], torch.zeros(batch, LABEL_DIM)])
    one_hot = torch.eye(LABEL_DIM)[labels]

    def one_forward():  # the limit: one bare forward of the 2B rows
        t0 = CLOCK()
        model.precond(x2, sigma2, labels2)
        return CLOCK() - t0

    def two_forwards():  # what two separate calls (conditional, unconditional) cost
        t0 = CLOCK()
        model.precond(x, sigma2[:batch], one_hot)
        model.precond(x, sigma2[:batch], torch.zeros(batch, LABEL_DIM))
        return CLOCK() - t0

    limit, two = Interleaved(one_forward), []

    def setup():  # the limit (and two B-row forwards) right before each round
        limit()
        two.append(two_forwards())

    with torch.no_grad():
        out = benchmark.pedantic(guided.data_and_noise, args=(x, t), setup=setup, rounds=15 if full_size else 1,
                                 warmup_rounds=1 if full_size else 0)
    assert out[0].shape == x.shape
    if benchmark.stats is not None:
        ratio = limit.ratio(benchmark)
        runs = benchmark.stats.stats.data
        two_ratio = statistics.median(a / b for a, b in zip(two[-len(runs):], limit.times[-len(runs):],
                                                             strict=True))
        benchmark.extra_info.update(batch=batch, ratio_to_one_2b_forward=ratio, two_b_forwards_over_one=two_ratio,
                                    forward_2b_s=limit.per_call(benchmark, 1), bound=GUIDED_STEP_BOUND)
        print(f"\nbatch {batch}: guided step / one 2B-row forward = {ratio:.3f}; "
              f"two B-row forwards / one 2B-row forward = {two_ratio:.3f}")
        check_bound(f"CFG step at batch {batch} / one forward of {2 * batch} rows", ratio, GUIDED_STEP_BOUND)


def _guided_run(model, counted: bool, batch: int, n_steps: int):
    """A guided Heun run; ``counted``: every network counted and read per batch as the executor does."""
    tally = Tally()
    inner = CountedModel(model, tally, "denoiser") if counted else model
    labels = torch.arange(batch) % LABEL_DIM
    problem = Problem(ClassifierFreeGuidance(inner, 2.0)).conditioned(labels)
    noise = SeededNoise(range(batch))
    x = problem.prior_sample(batch, noise)
    sampler = make_sampler("edm_heun", n_steps=n_steps)

    def run():
        t0 = CLOCK()
        before = tally.snapshot()
        sol = sampler.sample(problem, x, noise)
        if counted:
            assert tally.since(before)["denoiser"]["calls"] == sol.stats.nfe
        return CLOCK() - t0

    return run


def test_counting_overhead(benchmark, full_size):
    batch, n_steps = (16, 10) if full_size else (2, 3)
    null = NullLabelEDM2(NullPrecond(), sde_for(NullPrecond()), sample_space_from_record(None, "benchmark"))
    real = edm2_network(full_size)
    counted_null, plain_null = _guided_run(null, True, batch, n_steps), _guided_run(null, False, batch, n_steps)
    real_run = _guided_run(real, False, batch, n_steps)
    rounds = 15 if full_size else 1
    diffs, reals = [], []
    with torch.no_grad():
        real_run()  # warm-up
        for _ in range(rounds):  # paired: counted and plain null runs back to back, then the real run
            diffs.append(counted_null() - plain_null())
            reals.append(real_run())
        benchmark.pedantic(counted_null, rounds=1)
    overhead = statistics.median(diffs) / statistics.median(reals)
    benchmark.extra_info.update(batch=batch, n_steps=n_steps, counting_s_per_run=statistics.median(diffs),
                                real_run_s=statistics.median(reals), overhead_fraction=overhead, bound=COUNTING_BOUND)
    print(f"\ncounting every network: {statistics.median(diffs) * 1e3:.3f} ms per run of "
          f"{statistics.median(reals) * 1e3:.1f} ms = {overhead:.4%}")
    if full_size:
        check_bound("per-network counting / a guided run's network time", overhead, COUNTING_BOUND)
