// What the oneDNN users of the CPU table share (cpu_gemm.cc's matmuls, cpu_conv.cc's
// convolutions, cpu_bn_pool.cc's batch norms and poolings): one CPU engine for the process, the
// OpenMP team size oneDNN runs with, and the host buffers operands and scratchpads live in.
#pragma once

#include <cstddef>

#include "oneapi/dnnl/dnnl.hpp"

namespace ptrain::tensor::cpu {

dnnl::engine& dnnl_engine();

// oneDNN runs on OpenMP here: the calling thread's team size is what a primitive is created for
// and executed with.
void set_omp_threads(int threads);

// A 64-byte aligned host buffer that only grows (an IoError when memory runs out).
class DnnlBuffer {
 public:
  DnnlBuffer() = default;
  DnnlBuffer(const DnnlBuffer&) = delete;
  DnnlBuffer& operator=(const DnnlBuffer&) = delete;
  ~DnnlBuffer();
  void* get(size_t bytes);

 private:
  void* p_ = nullptr;
  size_t size_ = 0;
};

}  // namespace ptrain::tensor::cpu
