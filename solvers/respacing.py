"""ADM's timestep respacing (Nichol & Dhariwal 2021, §4; openai/guided-diffusion ``respace.py``): which
of a discrete-time model's N trained timesteps a sampler visits.

:func:`space_timesteps` (``section_counts``: comma-separated counts, or ``"ddimK"``) is ADM's rule
(shared/fixtures/adm/README.md §4):

* counts ``"c1,c2,…"``: the N steps are cut into equal sections (the first ``N % len`` one step
  longer); in a section of ``size`` steps with ``count`` kept, ``stride = (size − 1)/(count − 1)``
  (float), and the kept steps are ``start + round(cur)`` for ``cur = 0, stride, 2·stride, …`` (``cur``
  accumulated by repeated addition; Python's ``round``, ties to even);
* ``"ddimK"``: the smallest integer stride i ≥ 1 with ``len(range(0, N, i)) == K``; kept
  ``0, i, 2i, …`` (N − 1 itself is not kept in general: ``ddim10`` on 1000 steps keeps 0, …, 900).

As spacings of :class:`solvers.fixed.FixedSteps` (:data:`solvers.spacing.SPACINGS`, beside diffusers'):
``adm_respaced`` (one section of ``n_steps`` counts: ADM's ``timestep_respacing="<n>"``) and
``adm_ddim`` (ADM's ``"ddim<n>"``), each n timesteps τ at their trained levels, then the final Tweedie
denoise (``final_sigma: zero``), which is ADM's last step x̂₀ at timestep 0. ``adm_ddim`` starts at its
first kept step, below T, as ADM's loop does (the prior's draw is fed there).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["space_timesteps", "adm_respaced", "adm_ddim"]


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


def adm_respaced(n: int, N: int, offset: int) -> Tensor:
    """ADM's ``timestep_respacing="<n>"``: τ descending [n] float64 (a spacing of :mod:`solvers.spacing`)."""
    del offset
    return torch.tensor(space_timesteps(N, str(n))[::-1], dtype=torch.float64)


def adm_ddim(n: int, N: int, offset: int) -> Tensor:
    """ADM's ``timestep_respacing="ddim<n>"``: every i-th timestep from 0, descending [n] float64."""
    del offset
    return torch.tensor(space_timesteps(N, f"ddim{n}")[::-1], dtype=torch.float64)
