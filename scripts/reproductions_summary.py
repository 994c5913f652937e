"""Numbers, standard errors and figures of docs/reproductions.md from the harness's records.

Reads the records of the grids under grids/reproductions/ (results/repro_*/runs/*.json) and the
samples each run kept (``save_samples`` = all of them, in seed order). Uncertainty: the seeds are cut
into K = 10 disjoint groups (seeds 0-99, 100-199, ... for 1000 samples); the metric is recomputed with
the harness's own metric (``bench.metrics.compute_metric``) with each group left out, and the
delete-one-group jackknife gives the standard error of the value on all samples,
SE = sqrt((K−1)/K · Σ_k (θ_−k − mean θ_−)²). The headline value is the record's own metric. A
difference between two cells on the same seeds gets the jackknife SE of the difference (groups left
out together). Fréchet distances carry a positive finite-sample bias (about 1.0 for fd_digits at 1000
samples, from the same jackknife), which cancels in differences between cells of the same size only
to first order. Every sample is a function of its seed alone except under score_sde's batch-mean
Langevin corrector, whose step size is shared by a batch (500 or 1000 samples).

    python scripts/reproductions_summary.py            # prints the tables, writes the JSON and figures
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.metrics import compute_metric  # noqa: E402

K = 10
ROOT = Path(__file__).resolve().parents[1]


class Records:
    """The ok records of one results folder, with leave-one-group-out metrics computed on demand."""

    def __init__(self, folder: Path, metric: str = "fd_digits"):
        self.folder = folder
        self.metric = metric
        self.records = []
        for p in sorted((folder / "runs").glob("*.json")) if (folder / "runs").exists() else []:
            r = json.loads(p.read_text())
            if r.get("status") == "ok":
                self.records.append(r)
        self._subsets: dict[str, np.ndarray] = {}
        self._models: dict[str, object] = {}

    def find(self, **match) -> dict | None:
        hits = [r for r in self.records if all(_get(r, k) == v for k, v in match.items())]
        if len(hits) > 1:
            raise ValueError(f"{self.folder}: {len(hits)} records match {match}")
        return hits[0] if hits else None

    def _options(self, r: dict) -> dict:
        if self.metric in ("fd_exact", "sw2_exact"):
            from bench.models import load_score_model

            if r["model"] not in self._models:
                self._models[r["model"]] = load_score_model(r["model_section"], "cpu", "float32")
            return {"model": self._models[r["model"]]}
        return {"data_range": tuple(r["data_range"])}

    def subsets(self, r: dict) -> np.ndarray:
        """The metric on the run's kept samples with each of the K disjoint seed groups left out."""
        rid = r["run_id"]
        if rid not in self._subsets:
            x = torch.load(self.folder / "runs" / f"{rid}.samples.pt", weights_only=True)
            if x.shape[0] != r["num_samples"]:
                raise ValueError(f"{rid}: {x.shape[0]} samples kept, {r['num_samples']} drawn")
            group = torch.arange(x.shape[0]) * K // x.shape[0]
            opts = self._options(r)
            self._subsets[rid] = np.array([compute_metric(self.metric, x[group != k], **opts)[0] for k in range(K)])
        return self._subsets[rid]


