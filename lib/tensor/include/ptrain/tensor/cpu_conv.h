// 2-D convolutions on oneDNN's convolution primitives, for the CPU CNN layers (nn/cnn.h), and
// which of them run there instead of im2col + GEMM (PTRAIN_CPU_CONV). Tensors are ptrain's plain
// layouts at this interface: NCHW fp32 activations, OIHW weights; inside, each primitive runs on
// the blocked layouts oneDNN prefers, with reorders to and from them. ARCHITECTURE.md §CPU kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ptrain::tensor {

// kAuto runs on oneDNN the passes where it measured faster than im2col + GEMM; the others force
// one path, for tests and benchmarks that compare them. The default comes from
// PTRAIN_CPU_CONV=auto|im2col|dnnl (a bad value is a ConfigError from set_cpu_threads).
enum class CpuConv { kAuto, kIm2col, kDnnl };
void set_cpu_conv(CpuConv mode);
CpuConv cpu_conv_mode();
const char* cpu_conv_name(CpuConv mode);  // "auto", "im2col", "dnnl"

// out [N,OC,OH,OW] = conv(inp [N,C,H,W], weight [OC,C,KH,KW]), no bias, zero padding `pad` on
// every side; OH = (H + 2 pad - KH) / stride + 1 (rows the last window does not reach are unused).
struct CpuConvDims {
  int N = 1, C = 1, H = 1, W = 1;
  int OC = 1, KH = 1, KW = 1;
  int stride = 1, pad = 0;
  int OH() const { return (H + 2 * pad - KH) / stride + 1; }
  int OW() const { return (W + 2 * pad - KW) / stride + 1; }
  bool operator==(const CpuConvDims& o) const;
};

enum class ConvPass { kForward, kBackwardData, kBackwardWeights };
const char* conv_pass_name(ConvPass pass);  // "forward", "backward data", "backward weights"

// Whether the CNN layers run this pass of this convolution on oneDNN (else im2col + GEMM).
bool cpu_conv_uses_dnnl(ConvPass pass, const CpuConvDims& d);

// The passes on oneDNN, whatever the mode. Primitives are created once per (pass, shape,
// threads) in a process-wide cache; each thread runs them on its own stream and scratch memory.
// Threads: threads_per_proc (cpu_threads()), or 1 inside the table's parallel_for.
// out (written) from inp and weight.
void dnnl_conv2d_forward(float* out, const float* inp, const float* weight, const CpuConvDims& d);
// dinp [N,C,H,W] (written) from dout [N,OC,OH,OW] and weight.
void dnnl_conv2d_backward_data(float* dinp, const float* dout, const float* weight,
                               const CpuConvDims& d);
// dweight [OC,C,KH,KW] += the weight gradient from dout and inp.
void dnnl_conv2d_backward_weights(float* dweight, const float* dout, const float* inp,
                                  const CpuConvDims& d);

// oneDNN's name for the kernel a pass runs on ("jit:avx512_core", "x64:gemm:jit"), for benches.
std::string dnnl_conv_impl(ConvPass pass, const CpuConvDims& d);
// Convolution primitives in the cache (for tests of the cache itself).
size_t dnnl_conv_cached_primitives();

// The convolutions the CNN layers ran while recording was on, one entry per (shape, pass), for
// `ptrain bench step --conv-table`, which replays each on both paths.
struct CpuConvCall {
  CpuConvDims dims;
  ConvPass pass = ConvPass::kForward;
  int64_t calls = 0;
  double flops() const {  // the same for each pass: 2 * N*OC*OH*OW * C*KH*KW
    return 2.0 * double(dims.N) * dims.OC * dims.OH() * dims.OW() * dims.C * dims.KH * dims.KW;
  }
};
void cpu_conv_record(bool on);                            // true: clears and starts; false: stops
void cpu_conv_note(ConvPass pass, const CpuConvDims& d);  // by the layers: one call ran
std::vector<CpuConvCall> cpu_conv_recorded();             // by total FLOPs, largest first

}  // namespace ptrain::tensor
