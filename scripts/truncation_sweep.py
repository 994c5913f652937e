"""Truncated diffusion time T (Franzese et al. 2023): priors at T, sample quality, bpd and ELBO per T.

Two experiments, each writing JSON rows and a Markdown table under ``--out``:

* ``mixture``: an exact-score Gaussian mixture (VP), where p_T is known. For each T and prior
  (naive, moment-matched, flow, exact marginal = oracle) it samples with Euler–Maruyama (fixed Δt)
  and reports sliced W2 / Fréchet distance to the exact data distribution, plus the
  probability-flow log-likelihood at T with the exact marginal as prior against the exact log p_eps.
* ``model``: a trained checkpoint (default the shipped digits model). For each T it fits the moment
  and flow priors to forward-diffused training data, builds the oracle from diffused test data, then
  for each prior and sampler reports fd_digits (or sliced W2 in pixel space with ``--metric sw2``),
  NFE, prior network calls, bpd (probability flow, Hutchinson) and the ELBO on test data.

Usage::

    python scripts/truncation_sweep.py mixture --out results/truncation_sweep
    python scripts/truncation_sweep.py model --checkpoint models/weights/digits_vp.pt --out results/truncation_sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.metrics import make_metric  # noqa: E402
from bench.metrics.exact import SlicedW2, make_exact_fd  # noqa: E402
from bench.models import RunScore  # noqa: E402
from models.elbo import elbo  # noqa: E402
from models.fitted_priors import (  # noqa: E402
    ExactMarginalPrior,
    FlowPrior,
    MomentPrior,
    OraclePrior,
    diffuse,
    naive_prior,
    steps_for_T,
)
from models.gaussian import GaussianMixture  # noqa: E402
from models.sde import VPSDE  # noqa: E402
from solvers import ProbabilityFlowLikelihood, Problem, SeededNoise, make_sampler  # noqa: E402

TS = (1.0, 0.8, 0.6, 0.4, 0.2)
PRIORS = ("naive", "moment", "flow", "oracle")


def mixture_model(sde) -> GaussianMixture:
    """The test mixture: four unequal components at (±1.5, ±1.5) in 2-D, std 0.3 (data range ±2)."""
    means = torch.tensor([[1.5, 1.5], [-1.5, 1.5], [1.5, -1.5], [-1.5, -1.5]]).reshape(4, 1, 1, 2)
    return GaussianMixture(means, torch.full((4,), 0.3), sde, weights=torch.tensor([0.4, 0.3, 0.2, 0.1]))


def sample(problem: Problem, solver: str, n_steps: int, n: int, batch: int, dtype=torch.float32):
    """n samples from the problem's prior through a fixed-grid sampler; (samples, nfe, wall seconds)."""
    out, nfe, t0 = [], 0, time.perf_counter()
    sampler = make_sampler(solver, n_steps=n_steps)
    for lo in range(0, n, batch):
        noise = SeededNoise(f"{lo}-{min(n, lo + batch) - 1}")
        problem.counter.reset()
        x = problem.prior_sample(len(noise), noise, dtype=dtype)
        sol = sampler.sample(problem, x, noise)
        out.append(sol.x.detach())
        nfe += sol.stats.nfe
    return torch.cat(out), nfe // math.ceil(n / batch), time.perf_counter() - t0


