// Batch normalization and pooling on oneDNN's primitives, for the CPU CNN layers (nn/cnn.h), and
// which of them run there instead of the layers' own loops (PTRAIN_CPU_BN, PTRAIN_CPU_POOL).
// Tensors are NCHW fp32 at this interface and inside: these passes are bound by memory traffic,
// so each primitive runs on the plain layout (a reorder to a blocked one would cost as much as
// the pass). ARCHITECTURE.md §CPU kernels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain::tensor {

// kAuto runs on oneDNN what measured faster than the loops; the others force one path, for tests
// and benchmarks that compare them. Defaults come from PTRAIN_CPU_BN and PTRAIN_CPU_POOL, each
// auto|naive|dnnl (a bad value is a ConfigError from set_cpu_threads).
enum class CpuPath { kAuto, kNaive, kDnnl };
void set_cpu_bn(CpuPath mode);
CpuPath cpu_bn_mode();
void set_cpu_pool(CpuPath mode);
CpuPath cpu_pool_mode();
const char* cpu_path_name(CpuPath mode);  // "auto", "naive", "dnnl"

// Batch normalization over x [N,C,HW], per channel.
struct CpuBnDims {
  int N = 1, C = 1, HW = 1;
  float eps = 1e-5f;
  bool operator==(const CpuBnDims& o) const;
};

// Whether the CNN layers run batch norm of this shape on oneDNN (else their loops).
bool cpu_bn_uses_dnnl(const CpuBnDims& d);

// The passes on oneDNN, whatever the mode. Primitives are created once per (pass, shape, threads)
// in a process-wide cache; each thread runs them on its own stream and scratch memory. Threads:
// threads_per_proc (cpu_threads()), or 1 inside the table's parallel_for. weight/bias [C].
// Training forward: y [N,C,HW], mean [C] and the biased variance var [C] of the batch (written).
void dnnl_bn_forward_training(float* y, float* mean, float* var, const float* x,
                              const float* weight, const float* bias, const CpuBnDims& d);
// y = (x - mean) / sqrt(var + eps) * weight + bias with the given statistics (written).
void dnnl_bn_forward_inference(float* y, const float* x, const float* mean, const float* var,
                               const float* weight, const float* bias, const CpuBnDims& d);
// dx [N,C,HW], dweight [C] and dbias [C] (all written) from dy. `batch_stats`: mean/var were the
// batch's (training), so they depend on x; otherwise they are constants.
void dnnl_bn_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                      const float* mean, const float* var, const float* weight, bool batch_stats,
                      const CpuBnDims& d);

// Pooling of inp [N,C,H,W] to out [N,C,OH,OW] with a KHxKW window, zero-based padding counts;
// OH = (H + 2 PH - KH) / SH + 1. Max: padding never wins; average: over the window's inputs only
// (padding excluded, what a global average pool needs).
enum class PoolKind { kMax, kAvg };
struct CpuPoolDims {
  PoolKind kind = PoolKind::kMax;
  int N = 1, C = 1, H = 1, W = 1;
  int KH = 1, KW = 1, SH = 1, SW = 1, PH = 0, PW = 0;
  int OH() const { return (H + 2 * PH - KH) / SH + 1; }
  int OW() const { return (W + 2 * PW - KW) / SW + 1; }
  int64_t in_numel() const { return int64_t(N) * C * H * W; }
  int64_t out_numel() const { return int64_t(N) * C * OH() * OW(); }
  bool operator==(const CpuPoolDims& o) const;
};

// Whether the CNN layers run this pass of this pooling on oneDNN. Never where a window could be
// all padding (PH >= KH or PW >= KW), which oneDNN refuses.
bool cpu_pool_uses_dnnl(bool backward, const CpuPoolDims& d);

// Max pool: out and argmax [N,C,OH,OW] (written), argmax the index within the input plane of the
// window's first maximum, as the loops give it (oneDNN's workspace, converted). A NaN wins over
// numbers only where it comes first in its window (the loops: always).
void dnnl_maxpool_forward(float* out, int32_t* argmax, const float* inp, const CpuPoolDims& d);
// dinp (written): dout routed to each window's argmax, through oneDNN's workspace made from it.
void dnnl_maxpool_backward(float* dinp, const float* dout, const int32_t* argmax,
                           const CpuPoolDims& d);
// Average pool: out (written); backward: dinp (written) = dout spread evenly over each window.
void dnnl_avgpool_forward(float* out, const float* inp, const CpuPoolDims& d);
void dnnl_avgpool_backward(float* dinp, const float* dout, const CpuPoolDims& d);

// Batch norm and pooling primitives in the cache (for tests of the cache itself).
size_t dnnl_bn_pool_cached_primitives();

// Time spent in the CNN layers' batch norm and pooling calls while recording is on, per op and
// path, for `ptrain bench step --bn-pool-table`.
enum class BnPoolOp {
  kBnTrainForward,  // statistics and normalization
  kBnNormalize,     // with given statistics (evaluation)
  kBnBackward,
  kMaxPoolForward,
  kMaxPoolBackward,
  kAvgPoolForward,
  kAvgPoolBackward,
};
const char* bn_pool_op_name(BnPoolOp op);  // "batch norm forward (train)", ...
struct BnPoolTime {
  BnPoolOp op = BnPoolOp::kBnTrainForward;
  bool dnnl = false;
  int64_t calls = 0;
  double seconds = 0;
};
void cpu_bn_pool_record(bool on);  // true: clears and starts; false: stops
bool cpu_bn_pool_recording();
void cpu_bn_pool_note(BnPoolOp op, bool dnnl, double seconds);  // by the layers: one call ran
std::vector<BnPoolTime> cpu_bn_pool_recorded();                 // in BnPoolOp order

}  // namespace ptrain::tensor
