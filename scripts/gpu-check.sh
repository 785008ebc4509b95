#!/usr/bin/env bash
# GPU check, run ON a GPU machine from a bundle (scripts/bundle.sh), with no build there:
#   dist/ptrain-<version>-linux-x86_64/bin/gpu-check.sh      (or scripts/gpu-check.sh BUNDLE_DIR)
# Prints the device, runs the GPU op tests and their perf mode (the bf16 GEMM rate that MFU is
# measured against), `ptrain bench step --device cuda` for the bench GPT and GPT-2 124M (seq 1024,
# batch 8, bf16) when this build has it, and a 2-rank run on the one GPU; a table comes last.
# A step this build lacks is reported as "not available in this build", not as a failure.
# Exit status: 0 when nothing that ran failed. Env: PTRAIN_GPU_CHECK_TIMEOUT (s per step, 600).
set -uo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ $# -ge 1 ]]; then
  BUNDLE=$(cd "$1" && pwd)
elif [[ -x $script_dir/ptrain && -d $script_dir/../libexec ]]; then
  BUNDLE=$(cd "$script_dir/.." && pwd)
else
  BUNDLE=$(ls -d "$script_dir"/../dist/ptrain-*-linux-x86_64 2>/dev/null | tail -n 1)
fi
[[ -n ${BUNDLE:-} && -x $BUNDLE/bin/ptrain ]] || {
  echo "gpu-check: no bundle found; pass its folder (made by scripts/bundle.sh)" >&2
  exit 2
}
PTRAIN=$BUNDLE/bin/ptrain
ENVWRAP=$BUNDLE/bin/ptrain-env
STEP_TIMEOUT=${PTRAIN_GPU_CHECK_TIMEOUT:-600}
LOG_DIR=${PTRAIN_GPU_CHECK_LOGS:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$LOG_DIR"

rows=()       # "step|result|detail"
failures=0
row() { rows+=("$1|$2|$3"); }
section() { printf '\n== %s ==\n' "$*"; }

# Runs "$@" with a timeout, output to the log file $1 and to the console.
run_logged() {
  local log=$1
  shift
  timeout --kill-after=10 "$STEP_TIMEOUT" "$@" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}

# --- device ---
section "device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi
  gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)
  row "device" "ok" "$gpu"
else
  row "device" "FAILED" "nvidia-smi not found"
  failures=$((failures + 1))
fi
"$PTRAIN" --version || { row "ptrain --version" "FAILED" "see above"; failures=$((failures + 1)); }

