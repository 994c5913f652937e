"""torchsde's general-purpose SDE methods on the reverse SDE, through the time reversal s = T − t.

With y(s) = x(T − s) the reverse SDE becomes the forward-in-s SDE
    dy = −[f(y, T − s) − g(T − s)² s_θ(y, T − s)] ds + g(T − s) dW_s,
with additive (state-independent) noise, so Itô and Stratonovich forms coincide and every torchsde
method for diagonal noise applies. The Brownian motion is one torchsde ``BrownianInterval`` per
sample, its entropy the sample's seed, so sample i follows the same path at any batch size and the
same path is reused at several step counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torchsde
from torch import Tensor
from torchsde.types import Scalar

from solvers import requirements
from solvers.base import Problem, Solution, SolveStats, check_choice, finite_status
from solvers.denoise import DEFAULT_DENOISE, tweedie
from solvers.fixed import ON_GRID, FixedSteps

__all__ = ["TorchSDE", "TORCHSDE_METHODS", "PerSampleBrownian", "row_entropies"]

# method → (sde_type, score calls per step, start-up score calls, strong order for additive noise,
#           Lévy-area approximation it needs). Start-up calls: torchsde's contract check evaluates the
# drift once before integrating; reversible Heun also evaluates it at y0. Measured by counting.
TORCHSDE_METHODS: dict[str, tuple[str, int, int, float, str]] = {
    "euler": ("ito", 1, 1, 1.0, "none"),
    "milstein": ("ito", 1, 1, 1.0, "none"),
    "srk": ("ito", 10, 1, 1.5, "space-time"),
    "euler_heun": ("stratonovich", 1, 1, 1.0, "none"),
    "heun": ("stratonovich", 2, 1, 1.0, "none"),
    "midpoint": ("stratonovich", 2, 1, 1.0, "none"),
    "reversible_heun": ("stratonovich", 1, 2, 1.0, "none"),
}


class PerSampleBrownian(torchsde.BaseBrownian):
    """One ``torchsde.BrownianInterval`` per row of the batch, stacked: row i's increments depend on
    its own entropy only, never on the batch it is drawn with.

    Args:
        entropies: one non-negative integer per row (the rows' seeds).
        dim: noise channels of each row.
        **interval: the remaining ``BrownianInterval`` arguments (t0, t1, dtype, device, tol, ...).
    """

    def __init__(self, entropies: list[int], dim: int, **interval) -> None:
        self.rows = [torchsde.BrownianInterval(size=(1, dim), entropy=e, **interval) for e in entropies]

    def __call__(self, ta: Scalar, tb: Scalar | None = None, return_U: bool = False, return_A: bool = False):
        parts = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.rows]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p) for p in zip(*parts))
        return torch.cat(parts)

    def __repr__(self) -> str:
        return f"PerSampleBrownian({len(self.rows)} rows, {self.rows[0]!r})"

    @property
    def dtype(self) -> torch.dtype:
        return self.rows[0].dtype

    @property
    def device(self) -> torch.device:
        return self.rows[0].device

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), self.rows[0].shape[1]))

    @property
    def levy_area_approximation(self) -> str:
        return self.rows[0].levy_area_approximation


def row_entropies(noise, batch: int, seed: int | None) -> list[int]:
    """The Brownian entropy of each row: the noise source's per-sample seeds (row indices for a source
    without seeds), mixed with ``seed`` when set (one ``SeedSequence`` of (seed, sample seed))."""
    seeds = list(getattr(noise, "seeds", None) or range(batch))[:batch]
    if len(seeds) != batch:
        raise ValueError(f"TorchSDE: the noise source has {len(seeds)} seeds for a batch of {batch}")
    if seed is None:
        return [int(s) for s in seeds]
    return [int(np.random.SeedSequence([seed, int(s)]).generate_state(1)[0]) for s in seeds]


class _ReversedSDE(torch.nn.Module):
    noise_type = "diagonal"

    def __init__(self, problem: Problem, shape: tuple[int, ...], sde_type: str) -> None:
        super().__init__()
        self.problem, self.shape, self.sde_type = problem, shape, sde_type
        self.T = problem.sde.T

    def _t(self, s: Tensor, y: Tensor) -> Tensor:
        return (self.T - s).to(torch.float64).expand(y.shape[0])

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        sde, x = self.problem.sde, y.reshape(self.shape)
        t = self._t(s, y)
        g2 = (sde.diffusion(t) ** 2).to(y.dtype)[:, None]
        # −(f − g² s) in the reversed time, as g² s − f_coef·x in two passes.
        f_coef = sde.drift_coef(t).to(y.dtype)[:, None]
        return torch.mul(y, -f_coef).addcmul_(g2, self.problem.score(x, t).flatten(1))

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        return self.problem.sde.diffusion(self._t(s, y)).to(y.dtype)[:, None].expand_as(y)


@dataclass(frozen=True)
class TorchSDE:
    """A torchsde method (``method``) with fixed step (T − eps)/(n_steps − 1), then optional Tweedie.

    Integrates: the reverse SDE. Order: the method's strong order for additive noise (see
    ``TORCHSDE_METHODS``). NFE per step: 1 (euler, milstein, euler_heun, reversible_heun), 2 (heun,
    midpoint) or 10 (srk, torchsde's SRID2 for diagonal noise), plus 1–2 start-up calls.
    SDEs: VE, VP, sub-VP. ``reusable_path`` (default) makes one Brownian path shared by every step
    count (torchsde's halfway tree; ~10–30 ms per step of overhead at batch 16–64 on 3×32×32 CPU
    data); turn it off for speed. With ``per_sample_path`` (default) each sample has its own Brownian
    path (:class:`PerSampleBrownian`), its entropy the noise source's seed of that sample, so sample i
    is the same at any batch size; the per-row intervals multiply torchsde's per-step overhead (2–4×
    at batch 16–64 on 3×32×32, docs/performance.md). ``per_sample_path=False`` draws one path for the
    whole batch (torchsde's own layout, entropy ``seed`` or the first sample's seed): faster, but the
    samples then depend on the batch (``batch_invariant`` False). ``seed`` (a non-negative integer)
    is mixed into every row's entropy, giving another set of paths for the same seeds.
    """

    steps: FixedSteps = FixedSteps()  # n_steps (uniform grid, 'grid' convention): grids give it flat
    denoise: str = DEFAULT_DENOISE
    method: str = "euler"
    seed: int | None = None
    reusable_path: bool = True
    per_sample_path: bool = True

    adaptive: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ("alpha_T",)  # f(T), g²(T) or σ_ve(T): finite only where α_T > 0
    conventions: ClassVar[dict] = ON_GRID

    @property
    def batch_invariant(self) -> bool:
        """Whether sample i is the same at any batch size: with one Brownian path per sample."""
        return self.per_sample_path

    @property
    def per_sample_loop(self) -> bool:
        """Whether every step queries one Brownian interval per sample in Python (see
        ``ScipyODE.per_sample_loop``)."""
        return self.per_sample_path

    def __post_init__(self) -> None:
        self.steps.check(type(self).__name__, self, self.denoise)
        check_choice(type(self).__name__, "method", self.method, tuple(TORCHSDE_METHODS))
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ValueError(f"TorchSDE: seed must be a non-negative integer or null, got {self.seed!r}")
        check_choice(type(self).__name__, "per_sample_path", self.per_sample_path, (False, True))
        if self.steps.schedule != "uniform":
            raise ValueError(f"TorchSDE: torchsde steps with a fixed dt; schedule must be 'uniform', "
                             f"got {self.steps.schedule!r}")

    @property
    def nfe_per_step(self) -> int:
        return TORCHSDE_METHODS[self.method][1]

    @property
    def expected_nfe(self) -> int:
        """torchsde's start-up calls + steps × calls per step + the denoise's call."""
        return TORCHSDE_METHODS[self.method][2] + self.steps.expected_nfe(self, self.denoise)

    @property
    def order(self) -> float:
        return TORCHSDE_METHODS[self.method][3]

    def sample(self, problem: Problem, x_init: Tensor, noise) -> Solution:
        requirements.check(self, problem.sde)  # before any score call
        sde_type, _, _, _, levy = TORCHSDE_METHODS[self.method]
        counter, nfe0 = problem.counter, problem.counter.nfe
        T, eps = problem.sde.T, problem.sde.eps
        y0 = x_init.flatten(1)
        # reusable_path: a halfway tree, so the path does not depend on the query points and the same path
        # is integrated at every step count (costlier: each query descends ~log2(1/tol) levels).
        tree = {"halfway_tree": True, "tol": 1e-7} if self.reusable_path else {}
        interval = {"t0": 0.0, "t1": (T - eps) * (1 + 1e-6), "dtype": y0.dtype, "device": y0.device,
                    "levy_area_approximation": levy, **tree}
        entropies = row_entropies(noise, y0.shape[0], self.seed)
        if self.per_sample_path:
            bm = PerSampleBrownian(entropies, y0.shape[1], **interval)
        else:  # one path for the batch: its entropy is seed, else the first sample's seed
            bm = torchsde.BrownianInterval(size=y0.shape, entropy=self.seed if self.seed is not None else
                                           entropies[0], **interval)
        ts = torch.tensor([0.0, T - eps], dtype=y0.dtype, device=y0.device)
        rsde = _ReversedSDE(problem, tuple(x_init.shape), sde_type)
        with torch.no_grad():
            # dt a hair above the spacing so round-off never adds a sliver step: above float32's relative
            # resolution (6e-8), in which ts holds T − eps for float32 states.
            dt = (T - eps) / (self.steps.n_steps - 1) * (1 + 1e-6)
            ys = torchsde.sdeint(rsde, y0, ts, bm=bm, method=self.method, dt=dt)
            x = ys[-1].reshape(x_init.shape)
            if self.denoise in ("tweedie", "ggf"):
                t_eps = torch.full((x.shape[0],), eps, dtype=torch.float64, device=x.device)
                x = tweedie(problem, x, t_eps, divide_by_alpha=self.denoise == "tweedie")
        status, message = finite_status(x)
        n = self.steps.n_steps - 1
        return Solution(x, SolveStats(nfe=counter.nfe - nfe0, n_steps=n, n_accepted=n), status, message)
