"""GITS: a time schedule chosen by dynamic programming on a teacher trajectory.

Chen, Zhou, Wang, Shen & Lyu 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"
(ICML; zju-pi/diff-sampler ``gits-main/gits_utils.py`` at 68d5ce4, read, not copied). In the VE view
x_ve = x/α_t with σ = σ_ve (solvers/denoiser.py):

1. **Teacher.** A fine grid σ_0 = σ_ve(T) > … > σ_{M−1} = σ_ve(eps) (``gits_teacher_steps`` = M points
   of the base schedule ``gits_base``, the reference's 61 points of Karras' ρ = 7 grid) and a teacher
   method (the reference's iPNDM) give, from each warm-up sample x_T, the trajectory x_0 … x_{M−1}.
2. **Cost.** The cost of one coarse step from teacher point i to point j > i is the error of an Euler
   step in σ from the teacher's state, x̂_j = x_i + (σ_j − σ_i) d_i with d_i = (x_i − D(x_i; σ_i))/σ_i,
   against the teacher's x_j, averaged over the warm-up samples: 'l1' or 'l2' the per-sample norm of
   x̂_j − x_j; 'dev' (the reference's default) the distance of x̂_j from the straight line through the
   trajectory's ends x_0, x_{M−1}, less the teacher's own distance at j (0 at the last point).
3. **DP.** Among paths 0 = p_0 < p_1 < … < p_K = M − 1 of K = n − 1 steps, the one minimising
   Σ_m coeff^m · cost[p_m, p_{m+1}] (``gits_coeff``, the reference's 1.15: later steps weigh more);
   :func:`dp_path` solves it exactly, V_k(i) = min_{i<j<M−1} cost[i, j] + coeff · V_{k−1}(j), V_1(i) =
   cost[i, M − 1].

The schedule is σ_{p_0}, …, σ_{p_K}: n values from σ_ve(T) to σ_ve(eps), used as a table
(schedule 'gits' of :class:`solvers.fixed.FixedSteps`). Not taken from the reference: its AFS variant
(a free first step searched after the DP) and its coefficient sweep for text-to-image models. The
warm-up costs ``gits_warmup`` trajectories of the teacher (M − 1 steps each) plus M − 1 calls for the
slopes d_i, all counted by the problem's counter; the harness computes it once per model and
caches it (bench/gits_cache.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from solvers.base import Problem
from solvers.denoiser import denoised, ve_sigma
from solvers.grids import SCHEDULES

__all__ = ["dp_path", "path_cost", "teacher_trajectory", "cost_matrix", "gits_sigmas", "deviation"]


def dp_path(cost: Tensor, n_steps: int, coeff: float = 1.15) -> list[int]:
    """The path of ``n_steps`` steps from point 0 to point M − 1 minimising :func:`path_cost` (exact DP).

    Args:
        cost: [M, M] float; cost[i, j] of one step from point i to point j > i (below the diagonal unused).
        n_steps: K ≥ 1, steps of the path (the schedule then has K + 1 points); K ≤ M − 1.
        coeff: weight ratio of consecutive steps (step m weighs coeff^m).

    Returns:
        [0, p_1, …, M − 1], K + 1 increasing indices (ties: the smallest index, as the reference).
    """
    M = cost.shape[0]
    if not 1 <= n_steps <= M - 1:
        raise ValueError(f"dp_path: n_steps must be in [1, {M - 1}] for {M} points, got {n_steps}")
    cost = cost.to(torch.float64)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    V = torch.full((n_steps + 1, M), float("inf"), dtype=torch.float64)  # V[k, i]: best from i in k steps
    nxt = torch.full((n_steps + 1, M), -1, dtype=torch.long)
    V[1, : M - 1] = cost[: M - 1, M - 1]
    nxt[1, : M - 1] = M - 1
    for k in range(2, n_steps + 1):
        for i in range(M - 1):
            js = torch.arange(i + 1, M - 1)
            if len(js) == 0:
                continue
            cand = torch.where(torch.isfinite(V[k - 1, js]), cost[i, js] + coeff * V[k - 1, js], inf)
            best = int(torch.argmin(cand))  # the first minimum
            V[k, i], nxt[k, i] = cand[best], js[best]
    path, i = [0], 0
    for k in range(n_steps, 0, -1):
        i = int(nxt[k, i])
        path.append(i)
    return path


def path_cost(cost: Tensor, path: list[int], coeff: float = 1.15) -> float:
    """Σ_m coeff^m · cost[p_m, p_{m+1}], the quantity :func:`dp_path` minimises."""
    return float(sum(coeff**m * float(cost[a, b]) for m, (a, b) in enumerate(zip(path, path[1:]))))


def deviation(points: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Distance of each point [P, B, ...] from the line through ``start`` and ``end`` [B, ...]: [P, B]."""
    u = (end - start).flatten(1)
    u = u / u.norm(dim=1, keepdim=True)  # [B, D]
    a = (end[None] - points).flatten(2)  # [P, B, D]
    along = (a * u[None]).sum(-1, keepdim=True)
    return (a - along * u[None]).norm(dim=-1)