# --- GPU op tests ---
section "GPU tests"
shopt -s nullglob
tests=("$BUNDLE"/bin/tests/*)
if ((${#tests[@]} == 0)); then
  row "gpu tests" "n/a" "no test binaries in this bundle"
fi
for t in "${tests[@]}"; do
  name=$(basename "$t")
  log=$LOG_DIR/$name.log
  run_logged "$log" "$ENVWRAP" "$t" --gtest_color=no
  rc=$?
  passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -n 1)
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$log" | tail -n 1)
  failed=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -n 1)
  detail="passed ${passed:-0}, skipped ${skipped:-0}, failed ${failed:-0}"
  if ((rc == 0)); then
    row "$name" "ok" "$detail"
  else
    row "$name" "FAILED" "$detail (exit $rc; log $log)"
    failures=$((failures + 1))
  fi
done

# --- perf mode: kernel timings and the bf16 GEMM rate ---
section "op perf"
bf16_tflops=""
if [[ -x $BUNDLE/bin/tests/test_tensor_ops ]]; then
  log=$LOG_DIR/op_perf.log
  PTRAIN_OPS_PERF=1 run_logged "$log" "$ENVWRAP" "$BUNDLE/bin/tests/test_tensor_ops" \
    --gtest_filter='Perf.*' --gtest_color=no
  rc=$?
  bf16_tflops=$(sed -n 's/^perf: gemm_bf16 8192x8192x8192: .*, \([0-9.]*\) TFLOP\/s/\1/p' "$log")
  while read -r line; do
    row "${line%%:*}" "ok" "${line#*: }"
  done < <(sed -n 's/^perf: //p' "$log")
  ((rc == 0)) || { row "op perf" "FAILED" "exit $rc; log $log"; failures=$((failures + 1)); }
else
  row "op perf" "n/a" "test_tensor_ops not in this bundle"
fi

# --- training step benchmarks ---
section "bench step"
# Tokens/s from a bench output line such as "... 123456 tokens/s ..." or "tokens/s: 123456".
tokens_per_s() {
  grep -oiE '([0-9][0-9.,]*) *tok(en)?s/s|tok(en)?s/s[ :=]*([0-9][0-9.,]*)' "$1" | tail -n 1 |
    grep -oE '[0-9][0-9.,]*' | tr -d ,
}
bench_step() {  # label, flops per token (or ""), args...
  local label=$1 flops_per_token=$2
  shift 2
  local log=$LOG_DIR/bench_${label//[^A-Za-z0-9]/_}.log
  run_logged "$log" "$PTRAIN" bench step "$@"
  local rc=$?
  if ((rc == 2)) && grep -qiE 'not (a valid|recognized)|unknown|extraneous|requires|expected' "$log"; then
    row "$label" "n/a" "not available in this build: bench step rejects '$*'"
    return
  fi
  if ((rc != 0)); then
    row "$label" "FAILED" "exit $rc; log $log"
    failures=$((failures + 1))
    return
  fi
  local tps
  tps=$(tokens_per_s "$log")
  local detail="tokens/s ${tps:-?}"
  if [[ -n $tps && -n $flops_per_token && -n $bf16_tflops ]]; then
    detail+=$(awk -v t="$tps" -v f="$flops_per_token" -v r="$bf16_tflops" \
      'BEGIN { printf ", MFU %.1f%% of the measured bf16 GEMM rate %.0f TFLOP/s", 100 * t * f / (r * 1e12), r }')
  fi
  row "$label" "ok" "$detail"
}
if "$PTRAIN" bench --help 2>/dev/null | grep -qE '^\s+step\b'; then
  bench_step "bench step: bench GPT" "" --device cuda
  # GPT-2 124M: 6N FLOP per token for the weights plus 12*L*T*C for attention (llm.c's count).
  gpt2_flops=$(awk 'BEGIN { printf "%.0f", 6 * 124.4e6 + 12 * 12 * 1024 * 768 }')
  # shellcheck disable=SC2086
  bench_step "bench step: GPT-2 124M" "$gpt2_flops" --device cuda \
    ${PTRAIN_GPU_CHECK_GPT2_ARGS:---model gpt2-124m --seq-len 1024 --batch 8 --precision bf16}
else
  row "bench step" "n/a" "not available in this build ('ptrain bench --help' lists no step)"
fi

# --- two ranks sharing the one GPU ---
section "2-rank run"
cfg=""
for c in "$BUNDLE"/share/ptrain/configs/quickstart.yaml; do cfg=$c; done
if ! "$PTRAIN" --help 2>/dev/null | grep -qE '^\s+run\b'; then
  row "2-rank run" "n/a" "not available in this build (no 'ptrain run')"
elif [[ -z $cfg ]]; then
  row "2-rank run" "n/a" "no configs/quickstart.yaml in this bundle"
else
  log=$LOG_DIR/two_ranks.log
  run_dir=$(mktemp -d /tmp/gpu-check-runs.XXXXXX)
  run_logged "$log" "$PTRAIN" run "$cfg" --set nodes.procs_per_node=2 --set nodes.device=cuda \
    --set train.steps=20 --set data.type=synthetic --set data.path= --set logging.dir="$run_dir"
  rc=$?
  if ((rc == 0)); then
    row "2-rank run" "ok" "quickstart on cuda, 2 ranks, 20 steps (runs in $run_dir)"
  elif ((rc == 2)); then
    row "2-rank run" "n/a" "not available in this build: the spec or overrides were refused (log $log)"
  else
    row "2-rank run" "FAILED" "exit $rc; log $log"
    failures=$((failures + 1))
  fi
fi

# --- summary ---
section "summary (logs in $LOG_DIR)"
printf '%-40s %-7s %s\n' "step" "result" "detail"
for r in "${rows[@]}"; do
  IFS='|' read -r step result detail <<<"$r"
  printf '%-40s %-7s %s\n' "$step" "$result" "$detail"
done
exit $((failures > 0))
