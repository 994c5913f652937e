"""Log-likelihood and bits per dimension through the probability-flow ODE (Song et al. 2021, §4.3, App. D.2).

Instantaneous change of variables (Chen et al. 2018): along dx/dt = f̃(x, t) = f(x, t) − ½ g(t)² s(x, t),
d log p_t(x(t))/dt = −∇·f̃(x(t), t). Integrating the augmented state [x, Δ] with dΔ/dt = ∇·f̃ from
eps up to T gives z = x(T) and

    log p_eps(x) = log p_T(z) + Δ,    Δ = ∫_eps^T ∇·f̃(x(t), t) dt,

where p_T is ``problem.prior`` (the SDE's Gaussian at T = 1; any prior with ``log_prob`` for a
truncated diffusion, T < 1). The estimate is of p_eps — the data density smoothed by the forward SDE up
to eps — not of p_0; for score_sde's eps = 1e-5 the two differ by ~1e-5 bits/dim for VP and by up to
~3e-3 bits/dim for VE (whose σ(eps) ≈ σ_min = 0.01) on the test mixtures.

Divergence: Hutchinson's estimator εᵀ (∂f̃/∂x) ε with one Rademacher or Gaussian ε drawn once per batch
and held fixed for the whole solve (score_sde's convention), or the exact trace from D vector–Jacobian
products (small D). Either way the drift and the divergence come from ONE forward pass per evaluation
(plus one backward pass, or D for the exact trace); score_sde makes a second forward pass.

Bits per dimension of discrete data: for pixels k ∈ {0, …, L−1} dequantised to u = (k + U[0,1)) / L
and mapped affinely onto the model range [a, b] (x = a + (b − a) u), the dequantised discrete
log-likelihood is log P(k) ≥ log p_x(x) + D log(b − a) − D log L, so

    bpd = −log p_x(x) / (D ln 2) + log2(L) − log2(b − a).

8-bit data: centered [−1, 1] → offset 7, uncentered [0, 1] → offset 8 (score_sde's ``7 − inverse_scaler(−1)``,
which is right only for 256 levels, score_sde issue #51). scikit-learn digits (17 levels, 0…16) in
[−1, 1]: log2(17) − 1 ≈ 3.087.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from models.sde import expand_like
from solvers.base import Problem, Status, check_choice, check_positive
from solvers.denoiser import alpha_vanishes_at_T
from solvers.ode import velocity
from solvers.ode_common import check_tolerances
from solvers.scipy_ode import SCIPY_METHODS, integrate_scipy
from solvers.torchdiffeq_ode import TORCHDIFFEQ_METHODS, integrate_torchdiffeq

__all__ = ["ProbabilityFlowLikelihood", "LikelihoodResult", "bits_per_dim_offset", "dequantize",
           "DIVERGENCES", "HUTCHINSON", "BACKENDS"]

DIVERGENCES = ("hutchinson", "exact")
HUTCHINSON = ("rademacher", "gaussian")
BACKENDS = ("scipy", "torchdiffeq")


def bits_per_dim_offset(levels: int = 256, data_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """log2(levels) − log2(b − a): the bits/dim added when discrete data with ``levels`` values are
    dequantised uniformly and mapped onto ``data_range`` = (a, b) (see the module docstring)."""
    check_positive("bits_per_dim_offset", "levels", levels, integer=True)
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"bits_per_dim_offset: data_range must be (low, high) with high > low, got {data_range}")
    return math.log2(levels) - math.log2(hi - lo)


def dequantize(pixels: Tensor, levels: int = 256, data_range: tuple[float, float] = (-1.0, 1.0), *,
               u: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation (k + U[0, 1)) / levels of integer pixels k ∈ {0, …, levels−1}, mapped onto
    ``data_range`` (score_sde: (255·img + U)/256, then its scaler). ``u`` may be given (replay);
    otherwise it is drawn from ``generator`` (required: no global RNG)."""
    if u is None:
        if generator is None:
            raise ValueError("dequantize: pass u or a torch.Generator (no global RNG state)")
        u = torch.rand(pixels.shape, generator=generator, dtype=torch.float64, device=generator.device)
    v = (pixels.to(torch.float64) + u.to(pixels.device, torch.float64)) / levels
    lo, hi = data_range
    return (lo + (hi - lo) * v).to(torch.float32 if not pixels.is_floating_point() else pixels.dtype)


