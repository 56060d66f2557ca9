#!/usr/bin/env bash
# One command for a machine with a GPU and its own torch (`make gpu-check OUT=dir` or
#   bash benchmarks/gpu_check.sh OUT_DIR):
# builds the extension in place against that torch with every core, runs the CUDA tests,
# compute-sanitizer (memcheck, racecheck) on a short CUDA test run, and the GPU benchmarks.
# Each step's log goes to OUT_DIR/<step>.log, the benchmark tables to OUT_DIR/cuda-full.*;
# the exit status is non-zero if any step failed.
set -uo pipefail
out="$(mkdir -p "${1:?usage: benchmarks/gpu_check.sh OUT_DIR}" && cd "$1" && pwd)"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" FORCE_CUDA=1 PYTHONUNBUFFERED=1
status=0

step() {
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - start)) s)"
  else
    echo "   FAILED ($((SECONDS - start)) s), last lines of $out/$name.log:"
    tail -25 "$out/$name.log"
    status=1
  fi
}

step build "$py" setup.py build_ext --inplace --force
step info "$py" -c "import json, torch, pynotes; print(torch.cuda.get_device_name()); print(json.dumps(pynotes.backend_info(), indent=1))"
cat "$out/info.log"
step tests_cuda "$py" -m pytest -q -rs tests -k cuda
# Sanitizers slow kernels ~100x: a short, representative subset (both layouts, SiLU, all
# dtypes, forward and backward, the few-groups paths).
short="cuda and (test_forward_matches_torch or test_backward_matches_torch or test_channels_last_keeps_layout) and not shape3 and not shape7"
step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$py" -m pytest -q -x tests/test_group_norm.py -k "$short"
step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$py" -m pytest -q -x tests/test_group_norm.py -k "$short and float32"
# GCN, GBDT and IWAE kernels: short CUDA subsets under memcheck; the GBDT histogram's shared
# memory under racecheck.
step memcheck_ops compute-sanitizer --tool memcheck --error-exitcode 1 "$py" -m pytest -q -x \
  tests/test_gcn.py tests/test_gbdt.py tests/test_iwae.py \
  -k "cuda and (propagate_matches_dense or half_on_cuda or histogram_matches or best_splits_match or python_walk or minus_inf or low_precision)"
step racecheck_gbdt compute-sanitizer --tool racecheck --error-exitcode 1 "$py" -m pytest -q -x \
  tests/test_gbdt.py -k "cuda and histogram_matches"
step bench "$py" -m benchmarks --device cuda --full --out "$out"
tail -30 "$out/bench.log"
exit $status
