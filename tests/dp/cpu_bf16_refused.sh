#!/bin/sh
# A CPU without bf16 instructions refuses train.precision: bf16 with one clear line and exit 2,
# on any machine: DNNL_MAX_CPU_ISA=AVX512_CORE holds oneDNN below its bf16 kernels. fp32 still
# trains under the same limit; --version names the kernels; a bad PTRAIN_CPU_GEMM or
# PTRAIN_CPU_CONV is refused.
# Usage: cpu_bf16_refused.sh PTRAIN_BINARY
bin=$1
out=$(DNNL_MAX_CPU_ISA=AVX512_CORE "$bin" bench step --precision bf16 --steps 1 --warmup 0 2>&1)
rc=$?
[ "$rc" -eq 2 ] || { echo "bf16 without bf16 instructions: exit $rc, want 2:"; echo "$out"; exit 1; }
echo "$out" | grep -q "train.precision bf16 on the CPU: this CPU has no bf16 dot-product" ||
  { echo "the refusal does not say why:"; echo "$out"; exit 1; }
out=$(DNNL_MAX_CPU_ISA=AVX512_CORE "$bin" bench step --steps 1 --warmup 0 2>&1) ||
  { echo "fp32 under DNNL_MAX_CPU_ISA=AVX512_CORE failed:"; echo "$out"; exit 1; }
echo "$out" | grep -q "^RESULT device=cpu" || { echo "no RESULT line:"; echo "$out"; exit 1; }
# The kernels in use are named, and a bad PTRAIN_CPU_GEMM is one line and exit 2.
"$bin" --version | grep -q "^cpu kernels: oneDNN [0-9.]* (ISA [a-z0-9_]*), OpenBLAS" ||
  { echo "--version does not name the CPU kernels:"; "$bin" --version; exit 1; }
out=$(PTRAIN_CPU_GEMM=mkl "$bin" bench step --steps 1 --warmup 0 2>&1)
rc=$?
[ "$rc" -eq 2 ] || { echo "PTRAIN_CPU_GEMM=mkl: exit $rc, want 2:"; echo "$out"; exit 1; }
echo "$out" | grep -q "PTRAIN_CPU_GEMM=mkl is not auto, openblas or dnnl" ||
  { echo "the PTRAIN_CPU_GEMM error does not say why:"; echo "$out"; exit 1; }
out=$(PTRAIN_CPU_CONV=mkldnn "$bin" bench step --steps 1 --warmup 0 2>&1)
rc=$?
[ "$rc" -eq 2 ] || { echo "PTRAIN_CPU_CONV=mkldnn: exit $rc, want 2:"; echo "$out"; exit 1; }
echo "$out" | grep -q "PTRAIN_CPU_CONV=mkldnn is not auto, im2col or dnnl" ||
  { echo "the PTRAIN_CPU_CONV error does not say why:"; echo "$out"; exit 1; }
