"""ADM's timestep respacing (Nichol & Dhariwal 2021, §4; openai/guided-diffusion ``respace.py``) as
grids of a discrete-time path: which of the table's N timesteps a sampler visits.

:func:`space_timesteps` (``section_counts``: comma-separated counts, or ``"ddimK"``) is ADM's rule
(shared/fixtures/adm/README.md §4):

* counts ``"c1,c2,…"``: the N steps are cut into equal sections (the first ``N % len`` one step
  longer); in a section of ``size`` steps with ``count`` kept, ``stride = (size − 1)/(count − 1)``
  (float), and the kept steps are ``start + round(cur)`` for ``cur = 0, stride, 2·stride, …`` (``cur``
  accumulated by repeated addition; Python's ``round``, ties to even);
* ``"ddimK"``: the smallest integer stride i ≥ 1 with ``len(range(0, N, i)) == K``; kept
  ``0, i, 2i, …`` (N − 1 itself is not kept in general: ``ddim10`` on 1000 steps keeps 0, …, 900).

As schedules of :class:`solvers.fixed.FixedSteps` (registered in :data:`solvers.grids.SCHEDULES`):
``adm_respaced`` (one section of ``n_steps`` counts: ADM's ``timestep_respacing="<n>"``) and
``adm_ddim`` (ADM's ``"ddim<n>"``). Kept timestep k sits at the path's time t = (k + 1)/N
(:class:`models.paths.TabulatedPath`); the timesteps are those of the table between eps and T
(all N with the path's defaults). ``adm_ddim``'s grid starts at its first kept step, below T, as
ADM's loop does (the prior's draw is fed there).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["space_timesteps", "respaced_grid", "RESPACED_SCHEDULES"]

RESPACED_SCHEDULES = ("adm_respaced", "adm_ddim")


def space_timesteps(num_timesteps: int, section_counts: str | list[int]) -> list[int]:
    """ADM's kept timesteps of an N-step table, ascending (module docstring); ValueError where ADM's
    rule has no answer (a ``ddimK`` no integer stride gives, a section asked for more steps than it has)."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"space_timesteps: no integer stride gives exactly {want} of {num_timesteps} steps "
                             f"({section_counts!r})")
        section_counts = [int(c) for c in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"space_timesteps: cannot keep {count} steps of a section of {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(kept))


def _table_length(name: str, sde) -> int:
    table = getattr(sde, "alphas_cumprod", None)
    if table is None:
        kind = getattr(sde, "kind", type(sde).__name__)
        raise ValueError(f"schedule {name!r} respaces the timesteps of a discrete-time path (a table of ᾱ: "
                         f"TabulatedPath, e.g. an ADM model's); the {kind!r} path has none")
    return len(table)


def respaced_grid(name: str, n: int, T: float, eps: float, sde=None) -> Tensor:
    """The times (k + 1)/N of the kept timesteps k, descending, float64 [n] (``name`` one of
    :data:`RESPACED_SCHEDULES`; the table's timesteps from eps to T)."""
    if sde is None:
        raise ValueError(f"schedule {name!r} needs the path (sde=...)")
    N = _table_length(name, sde)
    lo, hi = round(N * eps - 1), round(N * T - 1)
    if not 0 <= lo < hi <= N - 1:
        raise ValueError(f"schedule {name!r}: eps={eps:g} and T={T:g} span no timesteps of the {N}-step table")
    counts = f"ddim{n}" if name == "adm_ddim" else str(n)
    kept = [lo + k for k in space_timesteps(hi - lo + 1, counts)]
    if len(kept) != n:
        raise ValueError(f"schedule {name!r}: {counts!r} keeps {len(kept)} timesteps, not n_steps={n}")
    return (torch.tensor(kept[::-1], dtype=torch.float64) + 1) / N


def adm_respaced(n: int, T: float, eps: float, sde=None) -> Tensor:
    """ADM's ``timestep_respacing="<n>"``: n timesteps evenly spaced with ADM's rounding."""
    return respaced_grid("adm_respaced", n, T, eps, sde)


def adm_ddim(n: int, T: float, eps: float, sde=None) -> Tensor:
    """ADM's ``timestep_respacing="ddim<n>"``: every i-th timestep from 0 (starts below T)."""
    return respaced_grid("adm_ddim", n, T, eps, sde)
