"""Priors at a truncated terminal time T < 1 (Franzese et al., "How Much Is Enough?", Entropy 2023).

Every prior here follows the protocol of :mod:`models.priors` (what ``solvers.Problem`` and the
likelihood solver call)::

    prior.sample(shape [B, *sample_shape], noise, dtype=, device=) -> Tensor   # noise: a NoiseSource
    prior.log_prob(x [B, ...]) -> Tensor [B] (float64, nats, summed over all but the batch dim)

plus ``network_calls`` (network passes one ``sample``/``log_prob`` call makes on a batch: 0 for the
closed-form priors, 1 for the flow; these are not score-function evaluations and are recorded apart
from NFE) and, for the fitted ones, ``fit(...)`` classmethods and ``save``/:func:`load_prior`.

The priors, from cheapest to the one that uses held-out data:

* :func:`naive_prior`: the paper's Table 1 Gaussian, a :class:`~models.priors.GaussianPrior`.
  VP/sub-VP: N(0, I). VE: N(0, σ(T)² I) (``variant='sde'``, the SDE's own std, σ_min included as
  score_sde) or N(0, (σ(T)² − σ(0)²) I) (``variant='paper'``, the paper's kernel variance).
* :class:`MomentPrior`: a Gaussian with the mean and (full or diagonal) covariance of
  forward-diffused training data x_T.
* :class:`FlowPrior`: an auxiliary generative model of x_T fitted by maximum likelihood, a
  neural-spline coupling flow from ``zuko`` (``zuko.flows.NSF`` with two masked passes per
  transform, i.e. a coupling flow whose sampling and density are both one network pass), after an
  affine standardisation that is part of the density.
* :class:`OraclePrior` (*uses held-out data*): x_T made by diffusing held-out real data with fresh
  noise; its ``log_prob`` is the exact density of that sampling distribution (a Gaussian KDE with
  bandwidth σ_T around α_T·x0_i). It bounds what a perfect auxiliary model could gain.
* :class:`ExactMarginalPrior` (*oracle* for exact-score mixtures): the closed-form p_T of a
  :class:`~models.gaussian.GaussianMixture`.

The step rule for truncated samplers is :func:`steps_for_T` ('fixed_dt': steps ∝ T; 'fixed_steps').
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from models.priors import GaussianPrior
from models.sde import SDE, make_sde, sde_to_dict

__all__ = ["STEP_RULES", "steps_for_T", "naive_prior", "diffuse", "MomentPrior", "FlowPrior", "OraclePrior",
           "ExactMarginalPrior", "load_prior", "save_prior", "PRIOR_FORMAT"]

PRIOR_FORMAT = "scorebench-prior"
STEP_RULES = ("fixed_dt", "fixed_steps")
NAIVE_VARIANTS = ("sde", "paper")


# ---- step rule ------------------------------------------------------------------------------
def steps_for_T(n_steps_at_T1: int, T: float, rule: str = "fixed_dt", minimum: int = 2) -> int:
    """Number of steps of a fixed-grid sampler run from ``T`` instead of 1.

    Args:
        n_steps_at_T1: the step count the sweep names (what the sampler would use at T = 1).
        T: the terminal time, in (0, 1].
        rule: 'fixed_dt' keeps the step size Δt ≈ 1/n_steps_at_T1, so the count falls linearly with T
            (``max(minimum, round(n·T))``; the paper's SDE-sampler NFE falls this way); 'fixed_steps'
            keeps the count (Δt shrinks to T/n).
        minimum: the smallest count returned (fixed-grid samplers need >= 2 grid points).

    Raises:
        ValueError: unknown rule, non-positive count or T outside (0, 1].
    """
    if rule not in STEP_RULES:
        raise ValueError(f"steps_for_T: unknown rule {rule!r}; expected one of: {', '.join(STEP_RULES)}")
    if not isinstance(n_steps_at_T1, int) or n_steps_at_T1 <= 0:
        raise ValueError(f"steps_for_T: n_steps_at_T1 must be a positive integer, got {n_steps_at_T1!r}")
    if not 0 < T <= 1:
        raise ValueError(f"steps_for_T: T must be in (0, 1], got {T!r}")
    if rule == "fixed_steps":
        return max(minimum, n_steps_at_T1)
    return max(minimum, round(n_steps_at_T1 * T))


# ---- helpers ------------------------------------------------------------------------------------
def _t(sde: SDE, t: float) -> Tensor:
    return torch.tensor([float(t)], dtype=torch.float64)


def _alpha_sigma(sde: SDE, t: float) -> tuple[float, float]:
    alpha, sigma = sde.marginal(_t(sde, t))
    return float(alpha), float(sigma)


def diffuse(x0: Tensor, sde: SDE, copies: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Forward-diffuse data to the SDE's T: ``copies`` draws of α_T·x0 + σ_T·z per point, [copies·N, ...].

    Args:
        x0: [N, ...] data in the model's range.
        sde: the SDE; its ``T`` is where the data are diffused to.
        copies: noise draws per data point (more draws, more x_T to fit a prior on).
        generator: torch.Generator for the noise (required for reproducibility; default a fresh one).
    """
    alpha, sigma = _alpha_sigma(sde, sde.T)
    x0 = x0.to(torch.float64).repeat(copies, *([1] * (x0.dim() - 1)))
    z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    return alpha * x0 + sigma * z


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-z.double() / math.sqrt(2.0))


