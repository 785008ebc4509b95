#!/usr/bin/env bash
# scripts/bench.sh gpt: the bench GPT (layers 4, heads 4, dim 256, seq 128, vocab 256, batch 8,
# AdamW, grad clip 1) on the CPU, ptrain (`ptrain bench step`) against PyTorch
# (scripts/bench/torch_gpt_cpu_step.py: the same model, batch, optimizer and threads), REPEATS
# times each (default 5), interleaved so that the machine's load falls on both alike; prints the
# medians and their ratios: ptrain fp32 (GEMMs auto, and all on OpenBLAS as before oneDNN),
# ptrain bf16, PyTorch fp32 and bf16 autocast; and the model GFLOP/s over the best GEMM rate
# measured in the same run. Usage: scripts/bench/gpt_cpu.sh PTRAIN_BINARY [THREADS (default 1)]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$1
THREADS=${2:-1}
REPEATS=${REPEATS:-5}
STEPS=${STEPS:-10}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
# What ptrain's launcher gives its workers (lib/launch/src/agent.cc); the same for PyTorch.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
work=$(mktemp -d /tmp/ptrain-bench-gpt-XXXXXX)
trap 'rm -rf "$work"' EXIT

torch_version=$($PY -c 'import torch; print(torch.__version__)' 2>/dev/null) ||
  { echo "bench gpt: PyTorch is missing (Debian's python3-torch; PTRAIN_SETUP_TORCH=1 scripts/setup.sh)" >&2; exit 2; }
echo "bench gpt: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), threads $THREADS, $REPEATS runs of $STEPS steps, PyTorch $torch_version"
"$BIN" --version | sed -n 's/^cpu kernels: /ptrain cpu kernels: /p'
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)} OMP_WAIT_POLICY=$OMP_WAIT_POLICY"

for i in $(seq 1 "$REPEATS"); do
  "$BIN" bench step --threads "$THREADS" --steps "$STEPS" >"$work/fp32-$i" 2>&1 ||
    { echo "bench gpt: ptrain fp32 failed:" >&2; cat "$work/fp32-$i" >&2; exit 1; }
  PTRAIN_CPU_GEMM=openblas "$BIN" bench step --threads "$THREADS" --steps "$STEPS" >"$work/blas-$i" 2>&1 ||
    { echo "bench gpt: ptrain fp32 (OpenBLAS) failed:" >&2; cat "$work/blas-$i" >&2; exit 1; }
  if "$BIN" --version | grep -q "bf16: native"; then
    "$BIN" bench step --threads "$THREADS" --steps "$STEPS" --precision bf16 >"$work/bf16-$i" 2>&1 ||
      { echo "bench gpt: ptrain bf16 failed:" >&2; cat "$work/bf16-$i" >&2; exit 1; }
  fi
  $PY scripts/bench/torch_gpt_cpu_step.py --threads "$THREADS" --steps "$STEPS" >"$work/torch-$i" 2>&1 ||
    { echo "bench gpt: PyTorch fp32 failed:" >&2; cat "$work/torch-$i" >&2; exit 1; }
  $PY scripts/bench/torch_gpt_cpu_step.py --threads "$THREADS" --steps "$STEPS" --precision bf16 \
    >"$work/torchbf16-$i" 2>&1 || { echo "bench gpt: PyTorch bf16 failed:" >&2; cat "$work/torchbf16-$i" >&2; exit 1; }
done

$PY - "$work" "$REPEATS" <<'PY'
import glob, re, statistics, sys
work, repeats = sys.argv[1], int(sys.argv[2])
def field(name, key):
    out = []
    for i in range(1, repeats + 1):
        try:
            text = open(f"{work}/{name}-{i}").read()
        except FileNotFoundError:
            continue
        m = re.search(rf"^RESULT .*\b{key}=([0-9.]+)", text, re.M)
        if m:
            out.append(float(m.group(1)))
    return statistics.median(out) if out else None
rows = [("ptrain fp32 (GEMMs auto)", "fp32"), ("ptrain fp32 (all OpenBLAS)", "blas"),
        ("ptrain bf16", "bf16"), ("PyTorch fp32", "torch"), ("PyTorch bf16 autocast", "torchbf16")]
ms = {k: field(k, "ms_per_step") for _, k in rows}
torch = ms["torch"]
print(f"{'median ms/step':32s} {'ms':>9s} {'vs PyTorch fp32':>16s}")
for label, k in rows:
    if ms[k] is None:
        print(f"{label:32s} {'-':>9s}")
        continue
    print(f"{label:32s} {ms[k]:9.2f} {torch / ms[k]:15.2f}x")
for label, k in (("fp32", "fp32"), ("bf16", "bf16")):
    g, peak = field(k, "gflops"), field(k, "gemm_gflops")
    if g is not None:
        print(f"ptrain {label}: model {g:.1f} GFLOP/s / best {label} GEMM rate {peak:.1f} GFLOP/s "
              f"= {field(k, 'mfu'):.3f} (median of runs)")
o, d, b = (field("fp32", x) for x in ("openblas_gflops", "dnnl_gflops", "dnnl_bf16_gflops"))
print(f"GEMM rates (medians): OpenBLAS fp32 {o:.1f}, oneDNN fp32 {d:.1f}, oneDNN bf16 {b:.1f} GFLOP/s")
PY