def jack_se(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(math.sqrt((K - 1) / K * ((v - v.mean()) ** 2).sum()))


def _get(r: dict, key: str):
    if key in ("model", "solver", "T"):
        return r.get(key)
    if key == "prior":
        return r["prior"].get("kind", "gaussian")
    return r["options"].get(key, "<default>")


def cell(recs: Records, r: dict | None) -> dict | None:
    """Headline fd, its subset SE, NFE (batch and per-sample), run id."""
    if r is None:
        return None
    sub = recs.subsets(r)
    return {"run_id": r["run_id"], "fd": r[recs.metric], "se": jack_se(sub), "leave_out": sub.tolist(),
            "nfe": r["nfe"], "nfe_per_sample": r.get("nfe_per_sample_mean"),
            "cpu_wall_s": r["wall_time_s"]}


def diff(a: dict | None, b: dict | None) -> dict | None:
    """a − b with the SE of the subset-wise differences."""
    if a is None or b is None:
        return None
    return {"diff": a["fd"] - b["fd"], "se": jack_se(np.array(a["leave_out"]) - np.array(b["leave_out"]))}


def verdict(d: dict | None, sign: int) -> str:
    """'yes' if the difference has the claimed sign beyond 2 SE, 'no' if the opposite, else 'within noise'."""
    if d is None:
        return "missing"
    z = sign * d["diff"] / d["se"] if d["se"] > 0 else math.inf * sign * d["diff"]
    return "yes" if z > 2 else "no" if z < -2 else "within noise"


def fmt(c: dict | None) -> str:
    return "missing" if c is None else f"{c['fd']:.3f} ± {c['se']:.3f}"


def fmtd(d: dict | None) -> str:
    return "missing" if d is None else f"{d['diff']:+.3f} ± {d['se']:.3f}"


# --- claims 1 and 2 ------------------------------------------------------------------------------
PREDICTORS = {"reverse diffusion": ("reverse_diffusion", "<default>"),
              "ancestral sampling": ("ancestral_sampling", "<default>"),
              "probability flow": ("reverse_diffusion", True)}


def table1(recs: Records, model: str, N: int) -> dict:
    """Score SDE Table 1 layout at base N: P_N, P_2N, PC_N per predictor, and C_2N, with differences."""
    c2 = cell(recs, recs.find(model=model, solver="pc", predictor="none", n_steps=2 * N))
    rows = {}
    for label, (solver, pf) in PREDICTORS.items():
        p1 = cell(recs, recs.find(model=model, solver=solver, n_steps=N, probability_flow=pf))
        p2 = cell(recs, recs.find(model=model, solver=solver, n_steps=2 * N, probability_flow=pf))
        pc = cell(recs, recs.find(model=model, solver="pc", predictor=solver, n_steps=N, snr=0.16,
                                  probability_flow=pf))
        row = {"P": p1, "2P": p2, "PC": pc, "PC-P": diff(pc, p1), "PC-2P": diff(pc, p2), "C-P": diff(c2, p1),
               "C-PC": diff(c2, pc)}
        row["PC_beats_P"] = verdict(row["PC-P"], -1)
        row["PC_beats_2P"] = verdict(row["PC-2P"], -1)
        row["C_worse_than_P"] = verdict(row["C-P"], +1)
        rows[label] = row
    print(f"\n{recs.folder.name} {model}, base N = {N}: C{2 * N} {fmt(c2)}")
    for label, row in rows.items():
        print(f"  {label:18s} P{N} {fmt(row['P'])}  P{2 * N} {fmt(row['2P'])}  PC{N} {fmt(row['PC'])}  "
              f"PC-P {fmtd(row['PC-P'])} [{row['PC_beats_P']}]  PC-2P {fmtd(row['PC-2P'])} [{row['PC_beats_2P']}]  "
              f"C-P {fmtd(row['C-P'])} [{row['C_worse_than_P']}]")
    return {"N": N, "C": c2, "rows": rows}


def claim12(out: dict) -> dict:
    recs = Records(ROOT / "results/repro_pc_table1")
    res = {m: table1(recs, m, 200) for m in ("digits_ve", "digits_vp")}
    rd = res["digits_vp"]["rows"]["reverse diffusion"]
    pc01 = cell(recs, recs.find(model="digits_vp", solver="pc", predictor="reverse_diffusion", n_steps=200,
                                snr=0.01, probability_flow="<default>"))
    rd["PC_snr0.01"], rd["PC_snr0.01-2P"] = pc01, diff(pc01, rd["2P"])
    print(f"  digits_vp PC200 snr 0.01: {fmt(pc01)}, minus P400 {fmtd(rd['PC_snr0.01-2P'])}")
    mix = Records(ROOT / "results/repro_mixture_solvers", "fd_exact")
    res_mix = {f"{m} N={N}": table1(mix, m, N) for m in ("mix_ve", "mix_vp") for N in (25, 50)}
    out["claims_1_2"] = {"digits": res, "mixture": res_mix}
    return out["claims_1_2"]


def _bars(ax, tab: dict, title: str, ylabel: str) -> None:
    N, rows = tab["N"], tab["rows"]
    keys, colours = ("P", "2P", "PC"), ("#9ecae1", "#3182bd", "#e6550d")
    names = {"P": f"P{N}", "2P": f"P{2 * N}", "PC": f"PC{N}"}
    for i, label in enumerate(rows):
        for j, k in enumerate(keys):
            c = rows[label][k]
            if c is not None:
                ax.bar(i + (j - 1) * 0.25, c["fd"], 0.25, yerr=2 * c["se"], color=colours[j], capsize=2,
                       label=f"{names[k]} (NFE {c['nfe']})" if i == 0 else None)
    c = tab["C"]
    if c is not None:
        ax.axhline(c["fd"], color="k", ls="--", lw=1, label=f"C{2 * N} (NFE {c['nfe']}): {c['fd']:.3g}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), list(rows), fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)


def figure_claim1(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, model in zip(axes[0], ("digits_ve", "digits_vp")):
        _bars(ax, res["digits"][model], f"{model} (trained here), base N = 200", "fd_digits, 1000 samples, ±2 SE")
    for ax, key in zip(axes[1], ("mix_ve N=25", "mix_vp N=25")):
        if key in res["mixture"]:
            _bars(ax, res["mixture"][key], f"{key.split()[0]} (exact score, 64-d), base N = 25",
                  "fd_exact, 2000 samples, ±2 SE")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --- claim 3 -------------------------------------------------------------------------------------
def claim3(out: dict) -> dict:
    recs = Records(ROOT / "results/repro_likelihood_tol")
    res = {}
    print("\nclaim 3")
    for model in ("digits_vp", "digits_ve"):
        row = {}
        for tol in (1e-3, 1e-5):
            r = next((r for r in recs.records if r["model"] == model and r["metrics_requested"] == ["bpd"]
                      and r["spec"]["likelihood"].get("rtol") == tol), None)
            if r is not None:
                prot = r["metrics"]["bpd"]["protocol"]
                row[f"bpd_{tol:g}"] = {"run_id": r["run_id"], "bpd": r["bpd"], "se": prot["stderr"],
                                       "nfe": r["bpd_nfe"], "wall_s": r["wall_time_s"]}
        a, b = row.get("bpd_0.001"), row.get("bpd_1e-05")
        if a and b:
            row["bpd_diff"] = {"diff": a["bpd"] - b["bpd"], "se_upper": math.hypot(a["se"], b["se"])}
        res[model] = row
        print(f"  {model}: " + "  ".join(f"{k}: {v}" for k, v in row.items()))
    out["claim_3"] = res
    return res


# --- claims 4-6 ----------------------------------------------------------------------------------
def curve_nfe_at(points: list[tuple[float, float]], target: float) -> tuple[float, bool]:
    """The smallest NFE at which a fd-vs-NFE curve (sorted by NFE) reaches ``target``: linear in
    log NFE between the bracketing points; (max NFE, True) when it never does (a lower bound)."""
    pts = sorted(points)
    if pts[0][1] <= target:
        return pts[0][0], False
    for (n0, f0), (n1, f1) in zip(pts, pts[1:]):
        if f1 <= target:
            w = (f0 - target) / (f0 - f1)
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0))), False
    return pts[-1][0], True