def _exact_divergence(drift: Tensor, x: Tensor) -> Tensor:
    """tr(∂drift/∂x) per sample [B] (drift: any function of x, here the score) from D vector–Jacobian
    products e_iᵀ J (one batched backward pass through torch's vmap when the model supports it, else D
    sequential ones)."""
    B, D = x.shape[0], x[0].numel()
    basis = torch.eye(D, dtype=drift.dtype, device=drift.device).reshape(D, 1, *x.shape[1:]).expand(D, *x.shape)
    try:
        (jac_rows,) = torch.autograd.grad(drift, x, grad_outputs=basis, is_grads_batched=True, retain_graph=True)
    except RuntimeError:  # an operation without a batching rule: fall back to a loop
        jac_rows = torch.stack([torch.autograd.grad(drift, x, grad_outputs=basis[i], retain_graph=True)[0]
                                for i in range(D)])
    # jac_rows[i, b] = e_iᵀ J_b; its i-th entry is the diagonal element ∂drift_i/∂x_i.
    return jac_rows.reshape(D, B, D).diagonal(dim1=0, dim2=2).sum(-1)


@dataclass
class LikelihoodResult:
    bpd: Tensor  # [B] bits/dim of the discrete data (offset included)
    logp: Tensor  # [B] log p_eps(x) in nats, model space (= prior_logp + delta_logp)
    z: Tensor  # [B, ...] x(T)
    delta_logp: Tensor  # [B] ∫_eps^T ∇·f̃ dt
    prior_logp: Tensor  # [B] log p_T(z) from problem.prior
    offset: float  # bits/dim offset used
    nfe: int  # counted score-network forward calls (one per solver evaluation)
    nfev: int  # solver right-hand-side evaluations
    n_vjp: int  # vector–Jacobian products (backward passes)
    n_steps: int  # attempted solver steps
    n_accepted: int
    status: Status = Status.OK
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class ProbabilityFlowLikelihood:
    """log p_eps(x) and bits/dim by integrating the probability-flow ODE with its divergence from eps to T.

    Integrates: the probability-flow ODE augmented with the log-density change (Song et al. 2021,
    Eq. 13 and App. D.2; Chen et al. 2018, Thm. 1). Order: the ODE method's (RK45: 5). NFE per step:
    the method's evaluations per step (RK45: 6, +2 at start-up), each = 1 forward + 1 backward pass
    (Hutchinson) or 1 forward + D backward passes (exact). Paths: every Gaussian path (VE, VP,
    sub-VP, cosine, flow matching up to T = 1, tabulated). Reference: score_sde
    ``likelihood.py`` ``get_likelihood_fn`` (REFERENCE §1.6): Rademacher, RK45, rtol = atol = 1e-5,
    eps = 1e-5.

    Args:
        divergence: 'hutchinson' (default) or 'exact'.
        hutchinson: 'rademacher' (default) or 'gaussian' probe ε.
        backend: 'scipy' (default; float64 state as score_sde) or 'torchdiffeq' (on device).
        method: the backend's method; default 'RK45' (scipy) / 'dopri5' (torchdiffeq).
        rtol, atol: tolerances.
        eps: start time of the integration (score_sde's likelihood uses 1e-5 for every SDE, not the
            sampling eps).
        dtype: torchdiffeq state dtype, 'float64' (default) or 'float32'. The drift is evaluated in the
            data's dtype either way.
    """

    divergence: str = "hutchinson"
    hutchinson: str = "rademacher"
    backend: str = "scipy"
    method: str | None = None
    rtol: float = 1e-5
    atol: float = 1e-5
    eps: float = 1e-5
    dtype: str = "float64"

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_choice(name, "divergence", self.divergence, DIVERGENCES)
        check_choice(name, "hutchinson", self.hutchinson, HUTCHINSON)
        check_choice(name, "backend", self.backend, BACKENDS)
        methods = SCIPY_METHODS if self.backend == "scipy" else {
            k: v for k, v in TORCHDIFFEQ_METHODS.items() if v[1]}  # adaptive torchdiffeq methods only
        if self.method is None:
            object.__setattr__(self, "method", "RK45" if self.backend == "scipy" else "dopri5")
        check_choice(f"{name} (backend={self.backend!r})", "method", self.method, tuple(methods))
        check_tolerances(name, self.rtol, self.atol)
        check_positive(name, "eps", self.eps)
        check_choice(name, "dtype", self.dtype, ("float64", "float32"))

    def probe(self, x: Tensor, noise) -> Tensor:
        """Hutchinson's ε [B, ...], drawn once per batch from the noise source (Rademacher = sign of a
        standard normal)."""
        z = noise.normal(tuple(x.shape), dtype=x.dtype, device=x.device)
        if self.hutchinson == "gaussian":
            return z
        return torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))

    def _rhs(self, problem: Problem, shape: tuple[int, ...], model_dtype: torch.dtype, epsilon: Tensor | None):
        """(t, y = [x flat, Δ]) -> [f̃ flat, ∇·f̃]: one forward, then 1 (Hutchinson) or D (exact) VJPs.

        f̃ = f_coef(t)·x − h(t)·s(x, t) with h = ½ g²: only the score is differentiated, the linear
        part enters in closed form, ∇·f̃ = f_coef·D − h·tr(∂s/∂x) and εᵀ(∂f̃/∂x)ε = f_coef·‖ε‖² −
        h·εᵀ(∂s/∂x)ε, so the backward pass runs through the score alone. On a path with α_T = 0 (flow
        matching at T = 1) f̃ is the velocity α̇ x̂₀ + σ̇ ε̂ and the backward pass runs through it.
        """
        B = shape[0]
        n = math.prod(shape)
        D = n // B
        sde = problem.sde
        counts = {"vjp": 0}
        eps_sq = None if epsilon is None else epsilon.flatten(1).pow(2).sum(1)
        vanishes = alpha_vanishes_at_T(sde)

        def velocity_rhs(t_vec: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
            # α_T = 0 (flow matching at T = 1): f̃ = α̇ x̂₀ + σ̇ ε̂ (solvers.ode.velocity), differentiated whole.
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                drift = velocity(problem, xg, t_vec)
                if epsilon is not None:
                    (grad,) = torch.autograd.grad(drift, xg, grad_outputs=epsilon)
                    div = (grad * epsilon).flatten(1).sum(1)
                    counts["vjp"] += 1
                else:
                    div = _exact_divergence(drift, xg)
                    counts["vjp"] += D
            return drift.detach(), div

        def rhs(t: Tensor, y: Tensor) -> Tensor:
            t_vec = torch.as_tensor(t, device=y.device).to(model_dtype).reshape(()).expand(B)
            x = y[:n].reshape(shape).to(model_dtype)
            if vanishes:
                drift, div = velocity_rhs(t_vec, x)
                out = torch.empty_like(y)
                out[:n].copy_(drift.reshape(-1))
                out[n:].copy_(div.detach())
                return out
            f_coef, h = sde.drift_coef(t_vec), 0.5 * sde.diffusion(t_vec) ** 2
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                score = problem.score(xg, t_vec)
                if epsilon is not None:
                    (grad,) = torch.autograd.grad(score, xg, grad_outputs=epsilon)
                    div = f_coef * eps_sq - h * (grad * epsilon).flatten(1).sum(1)
                    counts["vjp"] += 1
                else:
                    div = f_coef * D - h * _exact_divergence(score, xg)
                    counts["vjp"] += D
            drift = (x * expand_like(f_coef, x)).sub_(expand_like(h, x) * score.detach())
            out = torch.empty_like(y)
            out[:n].copy_(drift.reshape(-1))
            out[n:].copy_(div.detach())
            return out

        return rhs, counts

    def __call__(self, problem: Problem, x: Tensor, noise=None, *, epsilon: Tensor | None = None, levels: int = 256,
                 data_range: tuple[float, float] | None = None) -> LikelihoodResult:
        """Log-likelihood and bits/dim of data ``x`` [B, ...] (already dequantised, in the model's range).

        Args:
            problem: the score model and the prior at T.
            x: [B, ...] data in the model's range and dtype.
            noise: noise source for Hutchinson's ε (ignored for the exact divergence or given ``epsilon``).
            epsilon: explicit ε [B, ...] (to replay a recorded Rademacher vector).
            levels: number of discrete values per dimension of the original data (256 for 8 bits).
            data_range: the (a, b) the data were mapped onto; default the model's ``data_range``.
        """
        sde, counter = problem.sde, problem.counter
        if not self.eps < sde.T:
            raise ValueError(f"{type(self).__name__}: eps={self.eps} must be below the SDE's T={sde.T}")
        shape, B = tuple(x.shape), x.shape[0]
        if self.divergence == "hutchinson":
            if epsilon is None:
                if noise is None:
                    raise ValueError("Hutchinson divergence needs a noise source or an explicit epsilon")
                epsilon = self.probe(x, noise)
            epsilon = epsilon.to(dtype=x.dtype, device=x.device)
        else:
            epsilon = None
        offset = bits_per_dim_offset(levels, tuple(data_range or problem.score.data_range))
        rhs, counts = self._rhs(problem, shape, x.dtype, epsilon)
        nfe0 = counter.nfe
        n = math.prod(shape)
        if self.backend == "scipy":
            y0 = torch.cat([x.reshape(-1).double(), x.new_zeros(B, dtype=torch.float64)])
            res = integrate_scipy(rhs, y0, self.eps, sde.T, method=self.method, rtol=self.rtol, atol=self.atol)
            y, nfev, n_att, n_acc = res.y, res.nfev, res.n_attempted, res.n_accepted
            status = Status.OK if res.status == 0 else Status.SOLVER_FAILED
            message = "" if res.status == 0 else res.message
        else:
            dtype = getattr(torch, self.dtype)
            y0 = torch.cat([x.reshape(-1).to(dtype), x.new_zeros(B, dtype=dtype)])
            res = integrate_torchdiffeq(rhs, y0, self.eps, sde.T, method=self.method, rtol=self.rtol,
                                        atol=self.atol)
            y, nfev, n_att, n_acc = res.y, counter.nfe - nfe0, res.n_steps, res.n_accepted
            status = Status.OK if res.status == 0 else Status.SOLVER_FAILED
            message = res.message
        z64 = y[:n].reshape(shape).double()
        delta = y[n:].double()
        prior_logp = problem.prior.log_prob(z64).to(delta.device)
        logp = prior_logp + delta
        D = n // B
        bpd = -logp / (D * math.log(2)) + offset
        if status == Status.OK and not bool(torch.isfinite(bpd).all()):
            status, message = Status.NONFINITE, f"{int((~torch.isfinite(bpd)).sum())} of {B} bpd are NaN/Inf"
        return LikelihoodResult(bpd=bpd, logp=logp, z=z64.to(x.dtype), delta_logp=delta, prior_logp=prior_logp,
                                offset=offset, nfe=counter.nfe - nfe0, nfev=nfev, n_vjp=counts["vjp"],
                                n_steps=n_att, n_accepted=n_acc, status=status, message=message)
