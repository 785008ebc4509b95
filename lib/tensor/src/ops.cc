// Device dispatch for the op table and the CPU thread setting.
#include "ptrain/tensor/ops.h"

#include <cblas.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "cpu_gemm.h"
#include "cpu_ops_internal.h"
#include "ptrain/core/error.h"
#include "ptrain/tensor/cpu_bn_pool.h"
#include "ptrain/tensor/cpu_conv.h"
#include "ptrain/tensor/cpu_kernels.h"
#include "ptrain/tensor/cuda_plugin.h"

#ifdef PTRAIN_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace ptrain::tensor {
namespace {
std::atomic<int> g_cpu_threads{1};

CpuGemm gemm_mode_from_env() {
  const char* v = std::getenv("PTRAIN_CPU_GEMM");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return CpuGemm::kAuto;
  if (std::strcmp(v, "openblas") == 0) return CpuGemm::kOpenBlas;
  if (std::strcmp(v, "dnnl") == 0) return CpuGemm::kDnnl;
  throw ConfigError(fmt::format("PTRAIN_CPU_GEMM={} is not auto, openblas or dnnl", v),
                    "unset PTRAIN_CPU_GEMM, or set it to auto, openblas or dnnl");
}

CpuConv conv_mode_from_env() {
  const char* v = std::getenv("PTRAIN_CPU_CONV");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return CpuConv::kAuto;
  if (std::strcmp(v, "im2col") == 0) return CpuConv::kIm2col;
  if (std::strcmp(v, "dnnl") == 0) return CpuConv::kDnnl;
  throw ConfigError(fmt::format("PTRAIN_CPU_CONV={} is not auto, im2col or dnnl", v),
                    "unset PTRAIN_CPU_CONV, or set it to auto, im2col or dnnl");
}

// -1 until the environment has been read.
std::atomic<int> g_cpu_gemm{-1};
std::atomic<int> g_cpu_conv{-1};
}  // namespace

const Ops& cpu_ops() {
  return cpu::table();
}

const Ops* cuda_ops() {
#ifdef PTRAIN_WITH_CUDA
  return cuda::get_ops();
#else
  return nullptr;
#endif
}

const Ops& ops(Device device) {
  if (device == Device::kCpu) return cpu_ops();
  const Ops* table = cuda_ops();
  if (!table) {
    throw ConfigError("device cuda is not available: " + cuda_unavailable_reason(),
                      "set nodes.device to cpu (or auto)");
  }
  return *table;
}

void set_cpu_threads(int threads) {
  if (threads < 1) {
    throw ConfigError(fmt::format("threads per process must be at least 1, got {}", threads),
                      "set nodes.threads_per_proc to a positive number");
  }
  g_cpu_threads.store(threads);
  openblas_set_num_threads(threads);
  cpu_gemm_mode();  // a bad PTRAIN_CPU_GEMM fails here, at setup, not inside a kernel
  cpu_conv_mode();  // and so does a bad PTRAIN_CPU_CONV
  cpu_bn_mode();    // PTRAIN_CPU_BN
  cpu_pool_mode();  // PTRAIN_CPU_POOL
}

int cpu_threads() {
  return g_cpu_threads.load();
}

void set_cpu_gemm(CpuGemm mode) {
  g_cpu_gemm.store(int(mode));
}

CpuGemm cpu_gemm_mode() {
  int m = g_cpu_gemm.load();
  if (m < 0) {
    m = int(gemm_mode_from_env());
    int unset = -1;
    if (!g_cpu_gemm.compare_exchange_strong(unset, m)) m = unset;
  }
  return CpuGemm(m);
}

const char* cpu_gemm_name(CpuGemm mode) {
  switch (mode) {
    case CpuGemm::kOpenBlas:
      return "openblas";
    case CpuGemm::kDnnl:
      return "dnnl";
    default:
      return "auto";
  }
}

void set_cpu_conv(CpuConv mode) {
  g_cpu_conv.store(int(mode));
}

CpuConv cpu_conv_mode() {
  int m = g_cpu_conv.load();
  if (m < 0) {
    m = int(conv_mode_from_env());
    int unset = -1;
    if (!g_cpu_conv.compare_exchange_strong(unset, m)) m = unset;
  }
  return CpuConv(m);
}

const char* cpu_conv_name(CpuConv mode) {
  switch (mode) {
    case CpuConv::kIm2col:
      return "im2col";
    case CpuConv::kDnnl:
      return "dnnl";
    default:
      return "auto";
  }
}

std::string cpu_kernels() {
  std::string blas = openblas_get_config();
  // "OpenBLAS 0.3.21 DYNAMIC_ARCH ..." -> "OpenBLAS 0.3.21"
  size_t sp = blas.find(' ');
  if (sp != std::string::npos) sp = blas.find(' ', sp + 1);
  if (sp != std::string::npos) blas.resize(sp);
  return fmt::format("oneDNN {} (ISA {}), {} (core {})", cpu::dnnl_version_string(),
                     cpu::dnnl_isa_name(), blas, cpu::openblas_core_name());
}

bool cpu_has_bf16() {
  return cpu::dnnl_has_bf16();
}

std::string cpu_bf16_missing() {
  if (cpu_has_bf16()) return "";
  return fmt::format(
      "this CPU has no bf16 dot-product instructions (AVX512-BF16 or AMX): oneDNN dispatches to "
      "{}",
      cpu::dnnl_isa_name());
}

}  // namespace ptrain::tensor