def teacher_trajectory(problem: Problem, x_T: Tensor, noise, teacher: str, ts: Tensor) -> Tensor:
    """The teacher's states at the grid ``ts`` [M] (float64 times from T), in x (not x_ve): [M, B, ...].
    The teacher is a fixed-grid method of :data:`solvers.SAMPLERS` walked on exactly these points."""
    from solvers import make_sampler  # the registry imports this package's modules
    from solvers.solve import solve

    sigmas = tuple(ve_sigma(problem.sde, ts).tolist())
    sampler = make_sampler(teacher, n_steps=len(ts), schedule="table", sigmas=sigmas, table_interp="none",
                           denoise="none")
    states = [x_T]
    sol = solve(sampler.method, sampler.controller, problem, x_T, noise, "none", on_step=states.append)
    if sol.status != "ok":
        raise ValueError(f"GITS teacher {teacher!r} failed: {sol.message or sol.status}")
    return torch.stack(states)


def cost_matrix(problem: Problem, traj: Tensor, ts: Tensor, metric: str = "dev") -> Tensor:
    """Summed (over the batch) cost of one Euler step in σ between every pair of teacher points: [M, M]
    float64 (module docstring; divide by the number of samples for the mean). M − 1 counted calls."""
    M, B = traj.shape[0], traj.shape[1]
    alpha, sigma_t = problem.marginal(ts)
    sigmas = sigma_t / alpha  # [M]
    x_ve = traj / alpha.reshape(M, *[1] * (traj.dim() - 1)).to(traj.dtype)
    cost = torch.zeros(M, M, dtype=torch.float64)
    dev_teacher = deviation(x_ve, x_ve[0], x_ve[-1]).to(torch.float64)  # [M, B]
    dev_teacher[-1] = 0.0
    for i in range(M - 1):
        t_i = ts[i].expand(B)
        d_i = (x_ve[i] - denoised(problem, traj[i], t_i)[0]) / float(sigmas[i])
        for j in range(i + 1, M):
            x_hat = x_ve[i] + float(sigmas[j] - sigmas[i]) * d_i
            err = (x_hat - x_ve[j]).flatten(1).to(torch.float64)
            if metric == "l1":
                cost[i, j] = err.abs().sum(1).sum()
            elif metric == "l2":
                cost[i, j] = err.norm(dim=1).sum()
            elif metric == "dev":
                dev = deviation(x_hat[None], x_ve[0], x_ve[-1])[0].to(torch.float64)
                cost[i, j] = (dev - dev_teacher[j]).sum()
            else:
                raise ValueError(f"GITS: unknown metric {metric!r}; expected one of: dev, l1, l2")
    return cost


@torch.no_grad()
def gits_sigmas(problem: Problem, seeds, n: int, *, teacher: str = "ipndm", teacher_steps: int = 61,
                base: str = "karras", rho: float | None = None, metric: str = "dev", coeff: float = 1.15,
                dtype=torch.float32, device="cpu", batch_size: int = 256, condition=None) -> tuple[Tensor, dict]:
    """GITS' schedule of ``n`` points for ``problem``, from one warm-up sample per seed of ``seeds`` drawn
    from the problem's prior at T (one generator per seed, :class:`solvers.noise.SeededNoise`).

    Args:
        condition: ``condition(problem, batch_seeds) -> Problem`` for a class-conditional model (the
            labels of a batch), or None.

    Returns:
        (σ values [n] float64 from σ_ve(T) to σ_ve(eps), info: the teacher's σ grid, the chosen indices,
        the mean cost matrix's path cost, the number of warm-up samples).
    """
    from solvers.noise import SeededNoise

    sde = problem.sde
    params = {"rho": rho} if rho is not None and base in ("karras", "polyexponential") else {}
    ts = SCHEDULES[base](teacher_steps, float(sde.T), float(sde.eps), sde=sde, **params)
    seeds = list(seeds)
    total = torch.zeros(teacher_steps, teacher_steps, dtype=torch.float64)
    for lo in range(0, len(seeds), batch_size):
        batch = seeds[lo: lo + batch_size]
        noise = SeededNoise(batch, device=device)
        sub = problem if condition is None else condition(problem, batch)
        x_T = problem.prior_sample(len(batch), noise, dtype=dtype, device=device)
        traj = teacher_trajectory(sub, x_T, noise, teacher, ts.to(device))
        total += cost_matrix(sub, traj, ts.to(device), metric)
    cost = total / len(seeds)
    path = dp_path(cost, n - 1, coeff)
    sigmas = ve_sigma(sde, ts)
    info = {"teacher_sigmas": sigmas.tolist(), "indices": path, "path_cost": path_cost(cost, path, coeff),
            "warmup_samples": len(seeds)}
    return sigmas[path], info
