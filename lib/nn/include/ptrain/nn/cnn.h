// Convolutional-network layers on NCHW float32 tensors in host memory (PyTorch's layouts and
// semantics): conv2d without bias, BatchNorm2d (training and evaluation, optionally with its
// statistics summed over a group of ranks, as SyncBatchNorm), max-pool, global average pool and
// softmax cross-entropy with label smoothing. CPU only: convolutions run on oneDNN's convolution
// primitives or as im2col + the op table's GEMM (tensor/cpu_conv.h, PTRAIN_CPU_CONV); batch norm
// and pooling on oneDNN's primitives or as the plain loops here, which stay the reference
// (tensor/cpu_bn_pool.h, PTRAIN_CPU_BN, PTRAIN_CPU_POOL); the rest are plain loops; a caller on
// another device gets a ConfigError.
// As in layers.h, backward functions WRITE dinp (when non-null) and ACCUMULATE weight gradients.
#pragma once

#include <cstdint>

#include "ptrain/nn/model.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::nn {

// out [N,OC,OH,OW] = conv(inp [N,C,H,W], weight [OC,C,KH,KW]); OH = (H + 2p - KH) / s + 1.
struct Conv2dShape {
  int N = 1, C = 1, H = 1, W = 1;
  int OC = 1, KH = 1, KW = 1;
  int stride = 1, pad = 0;
  int OH() const { return (H + 2 * pad - KH) / stride + 1; }
  int OW() const { return (W + 2 * pad - KW) / stride + 1; }
  int64_t in_numel() const { return int64_t(N) * C * H * W; }
  int64_t out_numel() const { return int64_t(N) * OC * OH() * OW(); }
  int64_t weight_numel() const { return int64_t(OC) * C * KH * KW; }
  // Multiply-adds of the forward pass.
  double macs() const { return double(out_numel()) * C * KH * KW; }
};

// Each pass on oneDNN or im2col as tensor::cpu_conv_uses_dnnl says. im2col: one GEMM per group
// of images (a 1x1 stride-1 unpadded convolution skips im2col). Scratch memory is per thread and
// reused across calls.
void conv2d_forward(const tensor::Ops& o, float* out, const float* inp, const float* weight,
                    const Conv2dShape& s);
// dweight (when non-null) += d/dweight; dinp (when non-null) = d/dinp.
void conv2d_backward(const tensor::Ops& o, float* dinp, float* dweight, const float* dout,
                     const float* inp, const float* weight, const Conv2dShape& s);

// BatchNorm2d over x [N,C,HW] (HW = H*W), per channel, eps as PyTorch (1e-5 by default).
struct BatchNormShape {
  int N = 1, C = 1, HW = 1;
  float eps = 1e-5f;
  float momentum = 0.1f;
  int64_t numel() const { return int64_t(N) * C * HW; }
};

// Training mode: mean [C] and the biased variance var [C] of the batch, over this rank's
// N*HW values or, with `group` non-null, over the group's (every rank calls it with the same C).
// Without `shift`: two passes (the sum, then squares about the mean; two allreduces with a
// group). With `shift` [C] (the same on every rank: the running mean), one pass over sums of
// x - shift and their squares, var = E[(x-K)^2] - E[x-K]^2: one allreduce of 2C+1 floats, and
// the shift keeps the cancellation small. Returns the count the statistics cover.
int64_t batchnorm_batch_stats(float* mean, float* var, const float* x, const BatchNormShape& s,
                              GroupComm* group, const float* shift = nullptr);
// y = (x - mean) * rstd * weight + bias with rstd = 1/sqrt(var + eps); rstd [C] is written
// (the loops' rounding on both paths: float(1 / sqrt(double(var) + eps))). On oneDNN y is
// (x - mean) * rstd' * weight + bias with its own float rstd', equal to round-off.
void batchnorm_normalize(float* y, float* rstd, const float* x, const float* mean, const float* var,
                         const float* weight, const float* bias, const BatchNormShape& s);
// Training mode in one call: batchnorm_batch_stats, then batchnorm_normalize. Without a group,
// where tensor::cpu_bn_uses_dnnl says so, on oneDNN's batch normalization, which computes the
// statistics and y in two passes over x (mean and var then equal the loops' to float round-off:
// oneDNN sums in float); with a group the statistics are the loops'. Returns the count.
int64_t batchnorm_forward_training(float* y, float* mean, float* var, float* rstd, const float* x,
                                   const float* weight, const float* bias, const BatchNormShape& s,
                                   GroupComm* group, const float* shift = nullptr);
// PyTorch's running-statistics update: r_mean = (1-m) r_mean + m mean, r_var = (1-m) r_var +
// m var * count/(count-1) (the unbiased variance), num_batches_tracked += 1 (when non-null).
void batchnorm_update_running(float* running_mean, float* running_var, float* num_batches,
                              const float* mean, const float* var, int64_t count,
                              const BatchNormShape& s);
// d/dx of y = batchnorm(x) with `mean`/`rstd` the statistics forward used. `batch_stats`: they
// were the batch's (training mode; with `group` the sums over the group of the `count` values),
// so the mean and variance depend on x; otherwise (evaluation) they are constants.
// dweight/dbias accumulate this rank's sums (the data-parallel reducer adds the ranks').
// On oneDNN where tensor::cpu_bn_uses_dnnl says so, except with a group and batch statistics
// (the sums must be allreduced between its two passes) or without dx: the loops.
void batchnorm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                        const float* mean, const float* rstd, const float* weight,
                        const BatchNormShape& s, bool batch_stats, int64_t count, GroupComm* group);

// Max-pool with -inf padding (PyTorch MaxPool2d): out [N,C,OH,OW], argmax [N,C,OH,OW] the index
// within the input plane of the first maximum, the same on both paths, so forward and backward
// may run on different ones. On oneDNN (tensor::cpu_pool_uses_dnnl) a NaN wins only where it is
// the first of its window.
struct PoolShape {
  int N = 1, C = 1, H = 1, W = 1;
  int K = 3, stride = 2, pad = 1;
  int OH() const { return (H + 2 * pad - K) / stride + 1; }
  int OW() const { return (W + 2 * pad - K) / stride + 1; }
  int64_t out_numel() const { return int64_t(N) * C * OH() * OW(); }
};
void maxpool2d_forward(float* out, int32_t* argmax, const float* inp, const PoolShape& s);
// dinp = the gradient routed back to each window's maximum (written).
void maxpool2d_backward(float* dinp, const float* dout, const int32_t* argmax, const PoolShape& s);

// out [N,C] = mean of inp [N,C,HW] over HW; backward writes dinp. On oneDNN: average pooling
// with an HWx1 window (float sums; the loops sum in double).
void global_avgpool_forward(float* out, const float* inp, int N, int C, int HW);
void global_avgpool_backward(float* dinp, const float* dout, int N, int C, int HW);

// Softmax cross-entropy over logits [N,V] with PyTorch's label smoothing e: the target
// distribution is (1-e) onehot + e/V; losses[n] = lse - (1-e) z[t] - e/V sum_j z[j].
// Rows with target < 0 are ignored (loss 0, gradient 0). lse [N] is written for backward.
void crossentropy_smoothed_forward(float* losses, float* lse, const float* logits,
                                   const int32_t* targets, int N, int V, float smoothing);
// dlogits = (softmax - target distribution) * dloss (written).
void crossentropy_smoothed_backward(float* dlogits, const float* logits, const float* lse,
                                    const int32_t* targets, int N, int V, float smoothing,
                                    float dloss);

}  // namespace ptrain::nn
