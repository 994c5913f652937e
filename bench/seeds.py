"""A run's seeds as ranges, never as an expanded list.

``'0-49999'``, ``'0-9,20,30-31'``, an int or a list of ints describe one seed per sample; sample
*i* of a run is drawn from the *i*-th seed. :class:`SeedRanges` keeps them as half-open ranges, so
``num_samples: 1000000000`` costs two integers, and hands out only the slice a batch needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SeedRanges"]


@dataclass(frozen=True)
class SeedRanges:
    """Seeds as ``((lo, hi), ...)`` half-open ranges in sample order (adjacent ranges joined)."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, spec: str | int | Iterable[int]) -> SeedRanges:
        """``'0-9'`` / ``'0-9,20,30-31'`` / ``7`` / ``[1, 2]`` → ranges (``ValueError`` if malformed)."""
        if isinstance(spec, bool):
            raise ValueError(f"not a seed: {spec!r}")
        if isinstance(spec, int):
            parts = [(spec, spec + 1)]
        elif isinstance(spec, str):
            parts = []
            for part in spec.split(","):
                part = part.strip()
                if not part:
                    continue
                if "-" in part[1:]:
                    k = part.index("-", 1)
                    lo, hi = int(part[:k]), int(part[k + 1:])
                    if hi < lo:
                        raise ValueError(f"seed range {part!r} is empty (end before start)")
                    parts.append((lo, hi + 1))
                else:
                    parts.append((int(part), int(part) + 1))
        else:
            parts = []
            for s in spec:
                if isinstance(s, bool) or not isinstance(s, int):
                    raise ValueError(f"not a seed: {s!r}")
                parts.append((s, s + 1))
        joined: list[tuple[int, int]] = []
        for lo, hi in parts:
            if joined and joined[-1][1] == lo:
                joined[-1] = (joined[-1][0], hi)
            else:
                joined.append((lo, hi))
        return cls(tuple(joined))

    def __len__(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges)

    def head(self, n: int) -> SeedRanges:
        """The first ``n`` seeds."""
        out, left = [], n
        for lo, hi in self.ranges:
            if left <= 0:
                break
            out.append((lo, min(hi, lo + left)))
            left -= out[-1][1] - lo
        return SeedRanges(tuple(out))

    def slice(self, start: int, stop: int) -> list[int]:
        """The seeds of samples ``start .. stop-1`` (one batch: the only place a list is built)."""
        out, pos = [], 0
        for lo, hi in self.ranges:
            n = hi - lo
            a, b = max(start - pos, 0), min(stop - pos, n)
            if a < b:
                out.extend(range(lo + a, lo + b))
            pos += n
            if pos >= stop:
                break
        return out

    def shifted(self, offset: int) -> SeedRanges:
        """Every seed plus ``offset``."""
        return SeedRanges(tuple((lo + offset, hi + offset) for lo, hi in self.ranges))

    def seed_sets(self, k: int) -> list[SeedRanges]:
        """``k`` disjoint seed sets: this one and its shifts by multiples of its span (max − min + 1), as EDM's
        three FID sets 0-49999, 50000-99999, 100000-149999."""
        span = max(hi for _, hi in self.ranges) - min(lo for lo, _ in self.ranges)
        return [self.shifted(j * span) for j in range(k)]

    def __str__(self) -> str:
        """The compact spec: ``'0-99'``, ``'0-9,20,30-31'``."""
        return ",".join(f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}" for lo, hi in self.ranges)
