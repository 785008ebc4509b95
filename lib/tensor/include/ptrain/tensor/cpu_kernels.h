// Which libraries run the CPU op table's GEMMs (oneDNN's matmul, OpenBLAS's sgemm), what they
// dispatch to on this machine, and whether bf16 GEMMs run natively. ARCHITECTURE.md §CPU kernels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain::tensor {

// kAuto picks per shape from measurements (oneDNN where it is faster, OpenBLAS where it is not);
// the others force one library, for tests and benchmarks that compare them. The default comes
// from PTRAIN_CPU_GEMM=auto|openblas|dnnl (a bad value is a ConfigError from set_cpu_threads).
// bf16 GEMMs run on oneDNN unless kOpenBlas is forced (then they widen to fp32).
enum class CpuGemm { kAuto, kOpenBlas, kDnnl };
void set_cpu_gemm(CpuGemm mode);
CpuGemm cpu_gemm_mode();
const char* cpu_gemm_name(CpuGemm mode);  // "auto", "openblas", "dnnl"

// The CPU kernels in use, for `ptrain --version` and the benchmarks, e.g.
// "oneDNN 2.6.3 (ISA avx512_core_bf16), OpenBLAS 0.3.21 (core Haswell)".
std::string cpu_kernels();

// Whether the CPU table's bf16 GEMMs run natively (oneDNN on AVX512-BF16 or AMX). Without, they
// widen to fp32 (a slow reference) and bf16 training is refused with cpu_bf16_missing().
// DNNL_MAX_CPU_ISA (oneDNN's own setting, e.g. AVX512_CORE) lowers what oneDNN may use.
bool cpu_has_bf16();
std::string cpu_bf16_missing();  // why not, naming the ISA oneDNN found; "" when present

// The GEMMs the CPU table ran while recording was on, one entry per distinct call (for `ptrain
// bench step --gemm-table`, which replays each one on both libraries).
struct CpuGemmShape {
  bool bf16 = false, trans_a = false, trans_b = false;
  int M = 0, N = 0, K = 0, lda = 0, ldb = 0, ldc = 0, count = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  float alpha = 1, beta = 0;
  int64_t calls = 0;  // how often it ran
  double flops() const { return 2.0 * M * N * double(K) * count; }
};
void cpu_gemm_record(bool on);                  // true: clears and starts; false: stops
std::vector<CpuGemmShape> cpu_gemm_recorded();  // by total FLOPs, largest first
// Which library auto picks for an fp32 GEMM of this shape.
const char* cpu_gemm_auto_choice(bool trans_a, bool trans_b, int M, int N, int K);

}  // namespace ptrain::tensor
