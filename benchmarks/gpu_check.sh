#!/usr/bin/env bash
# The GPU check, sized for a lent GPU machine's window: `bash benchmarks/gpu_check.sh OUT`
# (or `make gpu-check OUT=dir`), run from anywhere, with that machine's own python3 and torch.
#
# Steps, in order of value; each has its own time limit, cut to what is left of the whole
# budget (PYNOTES_GPU_CHECK_BUDGET_S, default 530 s: under 9 minutes by construction), and a
# failing or timed-out step does not stop the ones after it:
#   build       the extension in place for the present GPU's arch only (no --force)
#   info        GPU name, driver, CUDA, torch, pynotes.backend_info()
#   tests_cuda  the CUDA tests (no -x; a per-test timeout where pytest-timeout is installed)
#   memcheck    compute-sanitizer memcheck on a short CUDA subset of every op family, forward
#               and backward
#   racecheck   racecheck on the kernels that use shared memory (group norm, GBDT histogram)
#   bench       python -m benchmarks --device cuda --quick, each op against its GPU anchor,
#               with the GPU's measured copy bandwidth
#
# OUT receives at most 5 files, whatever happens: summary.md (a row per step: status, seconds,
# first error line), results.json and results.md (+ results.png with matplotlib) from the
# benchmarks, and logs.tar.gz with every step's full log. The exit status is 0 when every step
# passed.
#
# PYNOTES_GPU_CHECK_SELFTEST=1 runs the same plumbing on a machine without a GPU: each GPU step
# runs its dry form (the build command and arch, the tests and benchmark cases each step would
# run), plus a step that must hit its time limit, and writes the same files. CI runs it
# (tests/test_gpu_check.py).
set -uo pipefail
out="$(mkdir -p "${1:?usage: benchmarks/gpu_check.sh OUT_DIR}" && cd "$1" && pwd)"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
selftest="${PYNOTES_GPU_CHECK_SELFTEST:-0}"
budget="${PYNOTES_GPU_CHECK_BUDGET_S:-530}"
reserve=10  # seconds kept for the bundling at the end
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" FORCE_CUDA=1 PYTHONUNBUFFERED=1
work="$(mktemp -d)"
logs="$work/logs"
mkdir -p "$logs" "$work/bench"
trap 'rm -rf "$work"' EXIT
status=0
rows=()

# step NAME LIMIT_S COMMAND...: runs COMMAND with its output in logs/NAME.log, for at most
# LIMIT_S seconds or what is left of the budget, and records a summary row.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((budget - reserve - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 2)); then
    echo "== $name: skipped, no time left in the ${budget} s budget"
    rows+=("| $name | skipped: no time left | 0 | |")
    status=1
    return
  fi
  echo "== $name (limit ${limit} s): $*"
  local start=$SECONDS rc
  timeout -k 5 "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  local took=$((SECONDS - start)) result first=""
  if ((rc == 0)); then
    result=ok
  else
    if ((rc == 124 || rc == 137)); then result="timed out after ${limit} s"; else result="failed (exit $rc)"; fi
    first="$(grep -m1 -E '(Error|error:|FAILED|ERROR|Traceback|=========  *[A-Z][a-z]+ )' \
      "$logs/$name.log" | cut -c1-200 | tr '|' '/')"
    [[ -z $first ]] && first="$(tail -n1 "$logs/$name.log" | cut -c1-200 | tr '|' '/')"
    status=1
  fi
  echo "   $result ($took s)"
  ((rc == 0)) || tail -5 "$logs/$name.log"
  rows+=("| $name | $result | $took | ${first//$'\r'/} |")
}

# The arch of the present GPU (e.g. 9.0): the build compiles for it alone.
gpu_arch() {
  "$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())"
}

info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "(no nvidia-smi)"
  "$py" - <<'EOF'
import json, platform, torch, pynotes
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"GPU: {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"Python {platform.python_version()}")
print(json.dumps(pynotes.backend_info(), indent=1))
EOF
}
export -f info
export py

# A per-test time limit where pytest-timeout is there (the GPU machine has it).
per_test_timeout=()
"$py" -c "import pytest_timeout" 2>/dev/null && per_test_timeout=(--timeout=60)
pytest=("$py" -m pytest -q -rs -p no:cacheprovider "${per_test_timeout[@]}")

