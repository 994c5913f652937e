"""Time grids as values: float64 tensors running from T down to eps (both included).

Every schedule has the signature ``(n, T, eps, sde=None) -> Tensor[n]``. Schedules defined in t
ignore ``sde``; schedules defined in the noise level σ_ve = σ_t/α_t or the half log-SNR λ = −log σ_ve
(Karras, log-SNR, EDM's VP) need it to map their end points and to convert back to t (through
:func:`solvers.denoiser.time_of_sigma`); the end points are then exactly T and eps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.denoiser import time_of_sigma, ve_sigma

__all__ = ["TimeGrid", "SCHEDULES"]


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
}