def ggf_curves(recs: Records, model: str, em_steps, pc_steps, tols=(0.1, 0.05, 0.02, 0.01)) -> dict:
    """EM and PC quality-vs-NFE curves, the adaptive solver's points, and the NFE ratio at equal quality."""
    em = [cell(recs, recs.find(model=model, solver="euler_maruyama", n_steps=n)) for n in em_steps]
    pc = [cell(recs, recs.find(model=model, solver="pc", n_steps=n, snr=0.01, predictor="reverse_diffusion",
                               probability_flow="<default>")) for n in pc_steps]
    ad = {t: cell(recs, recs.find(model=model, solver="adaptive_improved_euler", rtol=t, extrapolation="<default>",
                                  norm="<default>")) for t in tols}
    em, pc = [c for c in em if c], [c for c in pc if c]
    res = {"em": em, "pc": pc, "adaptive": {str(k): v for k, v in ad.items()}, "ratios": {}}
    print(f"\n{recs.folder.name} {model}: Gotta Go Fast curves")
    for name, curve in (("EM", em), ("PC", pc)):
        print(f"  {name}: " + ", ".join(f"NFE {c['nfe']}: {fmt(c)}" for c in curve))
    for tol, a in ad.items():
        if a is None:
            continue
        line = {}
        for name, curve in (("EM", em), ("PC", pc)):
            if not curve:
                continue
            full, bound = curve_nfe_at([(c["nfe"], c["fd"]) for c in curve], a["fd"])
            jack = [curve_nfe_at([(c["nfe"], c["leave_out"][k]) for c in curve], a["leave_out"][k])[0] / a["nfe"]
                    for k in range(K)]
            line[name] = {"nfe_equal_quality": full, "lower_bound": bound, "ratio": full / a["nfe"],
                          "ratio_se": jack_se(jack), "ratio_per_sample_nfe": full / a["nfe_per_sample"]}
        res["ratios"][str(tol)] = line
        print(f"  adaptive rtol {tol}: fd {fmt(a)}, NFE {a['nfe']} (per sample {a['nfe_per_sample']:.1f}); " +
              "; ".join(f"{n} needs {v['nfe_equal_quality']:.0f}{'+' if v['lower_bound'] else ''} NFE, ratio "
                        f"{v['ratio']:.2f} ± {v['ratio_se']:.2f} (per-sample NFE: {v['ratio_per_sample_nfe']:.2f})"
                        for n, v in line.items()))
    return res