# Short CUDA subsets for the sanitizers, which slow kernels ~100x: per family the forward and
# backward checks, odd and zero sizes; group norm in float32 and bfloat16 (dtype0, dtype3),
# both layouts, SiLU, the few-groups paths.
memcheck_files=(tests/test_group_norm.py tests/test_lstm.py tests/test_gcn.py tests/test_gbdt.py
                tests/test_iwae.py)
memcheck_k="cuda and ((test_forward_matches_torch or test_backward_matches_torch or \
test_channels_last_keeps_layout) and (dtype0 or dtype3) and not shape3 and not shape7 or \
test_cell_matches_torch or test_lstm_small_and_odd_sizes or test_cell_and_layer_half or \
test_layer_op_zero_size or test_propagate_matches_dense or test_gradients_match_dense_autograd or \
test_propagate_degenerate_graphs or test_propagate_half or test_histogram_matches or \
test_best_splits_match or test_advance_and_predict or test_empty_inputs or \
test_bound_weights_and_gradient or test_minus_inf or test_non_contiguous_and_low_precision)"
racecheck_files=(tests/test_group_norm.py tests/test_gbdt.py)
racecheck_k="cuda and ((test_forward_matches_torch or test_backward_matches_torch) and dtype0 and \
not shape3 and not shape7 or test_histogram_matches)"
sanitizer=(compute-sanitizer --error-exitcode 1 --print-limit 20)
bench=("$py" -m benchmarks --device cuda --quick --out "$work/bench" --name results)

if [[ $selftest == 1 ]]; then
  # Dry forms: what each GPU step would run, listed on this machine; CUDA cases are collected
  # as if a GPU were there.
  export PYNOTES_TEST_DEVICES=cpu,cuda
  step build 60 echo "would run: TORCH_CUDA_ARCH_LIST=<the GPU's arch> $py setup.py build_ext --inplace"
  step info 60 bash -c info
  step tests_cuda 120 "${pytest[@]}" --collect-only tests -k cuda
  step memcheck 60 "${pytest[@]}" --collect-only "${memcheck_files[@]}" -k "$memcheck_k"
  step racecheck 60 "${pytest[@]}" --collect-only "${racecheck_files[@]}" -k "$racecheck_k"
  step bench 60 "${bench[@]}" --list
  step time_limit 2 sleep 30  # must be stopped at 2 s: proves the limits hold
else
  arch="$(gpu_arch 2>/dev/null)" || arch=""
  step build 240 env TORCH_CUDA_ARCH_LIST="${arch:-9.0}" "$py" setup.py build_ext --inplace
  step info 30 bash -c info
  step tests_cuda 150 "${pytest[@]}" tests -k cuda
  step memcheck 120 "${sanitizer[@]}" --tool memcheck "${pytest[@]}" "${memcheck_files[@]}" -k "$memcheck_k"
  step racecheck 60 "${sanitizer[@]}" --tool racecheck "${pytest[@]}" "${racecheck_files[@]}" -k "$racecheck_k"
  step bench 200 "${bench[@]}"
fi

for f in "$work"/bench/results.{json,md,png}; do
  [[ -f $f ]] && cp "$f" "$out/"
done
{
  echo "# GPU check$([[ $selftest == 1 ]] && echo ' (self-test: dry forms, no GPU)')"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(grep -m1 '^GPU:' "$logs/info.log" 2>/dev/null)"
  echo
  echo "Total ${SECONDS} s of a ${budget} s budget."
  echo
  echo "| step | status | seconds | first error line |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${rows[@]}"
} >"$out/summary.md"
cp "$out/summary.md" "$logs/"
tar -czf "$out/logs.tar.gz" -C "$work" logs
cat "$out/summary.md"
if [[ $selftest == 1 ]]; then
  # The time_limit step must have timed out, and every other step passed.
  status=0
  grep -q '^| time_limit | timed out' "$out/summary.md" || status=1
  grep -v '^| time_limit ' "$out/summary.md" | grep -qE '^\| [a-z_]+ \| (failed|timed|skipped)' \
    && status=1
fi
exit $status
