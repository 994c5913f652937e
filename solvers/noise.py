"""Noise sources: every random draw of a sampler goes through one of these (never global RNG state).

* :class:`SeededNoise` — one generator per sample (EDM's per-sample seeding): sample i is identical
  at any batch size, and every solver of a sweep sees the same seeds.
* :class:`RecordedNoise` — replays a recorded sequence of draws (the official fixtures).
* :class:`BrownianNoise` — increments of one Brownian path (torchsde's BrownianInterval), so the same
  path can be integrated at several step counts (strong-order tests).

API: ``normal(shape, dtype=, device=, index=None)`` returns standard normals of ``shape`` ([B, ...]);
``increment(t, t_next, shape, ...)`` returns the standard normal tied to the interval [t_next, t]
(equal to ``normal`` except for Brownian paths); ``index`` selects a subset of the samples (adaptive
per-sample solvers draw only for their running samples).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["SeededNoise", "RecordedNoise", "BrownianNoise", "parse_seeds"]


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


class SeededNoise:
    """One torch.Generator per sample, seeded with that sample's seed."""

    def __init__(self, seeds: str | int | Iterable[int], device: str | torch.device = "cpu") -> None:
        self.seeds = parse_seeds(seeds)
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def normal(self, shape, dtype=torch.float32, device=None, index: Tensor | None = None) -> Tensor:
        gens = self.generators if index is None else [self.generators[i] for i in index.tolist()]
        if shape[0] != len(gens):
            raise ValueError(f"SeededNoise: asked for {shape[0]} samples but has {len(gens)} seeds")
        z = torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=self.device) for g in gens])
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
    """A Brownian path W on [t_min, t_max] (torchsde.BrownianInterval); ``increment`` returns
    (W(t) − W(t_next)) / √(t − t_next), the same path whatever the step count.

    ``normal`` (used by non-SDE draws such as the prior) comes from a separate seeded generator.
    """

    def __init__(self, shape, seed: int = 0, t_min: float = 0.0, t_max: float = 1.0,
                 dtype=torch.float64, device="cpu") -> None:
        import torchsde

        self.shape = tuple(shape)
        self.bm = torchsde.BrownianInterval(t0=t_min, t1=t_max, size=self.shape, dtype=dtype,
                                            device=device, entropy=seed, tol=1e-9)
        self.gen = torch.Generator(device).manual_seed(seed + 1)
        self.device = device

    def normal(self, shape, dtype=torch.float64, device=None, index=None) -> Tensor:
        del index
        z = torch.randn(tuple(shape), generator=self.gen, dtype=dtype, device=self.device)
        return z if device is None else z.to(device)

    def increment(self, t: Tensor, t_next: Tensor, shape, dtype=torch.float64, device=None, index=None) -> Tensor:
        del index
        if tuple(shape) != self.shape:
            raise ValueError(f"BrownianNoise: path has shape {self.shape}, asked {tuple(shape)}")
        t0, t1 = float(t_next[0]), float(t[0])
        dw = self.bm(t0, t1)
        return (dw / (t1 - t0) ** 0.5).to(dtype=dtype, device=device or self.device)
