"""Time grids as values: float64 tensors running from T down to eps (both included).

Every schedule has the signature ``(n, T, eps, sde=None, **params) -> Tensor[n]``; its parameters
(:data:`SCHEDULE_PARAMS`: Karras' and the polyexponential ρ, a table's σ values) are options of
:class:`solvers.fixed.FixedSteps`, so a grid sweeps them. Schedules defined in t
ignore ``sde``; schedules defined in the noise level σ_ve = σ_t/α_t or the half log-SNR λ = −log σ_ve
(Karras, log-SNR, EDM's VP) need it to map their end points and to convert back to t (through
:func:`solvers.denoiser.time_of_sigma`); the end points are then exactly T and eps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.denoiser import time_of_sigma, ve_sigma

__all__ = ["TimeGrid", "SCHEDULES", "SCHEDULE_PARAMS", "SIGMA_TABLES", "loglinear_interp", "check_table",
           "table_refusal"]

# Published σ tables (the noise levels σ_ve of the grid, σ_max first). A table is a schedule of its own
# length; other lengths are interpolated log-linearly in σ (:func:`loglinear_interp`).
SIGMA_TABLES: dict[str, tuple[float, ...]] = {
    # Align Your Steps (Sabour et al. 2024, Table 3; the 10-step schedules of NVIDIA's AYS notes).
    "ays_sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "ays_sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    "ays_deepfloyd_if": (160.41, 8.081, 3.315, 1.885, 1.207, 0.785, 0.553, 0.293, 0.186, 0.030, 0.006),
    "ays_svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
    # GITS' published CIFAR-10 schedule for iPNDM at 6 steps on EDM's checkpoint (Chen et al. 2024,
    # zju-pi/diff-sampler gits-main README: dp on a 61-point teacher, coeff 1.15, metric 'dev').
    "gits_cifar10_ipndm6": (80.0, 10.9836, 3.8811, 1.584, 0.5666, 0.1698, 0.002),
}
# The parameters each parametrised schedule takes (FixedSteps fields), with their defaults.
SCHEDULE_PARAMS: dict[str, dict[str, object]] = {
    "karras": {"rho": 7.0},
    "karras_float32": {"rho": 7.0},
    "polyexponential": {"rho": 1.0},
    "table": {"sigmas": None, "table_interp": "loglinear"},
    "gits": {"sigmas": None},
}
TABLE_INTERP = ("loglinear", "none")
_RANGE_RTOL = 1e-3  # a table's end values may differ this much (relative) from the run's σ_ve(T) / σ_ve(eps)


def loglinear_interp(sigmas: Tensor, n: int) -> Tensor:
    """``n`` values interpolated linearly in log σ at equally spaced positions of the table ``sigmas``
    (decreasing), both ends kept: the AYS authors' ``loglinear_interp`` (NVIDIA's AYS notes). [n] float64."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if n == len(sigmas):
        return sigmas.clone()
    pos = torch.linspace(0.0, len(sigmas) - 1, n, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=len(sigmas) - 2)
    w = pos - lo
    log_s = sigmas.log()
    return ((1 - w) * log_s[lo] + w * log_s[lo + 1]).exp()


def check_table(sigmas, n: int | None = None, interp: str = "loglinear") -> tuple[float, ...]:
    """A σ table as a tuple of floats, or ValueError naming field 'sigmas': it must hold at least two
    finite positive values, strictly decreasing; with ``interp='none'`` exactly ``n`` of them."""
    if isinstance(sigmas, str):
        if sigmas not in SIGMA_TABLES:
            raise ValueError(f"field 'sigmas': unknown table {sigmas!r}; expected a list of σ values or one of: "
                             f"{', '.join(SIGMA_TABLES)}")
        sigmas = SIGMA_TABLES[sigmas]
    if not isinstance(sigmas, list | tuple) or len(sigmas) < 2 or not all(
            isinstance(s, int | float) and not isinstance(s, bool) for s in sigmas):
        raise ValueError(f"field 'sigmas' must be a list of at least two numbers (σ_max first), got {sigmas!r}")
    values = tuple(float(s) for s in sigmas)
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"field 'sigmas' must hold finite positive σ values, got {list(values)}")
    for i, (a, b) in enumerate(zip(values, values[1:])):
        if not b < a:
            raise ValueError(f"field 'sigmas' must be strictly decreasing; entry {i + 1} ({b:g}) is not below "
                             f"entry {i} ({a:g})")
    if interp == "none" and n is not None and len(values) != n:
        raise ValueError(f"field 'sigmas' has {len(values)} values but n_steps is {n} (table_interp 'none' uses "
                         f"the table as it is; set table_interp 'loglinear' to interpolate it)")
    return values


