"""Markdown tables from the JSON lines of ``scripts/gpu_check.py``, for docs/performance.md.

Usage::

    python scripts/gpu_report.py gpu_check.jsonl > gpu_tables.md

Every number comes from the file; a failed section is printed as its error, a skipped cell as its reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2e}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows), ""]


def _env(r: dict) -> list[str]:
    return [f"Device: {r.get('device_name')} ({r.get('device')}), torch {r.get('torch')}, "
            f"CUDA {r.get('cuda_runtime')}, cuDNN {r.get('cudnn')}; TF32 matmul {r.get('matmul_allow_tf32')}, "
            f"TF32 cuDNN {r.get('cudnn_allow_tf32')}, cuDNN benchmark {r.get('cudnn_benchmark')}; "
            f"git {str(r.get('git_revision'))[:10]}"
            f"{'; SMOKE (CPU, tiny sizes: not a measurement)' if r.get('smoke') else ''}.", ""]


def _matmul(r: dict) -> list[str]:
    return _table(["matmul (n×n)", "bf16 TFLOP/s", "float32 TFLOP/s"],
                  [[str(r["n"]), r["bf16"]["tflops"], r["float32"]["tflops"]]])


def _forward(r: dict) -> list[str]:
    return _table(["network", "batch", "variant", "ms / forward", "GFLOP / forward", "TFLOP/s", "of bf16 matmul",
                   "peak MiB", "rel. error vs float32"],
                  [[x["network"], str(x["batch"]), x["variant"], x["ms"], x["gflop"], x["tflops"],
                    x["fraction_of_bf16_matmul"], x["peak_memory_mb"], x["rel_err_vs_float32"]] for x in r["rows"]])


def _ratio(r: dict) -> list[str]:
    rows = []
    for x in r["rows"]:
        if "skipped" in x or "error" in x:
            rows.append([x["solver"], x.get("skipped") or x["error"], "", "", "", "", "", ""])
            continue
        per_call = x.get("forward_ms", x.get("forward_backward_ms"))
        rows.append([x["solver"], x["status"], str(x["nfe"]), x["sampling_s"], per_call, x["ratio"],
                     _f(x["target"]), _f(x.get("meets_target"))])
    return _table(["sampler", "status", "NFE", "run (s)", "forward (+VJP) ms", "run / limit", "target", "met"], rows)


def _bf16(r: dict) -> list[str]:
    rows = [[name, d["max_abs"], d["rel_rms_median"], d["rel_rms_max"], d["uint8_pixels_changed"],
             r["fd"].get(name)] for name, d in (("float32_rerun_vs_float32", r["float32_rerun_vs_float32"]),
                                               ("bf16_vs_float32", r["bf16_vs_float32"]))]
    rows.append(["float32_other_seeds_vs_float32", None, None, None, None, r["fd"]["float32_other_seeds_vs_float32"]])
    lines = [f"{r['sampler']}, {r['n_steps']} steps, {r['network']}, batch {r['batch']}; feature space "
             f"{r['feature_space']}; non-finite values {r['nonfinite']}.", ""]
    lines += _table(["pair", "max |Δ|", "median rel. RMS", "max rel. RMS", "8-bit pixels changed", "Fréchet distance"],
                    rows)
    if "fd_inception" in r:
        lines += [f"Inception: {r['fd_inception']}", ""]
    return lines


def _oom(r: dict) -> list[str]:
    keys = ("how", "batch", "cap_mb", "batch_forward_need_mb", "status", "oom_splits", "split_and_completed",
            "max_abs_diff_vs_unsplit", "bitwise_equal_to_unsplit")
    return _table(["field", "value"], [[k, _f(r.get(k))] for k in keys if k in r])


def _workers(r: dict) -> list[str]:
    lines = [f"GPUs {r['gpus']}, CLI flags {r['cli_flags']}, args {r['args']}: exit {r['exit_code']}, wall "
             f"{_f(r['wall_s'])} s (runs' own wall time {_f(r['runs_wall_sum_s'])} s); per-GPU workers exercised: "
             f"{_f(r['per_gpu_workers_exercised'])}.", ""]
    lines += _table(["run", "status", "executor", "worker GPU", "device", "wall (s)"],
                    [[x["run_id"], x["status"], _f(x["executor"]), _f(x["worker_gpu"]), _f(x["device_name"]),
                      x["wall_time_s"]] for x in r["records"]])
    if "plan" in r:
        lines += [f"--plan: exit {r['plan']['exit_code']}, parsed estimate {_f(r['plan']['estimate_s_parsed'])} s, "
                  f"estimate / measured {_f(r.get('plan_estimate_over_measured'))}.", "", "```",
                  r["plan"]["output_tail"].rstrip(), "```", ""]
    return lines


def _compile(r: dict) -> list[str]:
    rows = [[x["network"], str(x["batch"]), x.get("skipped") or x.get("error") or x["backend"], x.get("first_call_s"),
             x.get("ms"), x.get("eager_bf16_channels_last_ms"), x.get("speedup_vs_eager"), x.get("rel_err_vs_eager")]
            for x in r["rows"]]
    return _table(["network", "batch", "backend", "first call (s)", "ms / forward", "eager bf16+CL ms", "speedup",
                   "rel. error vs eager"], rows)


RENDER = {"env": _env, "matmul": _matmul, "forward": _forward, "ratio": _ratio, "bf16": _bf16, "oom": _oom,
          "workers": _workers, "compile": _compile}


def render(lines: list[dict]) -> str:
    """Markdown for the JSON lines of one gpu_check run."""
    out: list[str] = []
    for line in lines:
        name = line["section"]
        if name == "summary":
            out += [f"All sections ok: {_f(line['ok'])}; total {_f(line['wall_s'], 1)} s "
                    f"(budget {_f(line['budget_s'], 0)} s).", ""]
            continue
        out += [f"### {name} ({_f(line['wall_s'], 1)} s)", ""]
        if not line["ok"] and "result" not in line:
            out += [f"**failed**: {line['error']}", ""]
            continue
        if line["result"].get("failures"):
            out += [f"**failures**: {line['result']['failures']}", ""]
        out += RENDER[name](line["result"]) if name in RENDER else [json.dumps(line["result"]), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python scripts/gpu_report.py GPU_CHECK.jsonl", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.is_file():
        print(f"error: {path} not found", file=sys.stderr)
        return 2
    print(render([json.loads(t) for t in path.read_text().splitlines() if t.strip()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
