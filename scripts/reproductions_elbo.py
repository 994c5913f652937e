"""ELBO of a shipped model as a function of the diffusion time T (claim 8 of docs/reproductions.md).

The harness has no ``elbo`` metric (docs/truncation.md: "Not wired"), so this script evaluates
``models.elbo.elbo`` on the dequantised test split for each T and prior, with the priors built by the
harness's own ``bench.priors.build_prior`` (the same moment-matched Gaussian a grid's
``prior: {kind: moment, covariance: full}`` fits). Every T uses the same generator seed (common random
numbers), and the per-point ELBOs are kept so that differences between T values get paired standard
errors.

    python scripts/reproductions_elbo.py --out results/repro_elbo/elbo.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.models import RunScore, run_sde  # noqa: E402
from bench.priors import build_prior  # noqa: E402
from models.checkpoint_io import load_model  # noqa: E402
from models.datasets import load_dataset  # noqa: E402
from models.elbo import elbo  # noqa: E402

PRIORS = {"naive": {"kind": "gaussian"}, "moment": {"kind": "moment", "covariance": "full"}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="models/weights/digits_vp.pt")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--T", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    p.add_argument("--priors", nargs="+", default=list(PRIORS), choices=list(PRIORS))
    p.add_argument("--n-time", type=int, default=32, help="importance-sampled time draws per test point")
    p.add_argument("--n-prior", type=int, default=4, help="x_T draws per test point for the prior term")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/repro_elbo/elbo.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    model = load_model(args.checkpoint)
    test = load_dataset(args.dataset, "test")
    lo_hi = tuple(model.data_range)
    x0 = test.to_model_range(data_range=lo_hi, dequantize=torch.Generator().manual_seed(args.seed))
    D = x0[0].numel()
    offset = math.log2(test.levels) - math.log2(lo_hi[1] - lo_hi[0])  # bits/dim of the discrete data
    data = {"dataset": args.dataset}
    rows = []
    t_start = time.process_time()
    for name in args.priors:
        for T in args.T:
            sde = run_sde(model, T, None)
            prior = build_prior(PRIORS[name], model, sde, data, model_key=args.checkpoint)
            r = elbo(RunScore(model, sde), x0, prior, sde=sde, n_time=args.n_time, n_prior=args.n_prior,
                     generator=torch.Generator().manual_seed(args.seed + 1))
            bpd = r.bits_per_dim(D, offset)
            rows.append({"prior": name, "T": T, "elbo_bpd": float(bpd.mean()),
                         "elbo_bpd_se": float(bpd.std() / math.sqrt(len(bpd))),
                         "prior_term_nats": float(r.prior_term.mean()), "dsm_term_nats": float(r.dsm_term.mean()),
                         "entropy_term_nats": r.entropy_term, "per_point_bpd": bpd.tolist()})
            print(f"{name:7s} T={T:.2f} ELBO bpd {rows[-1]['elbo_bpd']:.4f} ± {rows[-1]['elbo_bpd_se']:.4f}",
                  flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": args.checkpoint, "dataset": args.dataset, "split": "test",
                               "num_points": len(x0), "n_time": args.n_time, "n_prior": args.n_prior,
                               "seed": args.seed, "cpu_s": time.process_time() - t_start, "rows": rows}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