def table_refusal(sigmas, sde, T: float, eps: float) -> str | None:
    """Why the σ table cannot be a grid on ``sde`` from ``T`` to ``eps``, or None: its first value must be
    σ_ve(T), where sampling starts (the prior), and every value must lie in [σ_ve(eps), σ_ve(T)]
    (relative tolerance 1e-3 at both ends)."""
    sig = ve_sigma(sde, torch.tensor([T, eps], dtype=torch.float64))
    s_max, s_min = float(sig[0]), float(sig[1])
    first, lo = float(sigmas[0]), min(float(s) for s in sigmas)
    if not math.isfinite(s_max):
        return f"field 'sigmas': a σ table needs σ_ve(T) finite; it is infinite at T={T:g} on this path"
    if abs(first - s_max) > _RANGE_RTOL * s_max:
        return (f"field 'sigmas' starts at σ={first:g}, but the run starts at σ_ve(T)={s_max:.6g} (T={T:g}); "
                f"a table must start where the prior is drawn: set T (or the model's sigma_max) to match")
    if lo < s_min * (1 - _RANGE_RTOL):
        return (f"field 'sigmas' leaves the model's σ range [{s_min:.6g}, {s_max:.6g}]: its smallest value {lo:g} "
                f"is below σ_ve(eps={eps:g})")
    return None