def _check_shape(owner: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(shape[1:]) != tuple(expected):
        raise ValueError(f"{owner}: sample shape {tuple(shape[1:])} does not match the prior's {tuple(expected)}")


# ---- naive ----------------------------------------------------------------------------------------
def naive_prior(sde: SDE, variant: str = "sde") -> GaussianPrior:
    """The paper's Table 1 Gaussian at the SDE's T.

    Args:
        sde: the (possibly truncated) SDE.
        variant: 'sde' (std ``sde.prior_std()``: 1 for VP/sub-VP, σ(T) for VE) or 'paper' (VE only
            differs: std √(σ(T)² − σ(0)²), the paper's kernel variance without score_sde's σ_min).
    """
    if variant not in NAIVE_VARIANTS:
        raise ValueError(f"naive_prior: unknown variant {variant!r}; expected one of: {', '.join(NAIVE_VARIANTS)}")
    if variant == "paper" and sde.kind == "ve":
        s_T, s_0 = float(sde.sigma(_t(sde, sde.T))), float(sde.sigma(_t(sde, 0.0)))
        return GaussianPrior(sde, std=math.sqrt(s_T**2 - s_0**2))
    return GaussianPrior(sde)


# ---- moment-matched Gaussian --------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MomentPrior:
    """Gaussian N(mean, Σ) with the moments of forward-diffused data x_T.

    Args:
        mean: [D] mean of the flattened x_T.
        scale: [D, D] lower Cholesky factor of Σ ('full') or [D] standard deviations ('diag').
        shape: shape of one sample.
        T: the time the data were diffused to (provenance; checked by the sweep).
        fit_info: what it was fitted on.
    """

    mean: Tensor
    scale: Tensor
    shape: tuple[int, ...]
    T: float | None = None
    fit_info: dict = field(default_factory=dict)
    kind = "moment"
    network_calls = 0

    @property
    def covariance(self) -> str:
        return "full" if self.scale.dim() == 2 else "diag"

    @classmethod
    def fit(cls, x_T: Tensor, covariance: str = "full", jitter: float = 1e-6, T: float | None = None) -> MomentPrior:
        """Moment-match x_T [N, ...] (float64); ``jitter``·mean variance is added to the diagonal."""
        if covariance not in ("full", "diag"):
            raise ValueError(f"MomentPrior.fit: unknown covariance {covariance!r}; expected one of: full, diag")
        x = x_T.reshape(x_T.shape[0], -1).to(torch.float64)
        mean = x.mean(0)
        d = x - mean
        if covariance == "diag":
            var = d.pow(2).mean(0)
            scale = (var + jitter * var.mean()).sqrt()
        else:
            cov = d.T @ d / x.shape[0]
            cov = cov + jitter * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=torch.float64)
            scale = torch.linalg.cholesky(cov)
        info = {"n": x.shape[0], "covariance": covariance, "jitter": jitter}
        return cls(mean, scale, tuple(x_T.shape[1:]), T, info)

    def sample(self, shape: tuple[int, ...], noise, dtype=torch.float32, device="cpu") -> Tensor:
        """[B, *shape] draws mean + scale·z, z from the noise source (per-sample streams kept)."""
        _check_shape("MomentPrior", shape, self.shape)
        z = noise.normal(tuple(shape), dtype=torch.float64, device=device).reshape(shape[0], -1)
        mean, scale = self.mean.to(device), self.scale.to(device)
        x = mean + (z @ scale.T if scale.dim() == 2 else z * scale)
        return x.reshape(shape).to(dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """log N(x; mean, Σ), [B] float64."""
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        mean, scale = self.mean.to(x.device), self.scale.to(x.device)
        D = xf.shape[1]
        if scale.dim() == 2:
            w = torch.linalg.solve_triangular(scale, (xf - mean).T, upper=False).T
            logdet = scale.diagonal().log().sum()
        else:
            w = (xf - mean) / scale
            logdet = scale.log().sum()
        return -0.5 * (w.pow(2).sum(1) + D * math.log(2 * math.pi)) - logdet

    def state(self) -> dict:
        return {"kind": self.kind, "mean": self.mean, "scale": self.scale, "shape": list(self.shape), "T": self.T,
                "fit_info": self.fit_info}

    def save(self, path: str | Path) -> Path:
        return save_prior(self, path)


# ---- normalizing flow -----------------------------------------------------------------------
def _build_flow(dim: int, config: dict):
    try:
        import zuko
    except ImportError as e:  # pragma: no cover - zuko is a project dependency
        raise ImportError("FlowPrior needs zuko (pip install zuko)") from e
    hidden = tuple(config["hidden"])
    return zuko.flows.NSF(dim, bins=config["bins"], transforms=config["transforms"], passes=2,
                          hidden_features=hidden)


class FlowPrior(torch.nn.Module):
    """Auxiliary generative model of x_T: a neural-spline coupling flow fitted by maximum likelihood.

    The density is ``p(x) = p_flow((x − m)/s) / Π s`` with (m, s) the per-dimension mean and std of
    the training x_T (standardisation, so the splines' [−5, 5] window covers the data). Sampling maps
    base draws z ~ N(0, I) from the noise source through the inverse transform (per-sample streams
    kept). One ``sample`` or ``log_prob`` call is one pass of the flow network (``network_calls``).

    Args:
        shape: shape of one sample.
        config: flow hyper-parameters: transforms, hidden (tuple), bins.
        shift, scale: [D] standardisation.
        T: the time the training data were diffused to (provenance).
    """

    kind = "flow"
    network_calls = 1
    DEFAULTS = {"transforms": 4, "hidden": (128, 128), "bins": 8}

    def __init__(self, shape: tuple[int, ...], config: dict | None = None, shift: Tensor | None = None,
                 scale: Tensor | None = None, T: float | None = None) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.dim = math.prod(self.shape)
        unknown = sorted(set(config or {}) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"FlowPrior: unknown config key(s) {unknown}; expected: {', '.join(self.DEFAULTS)}")
        self.config = {**self.DEFAULTS, **(config or {})}
        self.config["hidden"] = tuple(self.config["hidden"])
        self.flow = _build_flow(self.dim, self.config)
        self.register_buffer("shift", torch.zeros(self.dim) if shift is None else shift.float().reshape(-1))
        self.register_buffer("scale", torch.ones(self.dim) if scale is None else scale.float().reshape(-1))
        self.T = T
        self.fit_info: dict = {}

    @classmethod
    def fit(cls, x_T: Tensor, *, steps: int = 2000, batch_size: int = 256, lr: float = 2e-3, weight_decay: float = 0.0,
            seed: int = 0, T: float | None = None, config: dict | None = None, log_every: int = 0) -> FlowPrior:
        """Maximum-likelihood fit on x_T [N, ...] with Adam and a cosine learning-rate decay.

        Args:
            x_T: forward-diffused data (see :func:`diffuse`).
            steps: Adam steps; batch_size: minibatch size; lr: peak learning rate.
            seed: seeds the initialisation and the minibatch order.
            T: provenance.
            config: flow hyper-parameters (see :attr:`DEFAULTS`).
            log_every: record the training NLL every this many steps (0: only the last).
        """
        x = x_T.reshape(x_T.shape[0], -1).to(torch.float32)
        torch.manual_seed(seed)
        prior = cls(tuple(x_T.shape[1:]), config, x.mean(0), x.std(0).clamp_min(1e-6), T)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(prior.flow.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        curve = []
        prior.train()
        for step in range(steps):
            idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
            loss = -prior._log_prob_flat(x[idx]).mean() / prior.dim
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if (log_every and step % log_every == 0) or step == steps - 1:
                curve.append((step, float(loss.detach())))
        prior.eval()
        prior.fit_info = {"n": x.shape[0], "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                          "nll_per_dim_curve": curve}
        return prior

    def _log_prob_flat(self, xf: Tensor) -> Tensor:
        u = (xf - self.shift) / self.scale
        return self.flow().log_prob(u) - self.scale.log().sum()

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x), [B] float64 (the flow runs in float32)."""
        xf = x.reshape(x.shape[0], -1).to(self.shift.device, torch.float32)
        with torch.no_grad():
            return self._log_prob_flat(xf).double().to(x.device)

    def sample(self, shape: tuple[int, ...], noise, dtype=torch.float32, device="cpu") -> Tensor:
        """[B, *shape]: base draws z from the noise source pushed through the inverse flow."""
        _check_shape("FlowPrior", shape, self.shape)
        z = noise.normal(tuple(shape), dtype=torch.float32).reshape(shape[0], -1).to(self.shift.device)
        with torch.no_grad():
            dist = self.flow()
            u = dist.transform.inv(z)  # zuko's base is the standard DiagNormal
            x = u * self.scale + self.shift
        return x.reshape(shape).to(device=device, dtype=dtype)

    def state(self) -> dict:
        config = {**self.config, "hidden": list(self.config["hidden"])}
        return {"kind": self.kind, "shape": list(self.shape), "config": config, "state_dict": self.state_dict(),
                "T": self.T, "fit_info": self.fit_info}

    def save(self, path: str | Path) -> Path:
        return save_prior(self, path)


# ---- oracles ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class OraclePrior:
    """ORACLE (uses held-out data): x_T = α_T·x0_i + σ_T·z with x0_i drawn uniformly from held-out data.

    ``log_prob`` is the exact density of that sampling distribution, (1/N) Σ_i N(x; α_T x0_i, σ_T² I)
    (a Gaussian KDE of bandwidth σ_T), evaluated in chunks of ``chunk`` data points.

    Args:
        x0: [N, ...] held-out data in the model's range.
        sde: the SDE; its T is where the data are diffused to.
    """

    x0: Tensor
    sde: SDE
    chunk: int = 2048
    kind = "oracle"
    network_calls = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x0.shape[1:])

    @property
    def T(self) -> float:
        return self.sde.T

    def sample(self, shape: tuple[int, ...], noise, dtype=torch.float32, device="cpu") -> Tensor:
        """[B, *shape]: each sample picks x0_i with one normal draw (index ⌊Φ(u)·N⌋), then diffuses it."""
        _check_shape("OraclePrior", shape, self.shape)
        B, N = shape[0], self.x0.shape[0]
        u = noise.normal((B,), dtype=torch.float64)
        idx = (_normal_cdf(u) * N).long().clamp(0, N - 1).cpu()
        z = noise.normal(tuple(shape), dtype=torch.float64, device="cpu")
        alpha, sigma = _alpha_sigma(self.sde, self.sde.T)
        return (alpha * self.x0[idx].double() + sigma * z).to(device=device, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """log (1/N) Σ_i N(x; α_T x0_i, σ_T² I), [B] float64."""
        alpha, sigma = _alpha_sigma(self.sde, self.sde.T)
        xf = x.reshape(x.shape[0], -1).to("cpu", torch.float64)
        centers = alpha * self.x0.reshape(self.x0.shape[0], -1).double()
        D, N = xf.shape[1], centers.shape[0]
        parts = [-torch.cdist(xf, c).pow(2) / (2 * sigma**2) for c in centers.split(self.chunk)]
        lse = torch.logsumexp(torch.cat(parts, 1), 1)
        return (lse - math.log(N) - 0.5 * D * math.log(2 * math.pi * sigma**2)).to(x.device)

    def state(self) -> dict:
        return {"kind": self.kind, "x0": self.x0, "sde": sde_to_dict(self.sde), "T": self.sde.T}

    def save(self, path: str | Path) -> Path:
        return save_prior(self, path)


@dataclass(frozen=True, eq=False)
class ExactMarginalPrior:
    """ORACLE for exact-score mixtures: the closed-form p_T of a GaussianMixture at its SDE's T.

    Args:
        mixture: a :class:`~models.gaussian.GaussianMixture`; ``T`` defaults to its SDE's T.
    """

    mixture: object
    T: float | None = None
    kind = "exact"
    network_calls = 0

    @property
    def time(self) -> float:
        return float(self.mixture.sde.T if self.T is None else self.T)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mixture.shape)

    def sample(self, shape: tuple[int, ...], noise, dtype=torch.float32, device="cpu") -> Tensor:
        """[B, *shape]: component from one normal draw (Φ(u) against the cumulative weights), then μ + σ z."""
        _check_shape("ExactMarginalPrior", shape, self.shape)
        m = self.mixture
        B = shape[0]
        alpha, sigma = _alpha_sigma(m.sde, self.time)
        u = _normal_cdf(noise.normal((B,), dtype=torch.float64)).cpu()
        k = torch.searchsorted(m.weights.cumsum(0), u).clamp_max(len(m.weights) - 1)
        z = noise.normal(tuple(shape), dtype=torch.float64, device="cpu").reshape(B, -1)
        mu = alpha * m.means.reshape(-1, m.dim)[k]
        std = (alpha**2 * m.var0[k] + sigma**2).sqrt()
        return (mu + std * z).reshape(shape).to(device=device, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.mixture.log_prob(x, self.time)


# ---- files ------------------------------------------------------------------------------------------
def save_prior(prior, path: str | Path) -> Path:
    """Write a fitted prior (moment, flow, oracle, or a GaussianPrior) to one small torch file."""
    path = Path(path)
    if isinstance(prior, GaussianPrior):
        state = {"kind": "gaussian", "std": prior.std, "mean": prior.mean, "sde": sde_to_dict(prior.sde)}
    elif hasattr(prior, "state"):
        state = prior.state()
    else:
        raise ValueError(f"save_prior: cannot save a {type(prior).__name__} (closed-form oracle priors are rebuilt)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": PRIOR_FORMAT, "version": 1, **state}, tmp)
    tmp.replace(path)
    return path


def load_prior(path: str | Path, map_location: str = "cpu"):
    """Read a prior written by :func:`save_prior` (``weights_only`` load)."""
    d = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(d, dict) or d.get("format") != PRIOR_FORMAT:
        raise ValueError(f"{path}: not a {PRIOR_FORMAT} file")
    kind = d["kind"]
    if kind == "gaussian":
        sde = d["sde"]
        return GaussianPrior(make_sde(sde["kind"], **{k: v for k, v in sde.items() if k != "kind"}), d["std"],
                             d["mean"])
    if kind == "moment":
        return MomentPrior(d["mean"], d["scale"], tuple(d["shape"]), d["T"], d["fit_info"])
    if kind == "flow":
        prior = FlowPrior(tuple(d["shape"]), d["config"], T=d["T"])
        prior.load_state_dict(d["state_dict"])
        prior.fit_info = d["fit_info"]
        return prior.eval()
    if kind == "oracle":
        sde = d["sde"]
        return OraclePrior(d["x0"], make_sde(sde["kind"], **{k: v for k, v in sde.items() if k != "kind"}))
    raise ValueError(f"{path}: unknown prior kind {kind!r}; expected one of: gaussian, moment, flow, oracle")
