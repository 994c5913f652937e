#!/usr/bin/env bash
# Run the docs/reproductions.md grids one after another (longest first), niced, one torch thread,
# and log each grid's wall-clock and CPU time (GNU time) to results/reproductions_time.log.
#   bash scripts/reproductions.sh [grid-name ...]     (default: all, in the order below)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PYTHON:-/work/main/.venv/bin/python}
grids=("$@")
[ ${#grids[@]} -eq 0 ] && grids=(pc_table1 ggf_nfe ggf_models ggf_ablation truncation likelihood_tol ncsnv2 mixture_solvers)
mkdir -p results
for g in "${grids[@]}"; do
  /usr/bin/time -a -o results/reproductions_time.log -f "$g wall=%e user=%U sys=%S exit=%x" \
    nice -n 15 "$PY" -m bench.run --grid "grids/reproductions/$g.yaml" --no-progress \
    >> "results/reproductions_$g.log" 2>&1
done