class TimeGrid:
    @staticmethod
    def uniform(n: int, T: float, eps: float, sde=None) -> Tensor:
        """n points, uniform in t (score_sde's ``linspace(T, eps, N)``)."""
        del sde
        return torch.linspace(T, eps, n, dtype=torch.float64)

    @staticmethod
    def quadratic(n: int, T: float, eps: float, sde=None) -> Tensor:
        """n points, uniform in √(t − eps): denser near eps (DDIM's 'quad' spacing)."""
        del sde
        u = torch.linspace(1.0, 0.0, n, dtype=torch.float64)
        return eps + (T - eps) * u**2

    @staticmethod
    def _sigma_ends(name: str, T: float, eps: float, sde) -> tuple[float, float]:
        if sde is None:
            raise ValueError(f"schedule {name!r} is defined in σ and needs the SDE (sde=...)")
        sig = ve_sigma(sde, torch.tensor([T, eps], dtype=torch.float64))
        if not bool(torch.isfinite(sig).all()):
            raise ValueError(f"schedule {name!r} is defined in σ_ve = σ_t/α_t, which is infinite at T={T:g} on this "
                             f"path (α_T = 0); use schedule 'uniform' or 'quadratic', or T below the path's end")
        return float(sig[0]), float(sig[1])

    @staticmethod
    def _to_time(sigmas: Tensor, T: float, eps: float, sde) -> Tensor:
        ts = time_of_sigma(sde, sigmas)
        ts[0], ts[-1] = T, eps  # exact end points (the inversion is exact to ~1e-16 anyway)
        return ts

    @staticmethod
    def karras(n: int, T: float, eps: float, sde=None, rho: float = 7.0) -> Tensor:
        """n points with σ_ve^{1/ρ} uniform from σ_ve(T) to σ_ve(eps), ρ = 7 (Karras et al. 2022, Eq. 5)."""
        s_max, s_min = TimeGrid._sigma_ends("karras", T, eps, sde)
        u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        sigmas = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        return TimeGrid._to_time(sigmas, T, eps, sde)

    @staticmethod
    def karras_float32(n: int, T: float, eps: float, sde=None, rho: float = 7.0) -> Tensor:
        """:meth:`karras` as EDM2's ``edm_sampler`` evaluates it (NVlabs/edm2 ``generate_images.py``): σ_i
        in float32 from a float32 ``arange`` (σ_0 = 79.99998 for σ_ve(T) = 80, σ_{n−1} = 0.0019999996 for
        0.002; a few 1e-6 relative from the float64 grid). The ends are not pinned: t_0 and t_{n−1} lie
        within float32 rounding of σ below T and eps."""
        s_max, s_min = TimeGrid._sigma_ends("karras_float32", T, eps, sde)
        i = torch.arange(n, dtype=torch.float32)
        sigmas = (s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        return time_of_sigma(sde, sigmas.to(torch.float64))

    @staticmethod
    def log_snr(n: int, T: float, eps: float, sde=None) -> Tensor:
        """n points uniform in λ = log(α_t/σ_t) (DPM-Solver's 'logSNR' spacing, Lu et al. 2022, §3.3)."""
        s_max, s_min = TimeGrid._sigma_ends("log_snr", T, eps, sde)
        log_sigmas = torch.linspace(math.log(s_max), math.log(s_min), n, dtype=torch.float64)
        return TimeGrid._to_time(log_sigmas.exp(), T, eps, sde)

    @staticmethod
    def polyexponential(n: int, T: float, eps: float, sde=None, rho: float = 1.0) -> Tensor:
        """n points with log σ_ve = log σ_min + (log σ_max − log σ_min)·r^ρ, r uniform from 1 to 0 (k-diffusion's
        ``get_sigmas_polyexponential``; ρ = 1 is the log-SNR grid, ρ > 1 denser near σ_min)."""
        s_max, s_min = TimeGrid._sigma_ends("polyexponential", T, eps, sde)
        ramp = torch.linspace(1.0, 0.0, n, dtype=torch.float64) ** rho
        sigmas = torch.exp(ramp * (math.log(s_max) - math.log(s_min)) + math.log(s_min))
        return TimeGrid._to_time(sigmas, T, eps, sde)

    @staticmethod
    def table(n: int, T: float, eps: float, sde=None, sigmas=None, table_interp: str = "loglinear") -> Tensor:
        """n points at the σ_ve values of a table (a list, or a name in :data:`SIGMA_TABLES`), interpolated
        log-linearly to n values where its length differs (:func:`loglinear_interp`; ``table_interp='none'``
        needs exactly n). Its first value must be σ_ve(T) (t_0 = T exactly); its last may lie above
        σ_ve(eps): the grid then ends there and the final denoise evaluates at that σ (as AYS' tables
        end at 0.029 on Stable Diffusion)."""
        values = check_table(sigmas, n, table_interp)
        why = table_refusal(values, sde, T, eps) if sde is not None else "a σ table needs the SDE (sde=...)"
        if why is not None:
            raise ValueError(why)
        ts = time_of_sigma(sde, loglinear_interp(torch.tensor(values, dtype=torch.float64), n))
        ts[0] = T
        s_min = float(ve_sigma(sde, torch.tensor([eps], dtype=torch.float64))[0])
        if abs(values[-1] - s_min) <= _RANGE_RTOL * s_min:  # a table ending at σ_ve(eps) ends exactly at eps
            ts[-1] = eps
        return ts.clamp(min=eps)

    @staticmethod
    def gits(n: int, T: float, eps: float, sde=None, sigmas=None) -> Tensor:
        """GITS' schedule (Chen et al. 2024): n σ values chosen by dynamic programming on a teacher
        trajectory (:mod:`solvers.gits`). The harness computes them once per model and passes them here
        (bench/gits_cache.py); they are a table of exactly n values."""
        if sigmas is None:
            raise ValueError("schedule 'gits' has no σ values yet: the harness computes them per model before "
                             "sampling (bench.gits_cache); elsewhere pass sigmas=solvers.gits.gits_sigmas(...)[0]")
        return TimeGrid.table(n, T, eps, sde, sigmas, table_interp="none")

    @staticmethod
    def edm_vp(n: int, T: float, eps: float, sde=None, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
        """EDM's VP discretisation (Karras et al. 2022, Table 1): σ_i = σ_vp(τ_i) with τ uniform and
        σ_vp(τ) = √(exp(½ β_d τ² + β_min τ) − 1), τ's end points chosen so that σ_vp matches the model's
        σ_ve(T) and σ_ve(eps). On score_sde's VP SDE (β_max − β_min = 19.9) this is the uniform grid.
        """
        s_max, s_min = TimeGrid._sigma_ends("edm_vp", T, eps, sde)

        def tau(sigma: float) -> float:  # inverse of σ_vp: ½ β_d τ² + β_min τ = log(1 + σ²)
            c = torch.log1p(torch.tensor(sigma, dtype=torch.float64) ** 2)
            return float((-beta_min + (beta_min**2 + 2 * beta_d * c).sqrt()) / beta_d)

        taus = torch.linspace(tau(s_max), tau(s_min), n, dtype=torch.float64)
        sigmas = torch.expm1(0.5 * beta_d * taus**2 + beta_min * taus).sqrt()
        return TimeGrid._to_time(sigmas, T, eps, sde)


def iddpm(n: int, T: float, eps: float, sde=None, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000) -> Tensor:
    """EDM's iDDPM discretisation (Karras et al. 2022, Table 1; NVlabs/edm ``ablation_sampler``, read at commit
    008a4e5): the noise levels u_0 > … > u_{M−1} of the improved-DDPM cosine schedule, u_M = 0 and
    u_{j−1} = √((u_j² + 1)/max(ᾱ_{j−1}/ᾱ_j, C_1) − 1) with ᾱ_j = sin²(½π j/(M(C_2 + 1))); of those within
    [σ_ve(eps), σ_ve(T)], n at the indices round(i (K − 1)/(n − 1)), i = 0 … n − 1 (K of them). The first is
    u_8 = 80.20 (EDM's j_0 = 8) where σ_ve(T) ≥ 80.20 (ablation_sampler's default σ_max is 81), u_9 = 71.29 for
    σ_ve(T) = 80. The ends are table values, not T and eps (the prior is still drawn at T)."""
    s_max, s_min = TimeGrid._sigma_ends("iddpm", T, eps, sde)
    alpha_bar = torch.sin(0.5 * math.pi * torch.arange(M + 1, dtype=torch.float64) / M / (C_2 + 1)) ** 2
    u = torch.zeros(M + 1, dtype=torch.float64)
    for j in range(M, 0, -1):
        u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar[j - 1] / alpha_bar[j]).clamp(min=C_1) - 1).sqrt()
    kept = u[(u >= s_min) & (u <= s_max)]
    if len(kept) < n:
        raise ValueError(f"schedule 'iddpm' has {len(kept)} levels in [{s_min:g}, {s_max:g}], fewer than n_steps={n}")
    index = ((len(kept) - 1) / (n - 1) * torch.arange(n, dtype=torch.float64)).round().long()
    return time_of_sigma(sde, kept[index])