def run_mixture(args) -> list[dict]:
    rows = []
    for T in args.T:
        sde = VPSDE(T=T)
        m = mixture_model(sde)
        x0 = m.sample(args.n_fit, 0.0, generator=torch.Generator().manual_seed(1))
        xT = diffuse(x0, sde, 2, torch.Generator().manual_seed(2))
        t0 = time.perf_counter()
        priors = {"naive": naive_prior(sde), "moment": MomentPrior.fit(xT, T=T),
                  "flow": FlowPrior.fit(xT, steps=args.flow_steps, T=T, config={"hidden": (64, 64), "transforms": 3}),
                  "oracle(exact p_T)": ExactMarginalPrior(m)}
        fit_s = time.perf_counter() - t0
        n_steps = steps_for_T(args.n_steps, T, args.rule)
        xT_exact = m.sample(4000, T, torch.Generator().manual_seed(3))
        for name, prior in priors.items():
            x, nfe, wall = sample(Problem(m, prior), "euler_maruyama", n_steps, args.n, args.n, torch.float64)
            sw2, fd = SlicedW2(m), make_exact_fd(m)
            sw2.update(x)
            fd.update(x)
            rows.append({"experiment": "mixture", "T": T, "prior": name, "solver": "euler_maruyama",
                         "n_steps": n_steps, "nfe": nfe, "sw2_exact": sw2.compute()[0], "fd_exact": fd.compute()[0],
                         "prior_logp_exact_xT": float(prior.log_prob(xT_exact).mean()),
                         "wall_s": wall, "prior_fit_s": fit_s})
            print(json.dumps(rows[-1]), flush=True)
        # bpd at T with the exact marginal: probability-flow log p_eps vs exact.
        lik = ProbabilityFlowLikelihood(divergence="exact", rtol=1e-6, atol=1e-6)
        xs = m.sample(64, 0.0, generator=torch.Generator().manual_seed(4))
        r = lik(Problem(m, ExactMarginalPrior(m)), xs)
        exact = m.log_prob(xs, lik.eps)
        rows.append({"experiment": "mixture_likelihood", "T": T, "prior": "oracle(exact p_T)",
                     "logp_flow_mean": float(r.logp.mean()), "logp_exact_mean": float(exact.mean()),
                     "max_abs_diff": float((r.logp - exact).abs().max()), "nfe": r.nfe})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _prior_factory(name: str, sde, train_x0, test_x0, args, seed: int):
    if name == "naive":
        return naive_prior(sde, args.naive_variant)
    if name == "oracle":
        return OraclePrior(test_x0, sde)
    xT = diffuse(train_x0, sde, args.copies, torch.Generator().manual_seed(seed))
    if name == "moment":
        return MomentPrior.fit(xT, covariance="full", T=sde.T)
    if name == "flow":
        return FlowPrior.fit(xT, steps=args.flow_steps, T=sde.T, seed=seed)
    raise ValueError(f"unknown prior {name!r}; expected one of: {', '.join(PRIORS)}")


def run_model(args) -> list[dict]:
    from models.checkpoint_io import load_model
    from models.datasets import load_dataset

    model = load_model(args.checkpoint)
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    lo_hi = tuple(model.data_range)
    train_x0 = train.to_model_range(data_range=lo_hi)
    test_x0 = test.to_model_range(data_range=lo_hi)
    test_deq = test.to_model_range(data_range=lo_hi, dequantize=torch.Generator().manual_seed(0))
    offset = math.log2(train.levels) - math.log2(lo_hi[1] - lo_hi[0])
    rows = []
    prior_dir = Path(args.out) / "priors"
    for T in args.T:
        sde = dataclasses.replace(model.sde, T=T)
        score = RunScore(model, sde)
        for pi, name in enumerate(args.priors):
            t0 = time.perf_counter()
            prior = _prior_factory(name, sde, train_x0, test_x0, args, seed=int(T * 1000) + pi)
            fit_s = time.perf_counter() - t0
            if hasattr(prior, "save") and name != "oracle":
                prior.save(prior_dir / f"{Path(args.checkpoint).stem}_T{T:g}_{name}.pt")
            base = {"experiment": "model", "model": Path(args.checkpoint).stem, "T": T, "prior": name,
                    "prior_fit_s": fit_s, "prior_network_calls_per_batch": getattr(prior, "network_calls", 0)}
            # Likelihood terms (sampler-independent).
            xs = test_deq[: args.n_bpd].to(torch.float32)
            lik = ProbabilityFlowLikelihood(rtol=args.bpd_tol, atol=args.bpd_tol, eps=args.lik_eps or model.sde.eps)
            problem = Problem(score, prior)
            r = lik(problem, xs, SeededNoise(f"0-{len(xs) - 1}"), levels=train.levels, data_range=lo_hi)
            e = elbo(score, test_deq.to(torch.float32), prior, sde=sde, eps=lik.eps, n_time=args.elbo_time,
                     n_prior=2, generator=torch.Generator().manual_seed(5))
            D = test_deq[0].numel()
            calls = getattr(prior, "network_calls", 0)
            lik_row = {**base, "bpd": float(r.bpd.mean()), "bpd_nfe": r.nfe, "bpd_prior_calls": calls,
                       "bpd_status": str(r.status), "elbo_nats": float(e.elbo.mean()),
                       "elbo_bpd": float(e.bits_per_dim(D, offset).mean()),
                       "elbo_stderr_bpd": float(e.elbo.std() / math.sqrt(len(e.elbo)) / (D * math.log(2)))}
            for solver, n1 in (("euler_maruyama", args.n_steps), ("pf_heun", args.n_steps_ode)):
                if solver not in args.solvers:
                    continue
                for rule in args.rules:
                    n_steps = steps_for_T(n1, T, rule)
                    if rule == "fixed_steps" and T == 1.0:
                        continue  # identical to fixed_dt at T = 1
                    x, nfe, wall = sample(problem, solver, n_steps, args.n, args.batch)
                    metric = make_metric("fd_digits", data_range=lo_hi) if args.metric == "fd" else None
                    if metric is not None:
                        metric.update(x)
                        quality = metric.compute()[0]
                    else:
                        quality = _pixel_sw2(x, test_x0)
                    rows.append({**lik_row, "solver": solver, "rule": rule, "n_steps": n_steps, "nfe": nfe,
                                 "prior_calls_sampling": math.ceil(args.n / args.batch) * calls,
                                 "quality_metric": "fd_digits" if metric is not None else "sw2_pixels",
                                 "quality": quality, "wall_s": wall})
                    print(json.dumps(rows[-1]), flush=True)
                    _write(rows, args)
    return rows