def claim4(out: dict) -> dict:
    res = {"digits": ggf_curves(Records(ROOT / "results/repro_ggf_nfe"), "digits_vp", (50, 100, 200, 400),
                                (25, 50, 100)),
           "mixture": ggf_curves(Records(ROOT / "results/repro_mixture_solvers", "fd_exact"), "mix_vp",
                                 (25, 35, 50, 100, 200), (25, 50, 100))}
    out["claim_4"] = res
    return res


def figure_claim4(res: dict, abl: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, ylabel in ((axes[0], "digits", "fd_digits (1000 samples, ±2 SE)"),
                            (axes[1], "mixture", "fd_exact (2000 samples, ±2 SE)")):
        r, ab = res[key], abl[key]
        series = [("Euler–Maruyama", r["em"], "o-"), ("PC (RD + Langevin, snr 0.01)", r["pc"], "s-"),
                  ("adaptive Improved Euler", [c for c in r["adaptive"].values() if c], "D-"),
                  ("adaptive, no extrapolation", [c for c in ab["no_extrapolation"].values() if c], "v--"),
                  ("adaptive, linf norm", [c for c in ab["linf"].values() if c], "^--")]
        for label, curve, style in series:
            curve = sorted(curve, key=lambda c: c["nfe"])
            if curve:
                ax.errorbar([c["nfe"] for c in curve], [c["fd"] for c in curve],
                            yerr=[2 * c["se"] for c in curve], fmt=style, ms=4, capsize=2, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE (score calls per batch)")
        ax.set_ylabel(ylabel)
        ax.set_title("digits VP (trained here)" if key == "digits" else "64-d exact-score mixture, VP", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def claim5(out: dict) -> dict:
    recs, vp = Records(ROOT / "results/repro_ggf_models"), Records(ROOT / "results/repro_ggf_nfe")
    res = {}
    print("\nclaim 5")
    for model in ("digits_vp", "digits_subvp", "digits_ve"):
        src, n = (vp, 400) if model == "digits_vp" else (recs, 400)
        em = cell(src, src.find(model=model, solver="euler_maruyama", n_steps=n))
        ad = cell(src, src.find(model=model, solver="adaptive_improved_euler", rtol=0.05, extrapolation="<default>",
                                norm="<default>"))
        d = diff(ad, em)
        res[model] = {"em_steps": n, "em": em, "adaptive": ad, "adaptive-em": d, "adaptive_better": verdict(d, -1),
                      "adaptive_worse": verdict(d, +1)}
        print(f"  {model}: EM{n} {fmt(em)}; adaptive {fmt(ad)} NFE {ad and ad['nfe']} "
              f"(per sample {ad and ad['nfe_per_sample']}); diff {fmtd(d)} [worse: {verdict(d, +1)}]")
    out["claim_5"] = res
    return res


def ablation(recs: Records, base: Records, model: str) -> dict:
    """Extrapolation on/off and l2_scaled vs linf at rtol 0.1, 0.05, 0.02."""
    res = {"no_extrapolation": {}, "linf": {}, "extrapolation_effect": {}, "l2_vs_linf": {}}
    find = dict(model=model, solver="adaptive_improved_euler")
    l2 = [cell(base, base.find(**find, rtol=t, extrapolation="<default>", norm="<default>"))
          for t in (0.1, 0.05, 0.02, 0.01)]
    l2 = [c for c in l2 if c]
    print(f"\n{recs.folder.name} {model}: adaptive ablations")
    for tol in (0.1, 0.05, 0.02):
        on = cell(base, base.find(**find, rtol=tol, extrapolation="<default>", norm="<default>"))
        off = cell(recs, recs.find(**find, rtol=tol, extrapolation=False))
        linf = cell(recs, recs.find(**find, rtol=tol, norm="linf"))
        res["no_extrapolation"][str(tol)] = off
        res["linf"][str(tol)] = linf
        d = diff(on, off)
        res["extrapolation_effect"][str(tol)] = {"on_minus_off": d, "nfe_on": on and on["nfe"],
                                                 "nfe_off": off and off["nfe"], "better": verdict(d, -1)}
        print(f"  rtol {tol}: extrapolation on {fmt(on)} NFE {on and on['nfe']}; off {fmt(off)} NFE "
              f"{off and off['nfe']}; on-off {fmtd(d)} [{verdict(d, -1)}]; linf {fmt(linf)} NFE {linf and linf['nfe']}")
        if linf and l2:
            n_l2, bound = curve_nfe_at([(c["nfe"], c["fd"]) for c in l2], linf["fd"])
            res["l2_vs_linf"][str(tol)] = {"linf_nfe": linf["nfe"], "linf_fd": linf["fd"], "l2_nfe_at_same_fd": n_l2,
                                           "l2_bound": bound}
            print(f"    l2_scaled reaches linf's fd at NFE {n_l2:.0f}{'+' if bound else ''} (linf: {linf['nfe']})")
    return res


def claim6(out: dict) -> dict:
    mix = Records(ROOT / "results/repro_mixture_solvers", "fd_exact")
    res = {"digits": ablation(Records(ROOT / "results/repro_ggf_ablation"), Records(ROOT / "results/repro_ggf_nfe"),
                              "digits_vp"),
           "mixture": ablation(mix, mix, "mix_vp")}
    out["claim_6"] = res
    return res


# --- claim 7 -------------------------------------------------------------------------------------
def claim7(out: dict) -> dict:
    recs = Records(ROOT / "results/repro_ncsnv2")
    res = {"als_1step": {}, "als_5step": {}, "em200": {}}
    print("\nclaim 7")
    for w in ("ema", "raw"):
        m = f"ncsnv2_{w}"
        for eps in ("<default>", 2e-6, 1e-5, 2e-5, 2e-4):
            res["als_1step"][f"{w} {eps}"] = cell(recs, recs.find(model=m, steps_per_level=1, step_size=eps))
        res["als_5step"][w] = cell(recs, recs.find(model=m, steps_per_level=5))
        res["em200"][w] = cell(recs, recs.find(model=f"vp_{w}"))
    for k, c in res["als_1step"].items():
        print(f"  ALS 1 step/level {k}: {fmt(c)}")
    t4, naive = res["als_1step"]["ema <default>"], res["als_1step"]["ema 2e-05"]
    res["t4_minus_ncsn"] = diff(t4, naive)
    res["ema_minus_raw"] = {"als_1step_t4": diff(t4, res["als_1step"]["raw <default>"]),
                            "als_5step_t4": diff(res["als_5step"]["ema"], res["als_5step"]["raw"]),
                            "vp_em200": diff(res["em200"]["ema"], res["em200"]["raw"])}
    print(f"  T4 - NCSN eps (EMA): {fmtd(res['t4_minus_ncsn'])}")
    for k, d in res["ema_minus_raw"].items():
        print(f"  EMA - raw, {k}: {fmtd(d)}")
    for w in ("ema", "raw"):
        print(f"  ALS 5 steps/level {w}: {fmt(res['als_5step'][w])}; VP EM200 {w}: {fmt(res['em200'][w])}")
    out["claim_7"] = res
    return res


# --- claim 8 -------------------------------------------------------------------------------------
def claim8(out: dict) -> dict:
    recs = Records(ROOT / "results/repro_truncation")
    res = {"fd": {}, "bpd": {}, "elbo": None}
    print("\nclaim 8")
    for prior in ("gaussian", "moment"):
        for T in (1.0, 0.8, 0.6, 0.4, 0.2):
            r = next((r for r in recs.records if r["T"] == T and _get(r, "prior") == prior
                      and r["solver"] == "euler_maruyama"), None)
            res["fd"][f"{prior} {T}"] = cell(recs, r)
            b = next((r for r in recs.records if r["T"] == T and _get(r, "prior") == prior
                      and r["metrics_requested"] == ["bpd"]), None)
            res["bpd"][f"{prior} {T}"] = None if b is None else {
                "run_id": b["run_id"], "bpd": b["bpd"], "se": b["metrics"]["bpd"]["protocol"]["stderr"],
                "nfe": b["bpd_nfe"]}
            c, bb = res["fd"][f"{prior} {T}"], res["bpd"][f"{prior} {T}"]
            bpd = "missing" if bb is None else f"{bb['bpd']:.3f} ± {bb['se']:.3f} (NFE {bb['nfe']})"
            print(f"  {prior:8s} T={T}: fd {fmt(c)} NFE {c and c['nfe']}; PF bpd {bpd}")
    ref = res["fd"]["gaussian 1.0"]
    res["fd_minus_naive_T1"] = {k: diff(c, ref) for k, c in res["fd"].items() if k != "gaussian 1.0"}
    for k, d in res["fd_minus_naive_T1"].items():
        print(f"  {k} minus naive T=1: {fmtd(d)}")
    p = ROOT / "results/repro_elbo/elbo.json"
    if p.exists():
        e = json.loads(p.read_text())
        rows = {(r["prior"], r["T"]): r for r in e["rows"]}
        elbo = {"cpu_s": e["cpu_s"], "n_time": e["n_time"], "n_prior": e["n_prior"], "num_points": e["num_points"],
                "curves": {}}
        for prior in ("naive", "moment"):
            Ts = sorted(T for (pr, T) in rows if pr == prior)
            if not Ts:
                continue
            best = min(Ts, key=lambda T: rows[(prior, T)]["elbo_bpd"])
            b = np.array(rows[(prior, best)]["per_point_bpd"])
            curve = []
            for T in Ts:
                v = np.array(rows[(prior, T)]["per_point_bpd"])
                dd = v - b
                curve.append({"T": T, "elbo_bpd": float(v.mean()), "se": float(v.std(ddof=1) / math.sqrt(len(v))),
                              "minus_best": float(dd.mean()), "minus_best_se": float(dd.std(ddof=1) / math.sqrt(len(v)))
                              if T != best else 0.0})
            elbo["curves"][prior] = {"best_T": best, "curve": curve}
            print(f"  ELBO {prior}: best T {best}; " + ", ".join(
                f"T={c['T']}: {c['elbo_bpd']:.4f} (+{c['minus_best']:.4f} ± {c['minus_best_se']:.4f})" for c in curve))
        res["elbo"] = elbo
    out["claim_8"] = res
    return res


def figure_claim8(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for prior, style in (("gaussian", "o-"), ("moment", "s-")):
        pts = [(float(k.split()[1]), c) for k, c in res["fd"].items() if k.startswith(prior) and c]
        axes[0].errorbar([T for T, _ in pts], [c["fd"] for _, c in pts], yerr=[2 * c["se"] for _, c in pts],
                         fmt=style, capsize=2, ms=4, label="naive N(0, I)" if prior == "gaussian" else "moment-fitted")
        pts = [(float(k.split()[1]), c) for k, c in res["bpd"].items() if k.startswith(prior) and c]
        axes[1].errorbar([T for T, _ in pts], [c["bpd"] for _, c in pts], yerr=[2 * c["se"] for _, c in pts],
                         fmt=style, capsize=2, ms=4, label="naive" if prior == "gaussian" else "moment-fitted")
    axes[0].set_yscale("log")
    axes[0].set_title("fd_digits of EM samples (100·T steps), ±2 SE", fontsize=9)
    axes[1].set_title("probability-flow bits/dim (test split), ±2 SE", fontsize=9)
    if res.get("elbo"):
        for prior, style in (("naive", "o-"), ("moment", "s-")):
            if prior in res["elbo"]["curves"]:
                cv = res["elbo"]["curves"][prior]["curve"]
                axes[2].errorbar([c["T"] for c in cv], [c["minus_best"] for c in cv],
                                 yerr=[2 * c["minus_best_se"] for c in cv], fmt=style, capsize=2, ms=4,
                                 label=f"{prior} (best T = {res['elbo']['curves'][prior]['best_T']})")
        axes[2].set_yscale("symlog", linthresh=0.01)
        axes[2].set_title("−ELBO bits/dim minus its best T (paired, ±2 SE)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("T")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cpu_time() -> dict:
    """CPU seconds per grid from results/reproductions_time.log (GNU time: user + sys)."""
    p = ROOT / "results/reproductions_time.log"
    rows = {}
    if p.exists():
        for line in p.read_text().splitlines():
            parts = dict(f.split("=") for f in line.split()[1:] if "=" in f)
            if "user" in parts:
                rows[line.split()[0]] = {"wall_s": float(parts["wall"]), "cpu_s": float(parts["user"]) +
                                         float(parts["sys"]), "exit": int(parts["exit"])}
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="docs/reproductions_numbers.json")
    p.add_argument("--img", default="docs/img")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out: dict = {"uncertainty": f"delete-one-group jackknife over {K} disjoint seed groups"}
    r12 = claim12(out)
    claim3(out)
    r4 = claim4(out)
    r6 = claim6(out)
    claim5(out)
    claim7(out)
    r8 = claim8(out)
    out["cpu_time"] = cpu_time()
    img = ROOT / args.img
    figure_claim1(r12, img / "repro_claim1_pc.png")
    figure_claim4(r4, r6, img / "repro_claim4_ggf.png")
    figure_claim8(r8, img / "repro_claim8_truncation.png")

    def strip(o):  # the JSON summary keeps subset values, not per-point arrays
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k != "per_point_bpd"}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o

    (ROOT / args.json).write_text(json.dumps(strip(out), indent=1) + "\n")
    print(f"\ncpu time: {out['cpu_time']}")
    print(f"wrote {args.json} and figures under {args.img}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
