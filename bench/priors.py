"""Priors at T for the runs of a grid (the ``prior`` key of a sweep entry), built per run.

=========  ==================================================================================
kind       what the reverse process starts from
=========  ==================================================================================
gaussian   the SDE's Gaussian at T (``std``/``mean`` override it; ``variant: paper`` is the
           paper's VE N(0, σ(T)² − σ(0)²)) — the naive prior of Franzese et al. 2023, Table 1
moment     a Gaussian moment-matched to training data diffused to T (``covariance``: full/diag)
flow       a normalizing flow fitted by maximum likelihood to training data diffused to T
           (``steps``: training steps)
oracle     ORACLE — held-out data diffused to T (uses data; an upper bound on what a fitted
           prior can gain; the record says so)
file       a prior saved by ``models.fitted_priors.save_prior`` (``path``)
=========  ==================================================================================

Training data are the model's data section (``dataset``, split ``train``; the held-out split is
``test``) mapped to the model's range, or exact samples for an exact-score mixture. Fitted priors
are cached per process for (model, T, prior spec).
"""

from __future__ import annotations

import torch

from bench.records import canonical

__all__ = ["build_prior", "PRIOR_KINDS", "PRIOR_KEYS"]

PRIOR_KINDS = ("gaussian", "moment", "flow", "oracle", "file")
PRIOR_KEYS = {"gaussian": ("std", "mean", "variant"), "moment": ("covariance", "num_data", "copies"),
              "flow": ("steps", "num_data", "copies"), "oracle": ("num_data",), "file": ("path",)}
_CACHE: dict[str, object] = {}


def _data(model, data: dict, split: str, n: int, seed: int) -> torch.Tensor:
    """[n, ...] float64 data of the model in its range: a dataset split, or exact mixture samples."""
    if hasattr(model, "sample_data"):  # exact-score mixture: exact samples (different seeds per split)
        return model.sample_data(n, generator=torch.Generator().manual_seed(seed + (split == "test")))
    if not data.get("dataset"):
        raise ValueError("fitted priors need the model's data section (dataset) to diffuse to T")
    from models.datasets import load_dataset

    ds = load_dataset(data["dataset"], split, root=data.get("root"))
    pixels = ds.data[:n]
    lo, hi = model.data_range
    return lo + (hi - lo) * pixels.to(torch.float64) / (ds.levels - 1)


def build_prior(spec: dict, model, sde, data: dict, device: str = "cpu", model_key: str = ""):
    """The prior object (``sample``, ``log_prob``) a run's ``prior`` spec names, at ``sde.T``.

    ``model_key`` identifies the model for the cache of fitted priors (the run's canonical model section).
    """
    from models.fitted_priors import FlowPrior, MomentPrior, OraclePrior, diffuse, load_prior, naive_prior
    from models.priors import GaussianPrior

    kind = spec.get("kind", "gaussian")
    if kind == "gaussian":
        if "variant" in spec:
            return naive_prior(sde, spec["variant"])
        return GaussianPrior(sde, std=spec.get("std"), mean=spec.get("mean", 0.0))
    if kind == "file":
        prior = load_prior(spec["path"])
        T = getattr(prior, "T", None)
        if T is not None and abs(float(T) - sde.T) > 1e-9:
            raise ValueError(f"prior file {spec['path']} was fitted at T={T}, the run uses T={sde.T}")
        return prior
    key = canonical({"spec": spec, "sde": repr(sde), "model": model_key, "data": data})
    if key not in _CACHE:
        n = int(spec.get("num_data", 5000))
        if kind == "oracle":
            _CACHE[key] = OraclePrior(_data(model, data, "test", n, seed=0), sde)
        else:
            g = torch.Generator().manual_seed(0)
            x_T = diffuse(_data(model, data, "train", n, seed=0), sde, copies=int(spec.get("copies", 1)), generator=g)
            if kind == "moment":
                _CACHE[key] = MomentPrior.fit(x_T, covariance=spec.get("covariance", "full"), T=sde.T)
            else:
                _CACHE[key] = FlowPrior.fit(x_T, steps=int(spec.get("steps", 2000)), T=sde.T)
    return _CACHE[key]
