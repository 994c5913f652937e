"""Exact metrics for exact-score Gaussian mixtures (:class:`models.gaussian.GaussianMixture`).

With the data distribution known in closed form, a sampler's error needs no feature network:

* ``fd_exact``: Fréchet distance in data space between the samples' mean and covariance
  (flattened, streaming float64) and the mixture's exact ``mean()`` and ``covariance()``.
* ``sw2_exact``: sliced Wasserstein-2 between the samples and as many exact samples of the
  mixture (reference seed fixed), over ``n_projections`` fixed random unit directions
  (projection seed fixed): √(mean over directions of the 1-D W₂² between the projected sets).
* ``loglik_exact``: the mean exact log-density ``log p₀(x)`` of the samples, in nats per sample.

Mergeable state (shards): ``fd_exact`` and ``loglik_exact`` keep float64 sums; ``sw2_exact`` needs
the sorted projections, so its state is every sample's projections, float64 [N, n_projections]
(2 KiB a sample at the default 256 directions; at most ``max_generated`` samples, default 10⁶).

All three take samples in the mixture's own data space (no range mapping, no quantisation).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from bench.metrics.feature_fd import FrechetMetric, check_state
from bench.metrics.grouped_mean import GroupedMean
from bench.metrics.reference import ReferenceStats
from bench.metrics.registry import MetricEntry, RunFacts
from bench.metrics.uncertainty import GROUPS, jackknife, leave_one_out, seed_groups, unavailable

__all__ = ["FD_EXACT", "LOGLIK_EXACT", "SW2_EXACT", "MeanLogLikelihood", "SlicedW2", "make_exact_fd", "wasserstein2_1d"]

REFERENCE_CHUNK = 4096  # exact reference samples are drawn in chunks of this size (fixed: results don't
#                         depend on how the generated samples were batched)


def _flat64(x: Tensor) -> Tensor:
    x = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("samples contain non-finite values")
    return x


def _mixture_protocol(mixture) -> dict:
    return {"mixture": {"components": int(mixture.means.shape[0]), "shape": list(mixture.means.shape[1:]),
                        "dim": int(mixture.dim)}}


def make_exact_fd(model, *, seeds: str | None = None) -> FrechetMetric:
    """``fd_exact``: data-space Fréchet distance to the mixture's exact moments.

    Args:
        model: a :class:`~models.gaussian.GaussianMixture` (``mean()``, ``covariance()``).
        seeds: the samples' seeds, copied into the protocol.
    """
    reference = ReferenceStats(model.mean().double().numpy(), model.covariance().double().numpy(), None,
                               {"reference": "exact mixture mean and covariance"})
    protocol = {"feature_network": None, "space": "data (flattened)", **_mixture_protocol(model),
                "frechet": "scorebench eigh (float64)", "seeds": seeds}
    return FrechetMetric("fd_exact", _flat64, reference, protocol)


def wasserstein2_1d(a: Tensor, b: Tensor, presorted: bool = False) -> Tensor:
    """Squared W₂ between 1-D empirical measures, column by column: a [N, P], b [M, P] → [P].

    Exact for any N, M: the quantile functions are step functions, integrated over the union of
    their breakpoints. ``presorted``: both are already sorted along dim 0.
    """
    if not presorted:
        a, b = a.sort(0).values, b.sort(0).values
    n, m = a.shape[0], b.shape[0]
    if n == m:
        return ((a - b) ** 2).mean(0)
    u = torch.unique(torch.cat([torch.arange(1, n + 1) / n, torch.arange(1, m + 1) / m]).double())
    width = torch.diff(u, prepend=torch.zeros(1, dtype=torch.float64))
    mid = u - width / 2
    ia, ib = (mid * n).long().clamp_max(n - 1), (mid * m).long().clamp_max(m - 1)
    return (width[:, None] * (a[ia] - b[ib]) ** 2).sum(0)


class SlicedW2:
    """``sw2_exact`` accumulator: sliced W₂ against exact mixture samples.

    Args:
        model: a :class:`~models.gaussian.GaussianMixture` (``sample_data(n, generator)``).
        n_projections: number of random unit directions.
        projection_seed: seed of the directions.
        reference_seed: seed of the exact reference samples.
        n_reference: number of reference samples (default: as many as generated).
        seeds: the samples' seeds, copied into the protocol.
        max_generated: most generated samples accepted (their projections are kept).
    """

    name = "sw2_exact"

    def __init__(self, model, *, n_projections: int = 256, projection_seed: int = 0, reference_seed: int = 1,
                 n_reference: int | None = None, seeds: str | None = None, max_generated: int = 10**6) -> None:
        self.model = model
        self.max_generated = max_generated
        g = torch.Generator().manual_seed(projection_seed)
        theta = torch.randn(model.dim, n_projections, generator=g, dtype=torch.float64)
        self.directions = theta / theta.norm(dim=0, keepdim=True)  # [D, P]
        self.reference_seed, self.n_reference = reference_seed, n_reference
        self._proj: list[Tensor] = []
        self._groups: list[Tensor] | None = []  # seed group of every sample [B] per batch; None without seeds
        self._protocol = {**_mixture_protocol(model), "n_projections": n_projections,
                          "projection_seed": projection_seed, "reference_seed": reference_seed,
                          "reference": "exact mixture samples", "seeds": seeds}

    def update(self, samples: Tensor, ids: Tensor | None = None) -> None:
        """Add a batch of samples [B, *shape] (only their projections [B, P] are kept, with the seed group of
        each, ``seed mod GROUPS``, for the uncertainty; W₂ sorts them, so their order does not matter)."""
        proj = _flat64(samples) @ self.directions
        self._add(proj)
        self._add_groups(None if ids is None else seed_groups(ids), proj.shape[0])

    def _add_groups(self, groups: Tensor | None, n: int) -> None:
        if groups is None:
            if n:
                self._groups = None
        elif self._groups is not None:
            self._groups.append(torch.as_tensor(groups, dtype=torch.int64).reshape(-1).cpu())

    def _add(self, proj: Tensor) -> None:
        n = sum(p.shape[0] for p in self._proj) + proj.shape[0]
        if n > self.max_generated:
            raise ValueError(f"sw2_exact keeps every sample's projections ({8 * proj.shape[1]} bytes each): "
                             f"{n} samples exceed max_generated={self.max_generated}")
        self._proj.append(proj)

    def state(self) -> dict:
        """The projections, float64 [N, P] (not sums: the 1-D W₂ needs the sorted values)."""
        proj = torch.cat(self._proj) if self._proj else torch.zeros(0, self.directions.shape[1], dtype=torch.float64)
        groups = None if self._groups is None else torch.cat(self._groups) if self._groups else \
            torch.zeros(0, dtype=torch.int64)
        return {"metric": self.name, "proj": proj, "groups": groups}

    def merge(self, state: dict) -> None:
        """Add another accumulator's projections (from :meth:`state`, same directions)."""
        check_state(self.name, state)
        proj = torch.as_tensor(state["proj"], dtype=torch.float64)
        if proj.dim() != 2 or proj.shape[1] != self.directions.shape[1]:
            raise ValueError(f"sw2_exact state has projections of shape {list(proj.shape)}, expected "
                             f"[N, {self.directions.shape[1]}]")
        if proj.shape[0]:
            self._add(proj)
            self._add_groups(state.get("groups"), proj.shape[0])

    def _reference(self, n: int) -> Tensor:
        g = torch.Generator().manual_seed(self.reference_seed)
        chunks = [_flat64(self.model.sample_data(min(REFERENCE_CHUNK, n - i), generator=g)) @ self.directions
                  for i in range(0, n, REFERENCE_CHUNK)]
        return torch.cat(chunks)

    def compute(self) -> tuple[float, dict]:
        gen, order = torch.cat(self._proj).sort(0)  # each direction's projections sorted once
        n_ref = self.n_reference or gen.shape[0]
        ref = self._reference(n_ref).sort(0).values
        value = math.sqrt(float(wasserstein2_1d(gen, ref, presorted=True).mean()))
        return value, {"metric": self.name, **self._protocol, "num_generated": gen.shape[0],
                       "num_reference": n_ref, "uncertainty": self._uncertainty(value, gen, order, ref)}

    def _uncertainty(self, value: float, gen: Tensor, order: Tensor, ref: Tensor) -> dict:
        """Jackknife over seed groups; every replicate against the same reference set (size fixed by N).

        ``gen`` [N, P] is sorted per direction (``order``: the sorting permutation), so removing a
        group's samples from every column leaves the rest sorted: no replicate sorts again.
        """
        if self._groups is None:
            return unavailable("samples came without seeds (ids)")
        groups = torch.cat(self._groups)
        sizes = torch.bincount(groups, minlength=GROUPS).tolist()
        sorted_groups = groups[order].T  # [P, N]: the group of each sorted entry, per direction
        gen_t = gen.T

        def without(g: int) -> float:
            rest = gen_t[sorted_groups != g].reshape(gen_t.shape[0], -1).T  # every column loses the same samples
            return math.sqrt(float(wasserstein2_1d(rest, ref, presorted=True).mean()))

        replicates, used = leave_one_out(sizes, without)
        return jackknife(value, replicates, used, positive=True)  # a distance: its interval stays above 0


