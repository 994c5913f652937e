"""Noise sources: every random draw of a sampler goes through one of these (never global RNG state).

* :class:`SeededNoise` — one generator per sample (EDM's per-sample seeding): sample i is identical
  at any batch size, and every solver of a sweep sees the same seeds.
* :class:`RecordedNoise` — replays a recorded sequence of draws (the official fixtures).
* :class:`BrownianNoise` — increments of one Brownian path on a fine grid, so the same path can be
  integrated at several step counts (strong-order tests).

API: ``normal(shape, dtype=, device=, index=None)`` returns standard normals of ``shape`` ([B, ...]);
``increment(t, t_next, shape, ...)`` returns the standard normal tied to the interval [t_next, t]
(equal to ``normal`` except for Brownian paths); ``index`` selects a subset of the samples (adaptive
per-sample solvers draw only for their running samples).

:func:`seed_labels` draws the class label of each seed for class-conditional models, from a stream
of its own (independent of the seed's noise).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

__all__ = ["SeededNoise", "RecordedNoise", "BrownianNoise", "parse_seeds", "seed_labels", "LABEL_STREAM"]

LABEL_STREAM = int.from_bytes(b"label", "big")  # 0x6C6162656C: the tag of the label streams


def parse_seeds(spec: str | int | Iterable[int]) -> list[int]:
    """'0-9' / '0-9,20,30-31' / 7 / [1, 2] → list of ints."""
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-")
                out.extend(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
        return out
    return [int(s) for s in spec]


def seed_labels(seeds: str | int | Iterable[int], num_classes: int) -> Tensor:
    """The class label of each seed, [B] int64, uniform over 0..num_classes − 1.

    label(s) = ``numpy.random.default_rng([LABEL_STREAM, s]).integers(num_classes)``: numpy's PCG64
    seeded through ``SeedSequence(entropy=[LABEL_STREAM, s])``, which hashes the pair. It is a function
    of the seed alone (the same at any batch size, shard or worker), and a stream of its own: the
    sample's noise comes from ``torch.Generator().manual_seed(s)`` (:class:`SeededNoise`), so the label
    is independent of the noise draws. (EDM's generate.py draws the label from the sample's own
    generator after its latents; seeding a generator with s for the label alone would tie the label
    to the sample's first noise draw.)
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
        raise ValueError(f"seed_labels: num_classes must be a positive integer, got {num_classes!r}")
    labels = [int(np.random.default_rng([LABEL_STREAM, int(s)]).integers(num_classes)) for s in parse_seeds(seeds)]
    return torch.tensor(labels, dtype=torch.int64)


class _Chunks:
    """One (sample shape, dtype)'s chunk buffer [B, chunk, ...] and each sample's next position."""

    def __init__(self, buf: Tensor, pos: list[int]) -> None:
        self.buf, self.pos = buf, pos


class SeededNoise:
    """One torch.Generator per sample, seeded with that sample's seed (EDM's per-sample seeding).

    Each sample's generator fills ``chunk`` draws of a given shape at a time (one ``randn`` call per
    sample every ``chunk`` draws instead of every draw): sample i's stream depends only on its seed and
    on the sequence of shapes asked for, never on the batch it is in. ``chunk`` defaults to
    max(1, min(16, 65536 // numel)) of the sample shape, a function of the shape only.

    A draw for the whole batch is a view into the chunk buffer (no copy); a refill writes a new
    buffer, never the one such views point into.
    """

    def __init__(self, seeds: str | int | Iterable[int], device: str | torch.device = "cpu",
                 chunk: int | None = None) -> None:
        self.seeds = parse_seeds(seeds)
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]
        self.chunk = chunk
        self._buffers: dict[tuple, _Chunks] = {}  # by (sample shape, dtype)

    def __len__(self) -> int:
        return len(self.seeds)

    def _chunk(self, numel: int) -> int:
        return self.chunk or max(1, min(16, 65536 // max(numel, 1)))

    def normal(self, shape, dtype=torch.float32, device=None, index: Tensor | None = None) -> Tensor:
        rows = list(range(len(self.seeds))) if index is None else index.tolist()
        if shape[0] != len(rows):
            raise ValueError(f"SeededNoise: asked for {shape[0]} samples but has {len(rows)} seeds")
        sample_shape = tuple(shape[1:])
        key = (sample_shape, dtype)
        if key not in self._buffers:
            k = self._chunk(int(torch.Size(sample_shape).numel()))
            buf = torch.empty((len(self.seeds), k, *sample_shape), dtype=dtype, device=self.device)
            self._buffers[key] = _Chunks(buf, [k] * len(self.seeds))
        chunks = self._buffers[key]
        k = chunks.buf.shape[1]
        empty = [b for b in rows if chunks.pos[b] >= k]
        if empty:  # refill the samples whose chunk is used up, in a new buffer
            buf = torch.empty_like(chunks.buf) if len(empty) == len(self.seeds) else chunks.buf.clone()
            for b in empty:
                torch.randn((k, *sample_shape), generator=self.generators[b], dtype=dtype,
                            device=self.device, out=buf[b])
                chunks.pos[b] = 0
            chunks.buf = buf
        if index is None and len(set(chunks.pos)) == 1:
            z = chunks.buf[:, chunks.pos[0]]  # a view, no copy (each position is handed out once)
        else:
            z = chunks.buf[torch.tensor(rows), torch.tensor([chunks.pos[b] for b in rows])]
        for b in rows:
            chunks.pos[b] += 1
        return z if device is None else z.to(device)

    def increment(self, t: Tensor, t_next: Tensor, shape, dtype=torch.float32, device=None,
                  index: Tensor | None = None) -> Tensor:
        del t, t_next
        return self.normal(shape, dtype=dtype, device=device, index=index)


class RecordedNoise:
    """Replays ``draws[k]`` for the k-th request, in order; running out is an error."""

    def __init__(self, draws: Tensor | list[Tensor]) -> None:
        self.draws = list(draws)
        self.k = 0

    def normal(self, shape, dtype=torch.float32, device=None, index: Tensor | None = None) -> Tensor:
        if self.k >= len(self.draws):
            raise RuntimeError(f"RecordedNoise: all {len(self.draws)} recorded draws are used up")
        z = self.draws[self.k]
        self.k += 1
        if index is not None:
            z = z[index]
        if tuple(z.shape) != tuple(shape):
            raise ValueError(f"RecordedNoise: draw {self.k - 1} has shape {tuple(z.shape)}, asked {tuple(shape)}")
        return z.to(dtype=dtype, device=device if device is not None else z.device)

    def increment(self, t, t_next, shape, dtype=torch.float32, device=None, index=None) -> Tensor:
        del t, t_next
        return self.normal(shape, dtype=dtype, device=device, index=index)


class BrownianNoise:
    """One Brownian path W on a fine uniform grid of ``n_fine`` intervals over [t_min, t_max]
    (DESIGN's BrownianGrid): ``increment(t, t_next)`` returns (W(t) − W(t_next)) / √(t − t_next), so the
    same path is integrated at every step count whose grid points lie on the fine grid.

    ``normal`` (draws not tied to an interval, e.g. Langevin noise) comes from a separate generator.
    """

    def __init__(self, shape, seed: int = 0, t_min: float = 0.0, t_max: float = 1.0, n_fine: int = 4096,
                 dtype=torch.float64, device="cpu") -> None:
        gen = torch.Generator(device).manual_seed(seed)
        self.shape, self.t_min, self.n_fine = tuple(shape), t_min, n_fine
        self.dt = (t_max - t_min) / n_fine
        dw = torch.randn((n_fine, *self.shape), generator=gen, dtype=dtype, device=device) * self.dt**0.5
        self.W = torch.cat([torch.zeros((1, *self.shape), dtype=dtype, device=device), dw.cumsum(0)])
        self.gen = torch.Generator(device).manual_seed(seed + 1)
        self.device = device

    def normal(self, shape, dtype=torch.float64, device=None, index=None) -> Tensor:
        del index
        z = torch.randn(tuple(shape), generator=self.gen, dtype=dtype, device=self.device)
        return z if device is None else z.to(device)

    def _index(self, t: float) -> int:
        u = (t - self.t_min) / self.dt
        k = round(u)
        if abs(u - k) > 1e-6 or not 0 <= k <= self.n_fine:
            raise ValueError(f"BrownianNoise: t={t} is not a point of the fine grid ({self.n_fine} intervals)")
        return k

    def increment(self, t: Tensor, t_next: Tensor, shape, dtype=torch.float64, device=None, index=None) -> Tensor:
        del index
        if tuple(shape) != self.shape:
            raise ValueError(f"BrownianNoise: path has shape {self.shape}, asked {tuple(shape)}")
        t1, t0 = float(t[0]), float(t_next[0])
        dw = self.W[self._index(t1)] - self.W[self._index(t0)]
        return (dw / (t1 - t0) ** 0.5).to(dtype=dtype, device=device or self.device)