def _pixel_sw2(x, ref, n_projections: int = 256) -> float:
    from bench.metrics.exact import wasserstein2_1d

    g = torch.Generator().manual_seed(0)
    d = torch.randn(x[0].numel(), n_projections, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=0, keepdim=True)
    return math.sqrt(float(wasserstein2_1d(x.flatten(1).double() @ d, ref.flatten(1).double() @ d).mean()))


def _write(rows: list[dict], args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.command}.json").write_text(json.dumps(rows, indent=1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("mixture", "model"):
        s = sub.add_parser(name)
        s.add_argument("--out", default="results/truncation_sweep")
        s.add_argument("--T", type=float, nargs="+", default=list(TS))
        s.add_argument("--n", type=int, default=4000 if name == "mixture" else 1000, help="samples per cell")
        s.add_argument("--n-steps", type=int, default=200 if name == "mixture" else 100,
                       help="Euler–Maruyama grid points at T = 1")
        s.add_argument("--flow-steps", type=int, default=1500 if name == "mixture" else 1000)
        s.add_argument("--rule", default="fixed_dt")
        s.add_argument("--threads", type=int, default=1)
    m = sub.choices["model"]
    m.add_argument("--checkpoint", default="models/weights/digits_vp.pt")
    m.add_argument("--dataset", default="digits")
    m.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS)
    m.add_argument("--naive-variant", default="sde", choices=("sde", "paper"))
    m.add_argument("--copies", type=int, default=8, help="noise draws per training image for the fitted priors")
    m.add_argument("--n-steps-ode", type=int, default=50, help="PF Heun grid points at T = 1")
    m.add_argument("--rules", nargs="+", default=["fixed_dt"], choices=("fixed_dt", "fixed_steps"))
    m.add_argument("--batch", type=int, default=500)
    m.add_argument("--solvers", nargs="+", default=["euler_maruyama", "pf_heun"], choices=("euler_maruyama", "pf_heun"))
    m.add_argument("--metric", default="fd", choices=("fd", "sw2"))
    m.add_argument("--n-bpd", type=int, default=128)
    m.add_argument("--bpd-tol", type=float, default=1e-3)
    m.add_argument("--elbo-time", type=int, default=16)
    m.add_argument("--lik-eps", type=float, default=None,
                   help="start time of the likelihood ODE and the ELBO integral (default: the model's training eps)")
    sub.choices["mixture"].add_argument("--n-fit", type=int, default=4000)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run_mixture(args) if args.command == "mixture" else run_model(args)
    _write(rows, args)
    return rows


if __name__ == "__main__":
    main()
