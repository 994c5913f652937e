"""The continuous-time ELBO of a score model as a function of the terminal time T.

For a linear SDE with kernel x_t | x_0 ~ N(α_t x_0, σ_t² I), a score model s_θ and a prior π at T,
the reverse SDE run from π at T down to eps defines a density p^θ_eps. Girsanov's theorem for the
forward path started at a data point x_0 (Song et al. 2021, "Maximum Likelihood Training of
Score-Based Diffusion Models", Thm. 1; Huang et al. 2021, Thm. 1), in its denoising score-matching
form with likelihood weighting g², and the data-processing inequality give

    E_{x_eps ~ q(·|x_0)}[log p^θ_eps(x_eps)]
        >= ELBO(x_0) = E[log π(x_T)]                                    (prior term, x_T ~ q(·|x_0))
                       + D log(σ_T / σ_eps)                             (entropies H_T − H_eps of the kernel)
                       − ½ ∫_eps^T g(t)² E‖s_θ(x_t, t) + z/σ_t‖² dt       (DSM term, x_t = α_t x_0 + σ_t z)

The DSM integral is estimated by importance sampling t with density ∝ g(t)²/σ_t², which for every
linear SDE equals dλ/dt with λ(t) = log(σ_t²/α_t²) (from dσ²/dt = 2 f σ² + g² and dα/dt = f α): with
t = λ⁻¹(u), u uniform on [λ(eps), λ(T)] and stratified over the ``n_time`` draws per point,

    ½ ∫_eps^T g² E‖s + z/σ‖² dt = ½ (λ(T) − λ(eps)) E_u E_z ‖σ_t s_θ(x_t, t) + z‖²,

the ε-prediction loss, whose variance stays bounded as t → eps (score_sde's ``importance_weighting``).
VE's σ_t includes σ_min at t = 0 (the project's convention); only t ∈ [eps, T] enters.

What is exact and what is a bound:
  * ELBO(x_0) <= E_{x_eps|x_0}[log p^θ_eps(x_eps)] always (any score, any prior).
  * With the exact score *and* the exact marginal p_T as prior it is an equality for every x_0 (not
    just on average): the reverse path of the model is then the forward path law, and given x_eps the
    forward path after eps does not depend on x_0 (Markov), so the data-processing step loses
    nothing. Any prior mismatch at T adds KL(q(x_T|x_0) ‖ π) − (its share that survives to eps)
    to the gap; score errors add the DSM excess.
  * The probability-flow likelihood (``solvers.likelihood``) is a different model's density (the ODE
    with the same score) at the point x itself; both equal log p_eps when score and prior are exact.
    −ELBO/(D ln 2) + offset is an upper bound on the bits/dim of the SDE model (dequantised data).

The best T for a model is the one with the largest mean ELBO on held-out data: :func:`elbo_curve`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from models.sde import SDE, expand_like

__all__ = ["ELBOResult", "elbo", "elbo_curve", "log_snr_inverse", "lambda_to_t"]


def log_snr_inverse(sde: SDE, t: Tensor) -> Tensor:
    """λ(t) = log(σ_t² / α_t²), increasing in t, [B] float64."""
    alpha, sigma = sde.marginal(t.to(torch.float64))
    return 2 * (sigma.log() - alpha.log())


def lambda_to_t(sde: SDE, lam: Tensor, lo: float, hi: float, iters: int = 64) -> Tensor:
    """λ⁻¹ on [lo, hi] by vectorised bisection (SDE-agnostic; 64 halvings reach float64 resolution)."""
    a = torch.full_like(lam, lo, dtype=torch.float64)
    b = torch.full_like(lam, hi, dtype=torch.float64)
    for _ in range(iters):
        mid = 0.5 * (a + b)
        below = log_snr_inverse(sde, mid) < lam
        a, b = torch.where(below, mid, a), torch.where(below, b, mid)
    return 0.5 * (a + b)


@dataclass(frozen=True)
class ELBOResult:
    """Per-point ELBO estimate, nats.

    Attributes:
        elbo: [B] prior_term + entropy_term + dsm_term.
        stderr: [B] Monte-Carlo standard error of ``elbo`` (stratified draws treated as i.i.d.: conservative).
        prior_term: [B] mean log π(x_T) over ``n_prior`` draws of x_T ~ q(·|x_0).
        dsm_term: [B] −½ Δλ E‖σ s + z‖².
        entropy_term: D log(σ_T / σ_eps) (the same for every point).
        T, eps: the interval.
        score_evals_per_point: score evaluations per data point (= n_time).
        prior_calls: ``prior.log_prob`` calls (each one pass of the prior network for a flow; not NFE).
    """

    elbo: Tensor
    stderr: Tensor
    prior_term: Tensor
    dsm_term: Tensor
    entropy_term: float
    T: float
    eps: float
    score_evals_per_point: int
    prior_calls: int

    def bits_per_dim(self, dim: int, offset: float = 0.0) -> Tensor:
        """−ELBO/(D ln 2) + offset, [B]: an upper bound on the SDE model's bits/dim."""
        return -self.elbo / (dim * math.log(2)) + offset


