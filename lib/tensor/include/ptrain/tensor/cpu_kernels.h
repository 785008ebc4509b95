// Which libraries run the CPU op table's GEMMs (oneDNN's matmul, OpenBLAS's sgemm), what they
// dispatch to on this machine, and whether bf16 GEMMs run natively. ARCHITECTURE.md §CPU kernels.
#pragma once

#include <string>

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

}  // namespace ptrain::tensor