class MeanLogLikelihood:
    """``loglik_exact`` accumulator: mean exact log p₀(x) of the samples (nats per sample).

    The protocol also carries the standard error and the same number in bits per dimension
    (−mean / (D ln 2); a density of continuous data, so no dequantization offset).

    Args:
        model: a :class:`~models.gaussian.GaussianMixture` (``log_prob_data(x) -> [B]``).
        seeds: the samples' seeds, copied into the protocol.
    """

    name = "loglik_exact"

    def __init__(self, model, *, seeds: str | None = None) -> None:
        self.model = model
        self.sums = GroupedMean()  # n, Σ log p, Σ (log p)², and per seed group for the jackknife
        self._protocol = {**_mixture_protocol(model), "reference": "exact mixture density log p_0", "seeds": seeds}

    def update(self, samples: Tensor, ids: Tensor | None = None) -> None:
        """Add a batch of samples [B, *shape] with their seeds ``ids`` [B] (for the uncertainty)."""
        _flat64(samples)  # finiteness check
        self.sums.add(self.model.log_prob_data(samples.detach().to(torch.float64)).to(torch.float64).cpu(), ids)

    def state(self) -> dict:
        """n, Σ log p and Σ (log p)² in float64, and the per-group sums."""
        return {"metric": self.name, **self.sums.state()}

    def merge(self, state: dict) -> None:
        """Add another accumulator's sums (from :meth:`state`)."""
        check_state(self.name, state)
        self.sums.merge(state)

    def compute(self) -> tuple[float, dict]:
        s = self.sums
        if s.n == 0:
            raise ValueError("no samples added")
        mean = s.sum / s.n
        var = max(s.sq / s.n - mean**2, 0.0) * s.n / max(s.n - 1, 1)
        return mean, {"metric": self.name, **self._protocol, "num_generated": s.n,
                      "stderr": float(np.sqrt(var / s.n)),
                      "bits_per_dim": -mean / (self.model.dim * math.log(2)), "uncertainty": s.uncertainty(mean)}


def _options(facts: RunFacts) -> dict:
    return {"model": facts.model, "seeds": facts.seeds}


def _exact_model(kind: str, shape: tuple[int, ...] | None, conditional: bool) -> str | None:
    return None if kind in ("mixture", "callable") else "it needs an exact mixture model (kind: mixture)"


def _entry(name: str, summary: str, build, lower_is_better: bool = True, **kw) -> MetricEntry:
    return MetricEntry(name=name, summary=summary, build=build, options=_options, lower_is_better=lower_is_better,
                       applies=_exact_model, needs_model=True, **kw)


FD_EXACT = _entry("fd_exact", "data-space Fréchet distance to an exact mixture's moments", make_exact_fd)
SW2_EXACT = _entry("sw2_exact", "sliced Wasserstein-2 to exact mixture samples", SlicedW2, state_bytes=8 * 256,
                   max_generated=10**6)
LOGLIK_EXACT = _entry("loglik_exact", "mean exact log p_0(x) of the samples (nats)", MeanLogLikelihood,
                      lower_is_better=False)