def elbo(score, x0: Tensor, prior, *, sde: SDE | None = None, eps: float | None = None, n_time: int = 32,
         n_prior: int = 4, generator: torch.Generator | None = None, max_batch: int = 4096) -> ELBOResult:
    """Monte-Carlo ELBO of data points x0 for a score model with terminal time ``sde.T`` and ``prior``.

    Args:
        score: ``score(x [B, ...], t [B]) -> [B, ...]`` (its dtype is that of ``x0``).
        x0: [B, ...] data in the model's range (dequantised for discrete data).
        prior: object with ``log_prob(x) -> [B]`` (the prior at ``sde.T``).
        sde: the SDE with the terminal time T; default ``score.sde``.
        eps: lower end of the time integral; default ``sde.eps``.
        n_time: importance-sampled time draws per point (stratified in λ).
        n_prior: draws of x_T per point for the prior term.
        generator: torch.Generator for every draw (required for reproducibility).
        max_batch: the most rows per score call.
    """
    sde = score.sde if sde is None else sde
    eps = float(sde.eps if eps is None else eps)
    T = float(sde.T)
    if not 0 < eps < T:
        raise ValueError(f"elbo: need 0 < eps < T, got eps={eps}, T={T}")
    for name, v in (("n_time", n_time), ("n_prior", n_prior)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"elbo: {name} must be a positive integer, got {v!r}")
    B, D = x0.shape[0], x0[0].numel()
    dtype, device = x0.dtype, x0.device
    x64 = x0.detach().to(torch.float64)
    ends = torch.tensor([eps, T], dtype=torch.float64)
    lam_lo, lam_hi = (float(v) for v in log_snr_inverse(sde, ends))
    _, sig = sde.marginal(ends)
    entropy = D * math.log(float(sig[1]) / float(sig[0]))

    # DSM term: stratified u in [λ(eps), λ(T)], t = λ⁻¹(u).
    strata = torch.arange(n_time, dtype=torch.float64)
    u = (strata[None, :] + torch.rand(B, n_time, generator=generator, dtype=torch.float64)) / n_time
    t = lambda_to_t(sde, lam_lo + (lam_hi - lam_lo) * u, eps, T).reshape(-1)  # [B·n_time], point-major
    xr = x64.repeat_interleave(n_time, 0)
    z = torch.randn(xr.shape, generator=generator, dtype=torch.float64)
    losses = []
    for sl in torch.arange(xr.shape[0]).split(max_batch):
        alpha, sigma = sde.marginal(t[sl])
        a, s = expand_like(alpha, xr[sl]), expand_like(sigma, xr[sl])
        xt = a * xr[sl] + s * z[sl]
        with torch.no_grad():
            sc = score(xt.to(device=device, dtype=dtype), t[sl].to(device)).to(torch.float64).cpu()
        losses.append((s * sc + z[sl]).flatten(1).pow(2).sum(1))
    loss = torch.cat(losses).reshape(B, n_time)
    half_dlam = 0.5 * (lam_hi - lam_lo)
    dsm = -half_dlam * loss.mean(1)

    # Prior term: x_T ~ q(·|x_0).
    alpha_T, sigma_T = (float(v) for v in sde.marginal(ends[1:]))
    logp = []
    for _ in range(n_prior):
        zT = torch.randn(x64.shape, generator=generator, dtype=torch.float64)
        logp.append(prior.log_prob((alpha_T * x64 + sigma_T * zT).to(device=device, dtype=dtype)).double().cpu())
    logp = torch.stack(logp, 1)
    prior_term = logp.mean(1)
    var = half_dlam**2 * loss.var(1, correction=1) / n_time if n_time > 1 else torch.zeros(B, dtype=torch.float64)
    if n_prior > 1:
        var = var + logp.var(1, correction=1) / n_prior
    return ELBOResult(elbo=prior_term + entropy + dsm, stderr=var.sqrt(), prior_term=prior_term, dsm_term=dsm,
                      entropy_term=entropy, T=T, eps=eps, score_evals_per_point=n_time, prior_calls=n_prior)


def elbo_curve(score, x0: Tensor, priors: dict, *, sde: SDE | None = None, seed: int = 0, **options) -> dict:
    """Mean ELBO over x0 for each terminal time: ``priors`` maps T -> prior at T.

    Every T uses the same seed (common random numbers across T). Returns
    ``{T: {"elbo": mean nats, "stderr": ..., "prior_term", "dsm_term", "entropy_term"}}``; pick the T
    with the largest ``elbo``.
    """
    sde = score.sde if sde is None else sde
    out = {}
    for T, prior in priors.items():
        r = elbo(score, x0, prior, sde=dataclasses.replace(sde, T=float(T)),
                 generator=torch.Generator().manual_seed(seed), **options)
        n = r.elbo.shape[0]
        out[float(T)] = {"elbo": float(r.elbo.mean()), "stderr": float(r.elbo.std() / math.sqrt(n)),
                         "prior_term": float(r.prior_term.mean()), "dsm_term": float(r.dsm_term.mean()),
                         "entropy_term": r.entropy_term}
    return out
