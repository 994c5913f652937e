"""Markdown tables for docs/performance.md from a pytest-benchmark JSON (``tox -e bench`` writes
results/bench/latest.json): ``python -m tests.benchmarks.table results/bench/latest.json [more.json ...]``."""

from __future__ import annotations

import json
import sys


def _bound(e: dict) -> str:
    if "bound" not in e:
        return "–"
    return f"≤ {e['bound']:.2f}: {'within' if e['ratio_to_limit'] <= e['bound'] else '**exceeded**'}"


def header(paths: list[str]) -> str:
    """When each run was made, and the machine's load averages at its start and end."""
    lines = []
    for path in paths:
        data = json.load(open(path))
        info = data.get("machine_info", {})
        lines.append(f"{path}: {data.get('datetime', '?')}, load average (1/5/15 min) at start "
                     f"{info.get('loadavg_start')}, at end {info.get('loadavg_end')}, {info.get('cpu_count')} CPUs")
    return "\n".join(lines)


def rows(paths: list[str]) -> dict[str, list[str]]:
    data = {"benchmarks": [b for path in paths for b in json.load(open(path))["benchmarks"]]}
    out: dict[str, list[str]] = {"overhead": [], "ode_overhead": [], "noise": [], "ratio": [], "likelihood": [],
                                 "ode": []}
    for b in sorted(data["benchmarks"], key=lambda b: b["name"]):
        e, t = b["extra_info"], b["stats"]["min"]
        name = b["name"]
        params = name[name.index("[") + 1: -1] if "[" in name else ""
        if name.startswith("test_overhead_per_step"):
            family, shape, batch = params.rsplit("-", 2)
            per_nfe = e["overhead_ms_per_step"] * e["steps"] / max(e["nfe"] - 1, 1)
            step, floor = e["overhead_ms_per_step"], e.get("rng_floor_ms_per_step", 0.0)
            out["overhead"].append(f"| {family} | {shape} | {batch} | {e['nfe']} | {e.get('draws_per_step', 0):.1f} | "
                                   f"{step:.2f} | {floor:.2f} | {step - floor:.2f} | {per_nfe:.2f} |")
        elif name.startswith("test_ode_overhead_per_nfe"):
            backend, batch = params.rsplit("-", 1)
            out["ode_overhead"].append(f"| {backend} | {batch} | {e['nfe']} | {e['overhead_ms_per_nfe']:.2f} |")
        elif name.startswith("test_noise_draw_floor"):  # mean: the seeded source refills every 16 draws
            source, batch = params.rsplit("-", 1)
            out["noise"].append(f"| {source} | {batch} | {b['stats']['mean'] * 1e3:.3f} |")
        elif name.startswith("test_ratio_to_network_limit"):
            family, model, batch = params.split("-")
            out["ratio"].append(f"| {family} | {model} | {batch} | {e['nfe']} | {t:.3f} | "
                                f"{e['forward_s'] * 1e3:.1f} | {e['ratio_to_limit']:.3f} | {_bound(e)} |")
        elif name.startswith("test_likelihood_time_per_nfe"):
            model, batch, backend = params.split("-")
            out["likelihood"].append(f"| {backend} | {model} | {batch} | {e['nfe']} | {t:.2f} | "
                                     f"{e['forward_backward_s'] * 1e3:.1f} | {e['ratio_to_limit']:.3f} | {_bound(e)} |")
        elif name.startswith("test_bench_ode_backends"):
            out["ode"].append(f"| {e['backend']} | {e['batch_size']} | {e['nfe']} | {e['time_per_nfe_ms']:.3f} | "
                              f"{e['score_call_ms']:.3f} | {e['overhead_per_nfe_ms']:.3f} |")
    return out


HEADERS = {
    "overhead": "| sampler | data | batch | NFE | draws per step | ms per step outside the network | "
                "of which random-number floor | beyond the floor | ms per NFE |\n"
                "|---|---|---|---|---|---|---|---|---|",
    "ode_overhead": "| ODE sampler (rtol = atol = 1e-3) | batch | NFE | ms per NFE outside the network |\n"
                    "|---|---|---|---|",
    "noise": "| noise source | batch | ms per 3×32×32 draw (mean) |\n|---|---|---|",
    "ratio": "| sampler | network | batch | NFE | run (s) | bare forward (ms) | run / (NFE × forward) | bound |\n"
             "|---|---|---|---|---|---|---|---|",
    "likelihood": "| backend | network | batch | NFE | solve (s) | forward+backward (ms) | solve / (NFE × fwd+bwd) | "
                  "bound |\n|---|---|---|---|---|---|---|---|",
    "ode": "| backend | batch | NFE | ms per NFE | score call (ms) | overhead per NFE (ms) |\n"
           "|---|---|---|---|---|---|",
}


def main(paths: list[str]) -> None:
    print(header(paths))
    print()
    for key, lines in rows(paths).items():
        if lines:
            print(HEADERS[key])
            print("\n".join(lines))
            print()


if __name__ == "__main__":
    main(sys.argv[1:] or ["results/bench/latest.json"])
