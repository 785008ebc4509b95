// Device dispatch for the op table and the CPU thread setting.
#include "ptrain/tensor/ops.h"

#include <cblas.h>

#include <atomic>

#include "cpu_ops_internal.h"
#include "ptrain/core/error.h"
#include "ptrain/tensor/cuda_plugin.h"

#ifdef PTRAIN_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace ptrain::tensor {
namespace {
std::atomic<int> g_cpu_threads{1};
}

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
}

int cpu_threads() {
  return g_cpu_threads.load();
}

}  // namespace ptrain::tensor
