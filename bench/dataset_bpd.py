"""Bits/dim of a dataset split under a run's model: the work of a run's ``bpd`` shard.

The probability-flow likelihood of every image (:class:`solvers.ProbabilityFlowLikelihood`),
accumulated in :class:`bench.metrics.bpd.BitsPerDim` (mergeable float64 sums).
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["dataset_bpd"]


def dataset_bpd(run, problem, device: str, dtype: torch.dtype) -> tuple[float, dict]:
    """Mean bits/dim of the run's dataset split under the run's model, SDE and prior.

    The probability-flow likelihood (:class:`solvers.ProbabilityFlowLikelihood`, options from the
    run's ``likelihood``; score_sde's RK45, rtol = atol = 1e-5, Rademacher probe by default) of the
    first ``data.bpd_samples`` images of ``data.split`` (default: the whole test split), over
    ``data.bpd_repeats`` passes (score_sde: 5 on the CIFAR-10 test set), uniformly dequantised with
    one seeded generator per image and pass and one Hutchinson probe per image and pass, so the value
    does not depend on the batch size. Mean and standard error over images × passes.
    """
    from bench.metrics.bpd import BitsPerDim
    from models.datasets import load_dataset
    from solvers import SeededNoise
    from solvers.likelihood import ProbabilityFlowLikelihood, dequantize

    data = run.data
    lik = ProbabilityFlowLikelihood(**run.likelihood)
    ds = load_dataset(data["dataset"], data.get("split", "test"), root=data.get("root"))
    if ds.levels is None:
        raise ValueError(f"bpd needs discrete data; dataset {ds.name!r} is continuous")
    n = min(int(data.get("bpd_samples", len(ds))), len(ds))
    bs = int(data.get("bpd_batch_size", run.batch_size))
    repeats = int(data.get("bpd_repeats", 1))
    data_range = tuple(problem.score.data_range)
    acc = BitsPerDim()
    for r in range(repeats):  # score_sde: 5 passes over the CIFAR-10 test set, fresh dequantisation/probe
        for i in range(0, n, bs):
            pixels = ds.data[i: i + bs]
            idx = range(i, i + len(pixels))
            u = torch.stack([torch.rand(pixels.shape[1:], generator=torch.Generator().manual_seed(
                10**6 * (r + 1) + j), dtype=torch.float64) for j in idx])
            x = dequantize(pixels, ds.levels, data_range, u=u).to(device=device, dtype=dtype)
            probe = SeededNoise([10**7 * r + j for j in idx], device=device)
            res = lik(problem, x, probe, levels=ds.levels, data_range=data_range)
            if res.status != "ok":
                raise RuntimeError(f"bpd: likelihood solve failed on images {i}-{i + len(pixels) - 1} "
                                   f"(pass {r}): {res.message}")
            acc.update(res.bpd, torch.arange(r * n + i, r * n + i + len(pixels)), nfe=res.nfe)
    value, sums = acc.compute()
    protocol = {"metric": "bpd", "dataset": ds.name, "split": ds.split, "num_images": n, "repeats": repeats,
                "levels": ds.levels, "data_range": list(data_range), "offset_bits": res.offset,
                "likelihood": dataclasses.asdict(lik),
                "dequantization": "uniform, seed 1e6*(pass+1)+index per image",
                "probe_seeds": "1e7*pass + image index",
                "stderr": sums["stderr"], "nfe_per_batch": sums["nfe_per_batch"], "batch_size": bs, "T": problem.sde.T,
                "uncertainty": sums["uncertainty"]}
    return value, protocol
