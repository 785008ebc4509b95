#!/usr/bin/env bash
# GPU check, run ON a GPU machine from a bundle (scripts/bundle.sh), with no build there:
#   dist/ptrain-<version>-linux-x86_64/bin/gpu-check.sh      (or scripts/gpu-check.sh BUNDLE_DIR,
#   or scripts/gpu-check.sh dist/ptrain-<version>-linux-x86_64.tar.gz, which it unpacks first)
# Prints the device, runs the GPU tests and the op perf mode (kernel timings, bf16 GEMM rate),
# `ptrain bench step --device cuda` for the bench GPT (fp32) and GPT-2 124M (seq 1024, batch 8,
# bf16, then fp32) with tokens/s and MFU against the GEMM rate measured in the same run, a
# 2-rank `ptrain run` sharing the one GPU (Gloo with host staging) and a 1-rank cuda run; a
# table comes last. Exit status: 0 when nothing failed.
# Env: PTRAIN_GPU_CHECK_TIMEOUT (seconds per step, default 120).
set -uo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ $# -ge 1 && -f $1 && $1 == *.tar.gz ]]; then
  # The archive scripts/bundle.sh writes beside the folder (what a device check carries).
  unpack=$(mktemp -d /tmp/ptrain-bundle.XXXXXX)
  tar -C "$unpack" -xzf "$1" || { echo "gpu-check: cannot unpack $1" >&2; exit 2; }
  BUNDLE=$(ls -d "$unpack"/ptrain-*-linux-x86_64 2>/dev/null | tail -n 1)
elif [[ $# -ge 1 ]]; then
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
STEP_TIMEOUT=${PTRAIN_GPU_CHECK_TIMEOUT:-120}
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
# Fields of bench step's "RESULT k=v ..." line.
result_field() { sed -n "s/^RESULT .*\b$2=\([^ ]*\).*/\1/p" "$1" | tail -n 1; }
bench_step() {  # label, args...
  local label=$1
  shift
  local log=$LOG_DIR/bench_${label//[^A-Za-z0-9]/_}.log
  run_logged "$log" "$PTRAIN" bench step "$@"
  local rc=$?
  if ((rc != 0)); then
    row "$label" "FAILED" "exit $rc; log $log"
    failures=$((failures + 1))
    return
  fi
  local ms tps gf peak mfu
  ms=$(result_field "$log" ms_per_step)
  tps=$(result_field "$log" tokens_per_s)
  gf=$(result_field "$log" gflops)
  peak=$(result_field "$log" gemm_gflops)
  mfu=$(result_field "$log" mfu)
  local detail
  detail=$(awk -v ms="$ms" -v t="$tps" -v g="$gf" -v p="$peak" -v m="$mfu" \
    'BEGIN { printf "%.1f ms/step, %.0f tokens/s, %.1f TFLOP/s, MFU %.1f%% of %.0f TFLOP/s (GEMM rate, same run)", ms, t, g / 1e3, 100 * m, p / 1e3 }')
  if [[ -n $bf16_tflops && -n $gf ]]; then
    detail+=$(awk -v g="$gf" -v r="$bf16_tflops" 'BEGIN { printf "; %.1f%% of the op-perf bf16 rate", 100 * g / (r * 1e3) }')
  fi
  row "$label" "ok" "$detail"
}
bench_step "bench GPT fp32" --device cuda --steps 20 --warmup 3
# shellcheck disable=SC2086
bench_step "GPT-2 124M bf16 (B8 T1024)" --device cuda \
  ${PTRAIN_GPU_CHECK_GPT2_ARGS:---model gpt2-124m --seq 1024 --batch 8 --precision bf16 --steps 10 --warmup 2}
bench_step "GPT-2 124M fp32 (B8 T1024)" --device cuda --model gpt2-124m --seq 1024 --batch 8 \
  --precision fp32 --steps 5 --warmup 1

# --- ptrain run on the one GPU: 2 ranks sharing it (Gloo + host staging), then 1 rank ---
cfg=""
for c in "$BUNDLE"/share/ptrain/configs/quickstart.yaml; do cfg=$c; done
train_run() {  # label, procs
  local label=$1 procs=$2
  section "$label"
  if [[ -z $cfg ]]; then
    row "$label" "n/a" "no configs/quickstart.yaml in this bundle"
    return
  fi
  local log=$LOG_DIR/run_${procs}.log run_dir
  run_dir=$(mktemp -d /tmp/gpu-check-runs.XXXXXX)
  # CUDA_VISIBLE_DEVICES=0: the launcher gives every local rank GPU 0, so 2 ranks share it.
  CUDA_VISIBLE_DEVICES=0 run_logged "$log" "$PTRAIN" run "$cfg" \
    --set nodes.procs_per_node="$procs" --set nodes.device=cuda --set train.steps=30 \
    --set data.type=synthetic --set data.path= --set logging.dir="$run_dir"
  local rc=$?
  local comm final
  comm=$(grep -h -o 'comm: [^|]*' "$run_dir"/*/rank-0.log 2>/dev/null | head -n 1)
  final=$(grep -h -o 'final loss [0-9.]*' "$run_dir"/*/rank-0.log 2>/dev/null | tail -n 1)
  if ((rc == 0)); then
    row "$label" "ok" "30 steps, ${final:-final loss ?}; ${comm:-comm ?}"
  else
    row "$label" "FAILED" "exit $rc; log $log, runs in $run_dir"
    failures=$((failures + 1))
  fi
}
train_run "ptrain run: 2 ranks on 1 GPU" 2
train_run "ptrain run: 1 rank on cuda" 1

# --- summary ---
section "summary (logs in $LOG_DIR)"
printf '%-40s %-7s %s\n' "step" "result" "detail"
for r in "${rows[@]}"; do
  IFS='|' read -r step result detail <<<"$r"
  printf '%-40s %-7s %s\n' "$step" "$result" "$detail"
done
exit $((failures > 0))