def edm_vp_ablation(n: int, T: float, eps: float, sde=None, epsilon_s: float = 1e-3) -> Tensor:
    """EDM ``ablation_sampler``'s 'vp' discretisation: σ_vp(t_i) with t_i uniform from 1 to ε_s and
    σ_vp(t) = √(exp(½ β_d t² + β_min t) − 1), β_d and β_min chosen so that σ_vp(1) = σ_ve(T), σ_vp(ε_s) =
    σ_ve(eps) (the σ(t) of :class:`solvers.edm_ablation.AblationODE`). :meth:`TimeGrid.edm_vp` keeps β_d = 19.9,
    β_min = 0.1 and moves τ's ends instead; on score_sde's VP SDE (eps = 1e-3) both are 'uniform'."""
    s_max, s_min = TimeGrid._sigma_ends("edm_vp_ablation", T, eps, sde)
    beta_d = 2 * (math.log1p(s_min**2) / epsilon_s - math.log1p(s_max**2)) / (epsilon_s - 1)
    beta_min = math.log1p(s_max**2) - 0.5 * beta_d
    t = torch.linspace(1.0, epsilon_s, n, dtype=torch.float64)
    return TimeGrid._to_time(torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt(), T, eps, sde)


SCHEDULES = {
    "uniform": TimeGrid.uniform,
    "quadratic": TimeGrid.quadratic,
    "log_snr": TimeGrid.log_snr,
    "karras": TimeGrid.karras,
    "karras_float32": TimeGrid.karras_float32,
    "edm_vp": TimeGrid.edm_vp,
    "iddpm": iddpm,
    "edm_vp_ablation": edm_vp_ablation,
    "polyexponential": TimeGrid.polyexponential,
    "table": TimeGrid.table,
    "gits": TimeGrid.gits,
}
