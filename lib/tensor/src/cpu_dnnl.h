// What the oneDNN users of the CPU table share (cpu_gemm.cc's matmuls, cpu_conv.cc's
// convolutions): one CPU engine for the process, and the OpenMP team size oneDNN runs with.
#pragma once

#include "oneapi/dnnl/dnnl.hpp"

namespace ptrain::tensor::cpu {

dnnl::engine& dnnl_engine();

// oneDNN runs on OpenMP here: the calling thread's team size is what a primitive is created for
// and executed with.
void set_omp_threads(int threads);

}  // namespace ptrain::tensor::cpu
