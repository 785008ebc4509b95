// CNN layers (cnn.h): convolution on oneDNN's primitives or as im2col over the op table's GEMM
// (tensor/cpu_conv.h chooses per pass), BatchNorm2d and pooling on oneDNN's primitives or as the
// host loops here (tensor/cpu_bn_pool.h chooses), label-smoothed cross-entropy as host loops.
#include "ptrain/nn/cnn.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/tensor/cpu_bn_pool.h"
#include "ptrain/tensor/cpu_conv.h"

namespace ptrain::nn {
namespace {

void require_cpu(const tensor::Ops& o, const char* what) {
  if (o.device != tensor::Device::kCpu)
    throw ConfigError(fmt::format("{} has no {} implementation yet", what, o.name),
                      "set nodes.device: cpu");
}

void check_conv(const Conv2dShape& s) {
  PTRAIN_CHECK(s.N > 0 && s.C > 0 && s.H > 0 && s.W > 0 && s.OC > 0 && s.KH > 0 && s.KW > 0 &&
                   s.stride > 0 && s.pad >= 0,
               "conv2d shape N={} C={} H={} W={} OC={} K={}x{} stride {} pad {}", s.N, s.C, s.H,
               s.W, s.OC, s.KH, s.KW, s.stride, s.pad);
  PTRAIN_CHECK(s.OH() > 0 && s.OW() > 0, "conv2d: a {}x{} input is smaller than the {}x{} kernel",
               s.H, s.W, s.KH, s.KW);
}

tensor::CpuConvDims dims_of(const Conv2dShape& s) {
  tensor::CpuConvDims d;
  d.N = s.N, d.C = s.C, d.H = s.H, d.W = s.W, d.OC = s.OC, d.KH = s.KH, d.KW = s.KW;
  d.stride = s.stride, d.pad = s.pad;
  return d;
}

// Elements of im2col scratch a group of images may take (16 MiB); at least one image.
constexpr int64_t kColBudget = int64_t{4} << 20;

struct Scratch {
  std::vector<float> col;  // [C*KH*KW, g*OH*OW]: im2col, then the column gradient
  std::vector<float> mat;  // [OC, g*OH*OW]: the output (forward) or dout (backward) of a group
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}
float* grow(std::vector<float>& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
  return v.data();
}

bool is_pointwise(const Conv2dShape& s) {
  return s.KH == 1 && s.KW == 1 && s.stride == 1 && s.pad == 0;
}

int group_of(const Conv2dShape& s) {
  if (is_pointwise(s)) return 1;
  const int64_t per_image = int64_t(s.C) * s.KH * s.KW * s.OH() * s.OW();
  return int(std::clamp<int64_t>(kColBudget / std::max<int64_t>(per_image, 1), 1, s.N));
}

// The output columns ow whose input column ow*stride - pad + k lies in [0, W): [lo, hi).
void valid_range(int W, int OW, int stride, int pad, int k, int* lo, int* hi) {
  const int first = pad - k;  // ow*stride >= first
  int l = first <= 0 ? 0 : (first + stride - 1) / stride;
  const int last = W - 1 + pad - k;  // ow*stride <= last
  int h = last < 0 ? 0 : last / stride + 1;
  h = std::min(h, OW);
  l = std::min(l, h);
  *lo = l;
  *hi = h;
}

// col [C*KH*KW, g*OHW] from images inp [g, C, H, W].
void im2col(float* col, const float* inp, int g, const Conv2dShape& s) {
  const int OH = s.OH(), OW = s.OW();
  const int64_t OHW = int64_t(OH) * OW, HW = int64_t(s.H) * s.W, ld = g * OHW;
  for (int c = 0; c < s.C; ++c)
    for (int kh = 0; kh < s.KH; ++kh)
      for (int kw = 0; kw < s.KW; ++kw) {
        float* row = col + ((int64_t(c) * s.KH + kh) * s.KW + kw) * ld;
        int lo, hi;
        valid_range(s.W, OW, s.stride, s.pad, kw, &lo, &hi);
        for (int gi = 0; gi < g; ++gi) {
          const float* src = inp + (int64_t(gi) * s.C + c) * HW;
          float* dst = row + gi * OHW;
          for (int oh = 0; oh < OH; ++oh) {
            float* d = dst + int64_t(oh) * OW;
            const int ih = oh * s.stride - s.pad + kh;
            if (ih < 0 || ih >= s.H) {
              std::fill(d, d + OW, 0.0f);
              continue;
            }
            const float* srow = src + int64_t(ih) * s.W - s.pad + kw;
            std::fill(d, d + lo, 0.0f);
            if (s.stride == 1) {
              std::memcpy(d + lo, srow + lo, sizeof(float) * size_t(hi - lo));
            } else {
              for (int ow = lo; ow < hi; ++ow) d[ow] = srow[int64_t(ow) * s.stride];
            }
            std::fill(d + hi, d + OW, 0.0f);
          }
        }
      }
}

// The adjoint of im2col: dinp [g, C, H, W] += col.
void col2im(float* dinp, const float* col, int g, const Conv2dShape& s) {
  const int OH = s.OH(), OW = s.OW();
  const int64_t OHW = int64_t(OH) * OW, HW = int64_t(s.H) * s.W, ld = g * OHW;
  for (int c = 0; c < s.C; ++c)
    for (int kh = 0; kh < s.KH; ++kh)
      for (int kw = 0; kw < s.KW; ++kw) {
        const float* row = col + ((int64_t(c) * s.KH + kh) * s.KW + kw) * ld;
        int lo, hi;
        valid_range(s.W, OW, s.stride, s.pad, kw, &lo, &hi);
        for (int gi = 0; gi < g; ++gi) {
          float* dst = dinp + (int64_t(gi) * s.C + c) * HW;
          const float* src = row + gi * OHW;
          for (int oh = 0; oh < OH; ++oh) {
            const int ih = oh * s.stride - s.pad + kh;
            if (ih < 0 || ih >= s.H) continue;
            const float* d = src + int64_t(oh) * OW;
            float* drow = dst + int64_t(ih) * s.W - s.pad + kw;
            if (s.stride == 1) {
              for (int ow = lo; ow < hi; ++ow) drow[ow] += d[ow];
            } else {
              for (int ow = lo; ow < hi; ++ow) drow[int64_t(ow) * s.stride] += d[ow];
            }
          }
        }
      }
}

// The im2col path: one GEMM per group of images.
void conv2d_forward_im2col(const tensor::Ops& o, float* out, const float* inp, const float* weight,
                           const Conv2dShape& s) {
  const int64_t OHW = int64_t(s.OH()) * s.OW(), CHW = int64_t(s.C) * s.H * s.W;
  const int K = s.C * s.KH * s.KW;
  const int g = group_of(s);
  Scratch& sc = scratch();
  for (int n0 = 0; n0 < s.N; n0 += g) {
    const int gn = std::min(g, s.N - n0);
    const float* x = inp + n0 * CHW;
    float* y = out + n0 * s.OC * OHW;
    if (is_pointwise(s)) {
      o.gemm(false, false, s.OC, int(OHW), K, 1.0f, weight, K, x, int(OHW), 0.0f, y, int(OHW));
      continue;
    }
    float* col = grow(sc.col, int64_t(K) * gn * OHW);
    im2col(col, x, gn, s);
    const int cols = int(gn * OHW);
    if (gn == 1) {
      o.gemm(false, false, s.OC, cols, K, 1.0f, weight, K, col, cols, 0.0f, y, cols);
      continue;
    }
    float* mat = grow(sc.mat, int64_t(s.OC) * cols);
    o.gemm(false, false, s.OC, cols, K, 1.0f, weight, K, col, cols, 0.0f, mat, cols);
    for (int gi = 0; gi < gn; ++gi)
      for (int oc = 0; oc < s.OC; ++oc)
        std::memcpy(y + (int64_t(gi) * s.OC + oc) * OHW, mat + int64_t(oc) * cols + gi * OHW,
                    sizeof(float) * size_t(OHW));
  }
}

// dweight (when non-null) += d/dweight; dinp (when non-null) = d/dinp.
void conv2d_backward_im2col(const tensor::Ops& o, float* dinp, float* dweight, const float* dout,
                            const float* inp, const float* weight, const Conv2dShape& s) {
  if (!dinp && !dweight) return;
  const int64_t OHW = int64_t(s.OH()) * s.OW(), CHW = int64_t(s.C) * s.H * s.W;
  const int K = s.C * s.KH * s.KW;
  const int g = group_of(s);
  Scratch& sc = scratch();
  for (int n0 = 0; n0 < s.N; n0 += g) {
    const int gn = std::min(g, s.N - n0);
    const float* x = inp + n0 * CHW;
    const float* dy = dout + n0 * s.OC * OHW;
    float* dx = dinp ? dinp + n0 * CHW : nullptr;
    const int cols = int(gn * OHW);
    if (is_pointwise(s)) {
      // dW [OC,C] += dy [OC,HW] x^T; dx [C,HW] = W^T dy.
      if (dweight) o.gemm(false, true, s.OC, K, cols, 1.0f, dy, cols, x, cols, 1.0f, dweight, K);
      if (dx) o.gemm(true, false, K, cols, s.OC, 1.0f, weight, K, dy, cols, 0.0f, dx, cols);
      continue;
    }
    if (gn > 1) {
      float* mat = grow(sc.mat, int64_t(s.OC) * cols);
      for (int gi = 0; gi < gn; ++gi)
        for (int oc = 0; oc < s.OC; ++oc)
          std::memcpy(mat + int64_t(oc) * cols + gi * OHW, dy + (int64_t(gi) * s.OC + oc) * OHW,
                      sizeof(float) * size_t(OHW));
      dy = mat;
    }
    float* col = grow(sc.col, int64_t(K) * cols);
    if (dweight) {
      im2col(col, x, gn, s);
      o.gemm(false, true, s.OC, K, cols, 1.0f, dy, cols, col, cols, 1.0f, dweight, K);
    }
    if (!dx) continue;
    o.gemm(true, false, K, cols, s.OC, 1.0f, weight, K, dy, cols, 0.0f, col, cols);
    std::fill(dx, dx + gn * CHW, 0.0f);
    col2im(dx, col, gn, s);
  }
}

}  // namespace

void conv2d_forward(const tensor::Ops& o, float* out, const float* inp, const float* weight,
                    const Conv2dShape& s) {
  require_cpu(o, "conv2d");
  check_conv(s);
  const tensor::CpuConvDims d = dims_of(s);
  tensor::cpu_conv_note(tensor::ConvPass::kForward, d);
  if (tensor::cpu_conv_uses_dnnl(tensor::ConvPass::kForward, d)) {
    tensor::dnnl_conv2d_forward(out, inp, weight, d);
    return;
  }
  conv2d_forward_im2col(o, out, inp, weight, s);
}

void conv2d_backward(const tensor::Ops& o, float* dinp, float* dweight, const float* dout,
                     const float* inp, const float* weight, const Conv2dShape& s) {
  require_cpu(o, "conv2d");
  check_conv(s);
  const tensor::CpuConvDims d = dims_of(s);
  if (dweight) tensor::cpu_conv_note(tensor::ConvPass::kBackwardWeights, d);
  if (dinp) tensor::cpu_conv_note(tensor::ConvPass::kBackwardData, d);
  // Each pass goes its own way; what oneDNN does not take is left to im2col.
  if (dweight && tensor::cpu_conv_uses_dnnl(tensor::ConvPass::kBackwardWeights, d)) {
    tensor::dnnl_conv2d_backward_weights(dweight, dout, inp, d);
    dweight = nullptr;
  }
  if (dinp && tensor::cpu_conv_uses_dnnl(tensor::ConvPass::kBackwardData, d)) {
    tensor::dnnl_conv2d_backward_data(dinp, dout, weight, d);
    dinp = nullptr;
  }
  conv2d_backward_im2col(o, dinp, dweight, dout, inp, weight, s);
}

int64_t batchnorm_batch_stats(float* mean, float* var, const float* x, const BatchNormShape& s,
                              GroupComm* group, const float* shift) {
  const int C = s.C;
  const int64_t HW = s.HW;
  if (shift) {
    std::vector<float> buf(2 * size_t(C) + 1);  // sum (x-K) | sum (x-K)^2 | count
    for (int c = 0; c < C; ++c) {
      double s1 = 0, s2 = 0;
      const double k = shift[c];
      for (int n = 0; n < s.N; ++n) {
        const float* p = x + (int64_t(n) * C + c) * HW;
        for (int64_t i = 0; i < HW; ++i) {
          const double d = p[i] - k;
          s1 += d;
          s2 += d * d;
        }
      }
      buf[size_t(c)] = float(s1);
      buf[size_t(C + c)] = float(s2);
    }
    buf[2 * size_t(C)] = float(int64_t(s.N) * HW);
    if (group) group->allreduce_sum(buf.data(), buf.size());
    const int64_t count = int64_t(buf[2 * size_t(C)]);
    PTRAIN_CHECK(count > 0, "batch norm over no values");
    for (int c = 0; c < C; ++c) {
      const double m1 = double(buf[size_t(c)]) / double(count);
      const double m2 = double(buf[size_t(C + c)]) / double(count);
      mean[c] = float(shift[c] + m1);
      var[c] = float(std::max(0.0, m2 - m1 * m1));
    }
    return count;
  }
  // Sums, then the count in the last slot, summed over the group when there is one.
  std::vector<float> buf(size_t(C) + 1);
  for (int c = 0; c < C; ++c) {
    double sum = 0;
    for (int n = 0; n < s.N; ++n) {
      const float* p = x + (int64_t(n) * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i) sum += p[i];
    }
    buf[size_t(c)] = float(sum);
  }
  buf[size_t(C)] = float(int64_t(s.N) * HW);
  if (group) group->allreduce_sum(buf.data(), buf.size());
  const int64_t count = int64_t(buf[size_t(C)]);
  PTRAIN_CHECK(count > 0, "batch norm over no values");
  for (int c = 0; c < C; ++c) mean[c] = float(double(buf[size_t(c)]) / double(count));
  // Second pass about the mean: no cancellation.
  for (int c = 0; c < C; ++c) {
    double sq = 0;
    const double m = mean[c];
    for (int n = 0; n < s.N; ++n) {
      const float* p = x + (int64_t(n) * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i) {
        const double d = p[i] - m;
        sq += d * d;
      }
    }
    buf[size_t(c)] = float(sq);
  }
  if (group) group->allreduce_sum(buf.data(), size_t(C));
  for (int c = 0; c < C; ++c) var[c] = float(double(buf[size_t(c)]) / double(count));
  return count;
}

namespace {

void normalize_naive(float* y, const float* x, const float* mean, const float* rstd,
                     const float* weight, const float* bias, const BatchNormShape& s) {
  const int C = s.C;
  const int64_t HW = s.HW;
  for (int n = 0; n < s.N; ++n)
    for (int c = 0; c < C; ++c) {
      const float a = rstd[c] * weight[c];
      const float b = bias[c] - mean[c] * a;
      const float* p = x + (int64_t(n) * C + c) * HW;
      float* q = y + (int64_t(n) * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i) q[i] = p[i] * a + b;
    }
}

}  // namespace

void batchnorm_update_running(float* running_mean, float* running_var, float* num_batches,
                              const float* mean, const float* var, int64_t count,
                              const BatchNormShape& s) {
  const float m = s.momentum;
  const double unbias = count > 1 ? double(count) / double(count - 1) : 1.0;
  for (int c = 0; c < s.C; ++c) {
    running_mean[c] = (1 - m) * running_mean[c] + m * mean[c];
    running_var[c] = (1 - m) * running_var[c] + m * float(double(var[c]) * unbias);
  }
  if (num_batches) *num_batches += 1.0f;
}

namespace {

void backward_naive(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                    const float* mean, const float* rstd, const float* weight,
                    const BatchNormShape& s, bool batch_stats, int64_t count, GroupComm* group) {
  const int C = s.C;
  const int64_t HW = s.HW;
  std::vector<float> sums(2 * size_t(C));  // sum dy | sum dy * xhat
  for (int c = 0; c < C; ++c) {
    double sd = 0, sdx = 0;
    const double m = mean[c], r = rstd[c];
    for (int n = 0; n < s.N; ++n) {
      const float* g = dy + (int64_t(n) * C + c) * HW;
      const float* p = x + (int64_t(n) * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i) {
        sd += g[i];
        sdx += g[i] * ((p[i] - m) * r);
      }
    }
    sums[size_t(c)] = float(sd);
    sums[size_t(C + c)] = float(sdx);
    dbias[c] += float(sd);
    dweight[c] += float(sdx);
  }
  if (!dx) return;
  if (!batch_stats) {
    for (int n = 0; n < s.N; ++n)
      for (int c = 0; c < C; ++c) {
        const float a = weight[c] * rstd[c];
        const float* g = dy + (int64_t(n) * C + c) * HW;
        float* q = dx + (int64_t(n) * C + c) * HW;
        for (int64_t i = 0; i < HW; ++i) q[i] = g[i] * a;
      }
    return;
  }
  if (group) group->allreduce_sum(sums.data(), sums.size());
  PTRAIN_CHECK(count > 0, "batch norm backward over no values");
  const float inv = float(1.0 / double(count));
  for (int n = 0; n < s.N; ++n)
    for (int c = 0; c < C; ++c) {
      const float a = weight[c] * rstd[c];
      const float mdy = sums[size_t(c)] * inv, mdx = sums[size_t(C + c)] * inv;
      const float m = mean[c], r = rstd[c];
      const float* g = dy + (int64_t(n) * C + c) * HW;
      const float* p = x + (int64_t(n) * C + c) * HW;
      float* q = dx + (int64_t(n) * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i) q[i] = a * (g[i] - mdy - (p[i] - m) * r * mdx);
    }
}

void maxpool_forward_naive(float* out, int32_t* argmax, const float* inp, const PoolShape& s) {
  const int OH = s.OH(), OW = s.OW();
  PTRAIN_CHECK(OH > 0 && OW > 0, "max-pool: a {}x{} input is smaller than the {}x{} window", s.H,
               s.W, s.K, s.K);
  const int64_t HW = int64_t(s.H) * s.W, OHW = int64_t(OH) * OW;
  for (int64_t plane = 0; plane < int64_t(s.N) * s.C; ++plane) {
    const float* x = inp + plane * HW;
    float* y = out + plane * OHW;
    int32_t* idx = argmax + plane * OHW;
    for (int oh = 0; oh < OH; ++oh)
      for (int ow = 0; ow < OW; ++ow) {
        float best = -std::numeric_limits<float>::infinity();
        int32_t at = -1;
        const int h0 = oh * s.stride - s.pad, w0 = ow * s.stride - s.pad;
        for (int kh = 0; kh < s.K; ++kh) {
          const int ih = h0 + kh;
          if (ih < 0 || ih >= s.H) continue;
          for (int kw = 0; kw < s.K; ++kw) {
            const int iw = w0 + kw;
            if (iw < 0 || iw >= s.W) continue;
            const float v = x[ih * s.W + iw];
            if (at < 0 || v > best || std::isnan(v)) {  // PyTorch: NaN wins
              best = v;
              at = ih * s.W + iw;
            }
          }
        }
        y[oh * OW + ow] = best;
        idx[oh * OW + ow] = at;
      }
  }
}

void maxpool_backward_naive(float* dinp, const float* dout, const int32_t* argmax,
                            const PoolShape& s) {
  const int64_t HW = int64_t(s.H) * s.W, OHW = int64_t(s.OH()) * s.OW();
  std::fill(dinp, dinp + int64_t(s.N) * s.C * HW, 0.0f);
  for (int64_t plane = 0; plane < int64_t(s.N) * s.C; ++plane) {
    float* dx = dinp + plane * HW;
    const float* g = dout + plane * OHW;
    const int32_t* idx = argmax + plane * OHW;
    for (int64_t j = 0; j < OHW; ++j)
      if (idx[j] >= 0) dx[idx[j]] += g[j];
  }
}

void avgpool_forward_naive(float* out, const float* inp, int N, int C, int HW) {
  for (int64_t p = 0; p < int64_t(N) * C; ++p) {
    double sum = 0;
    const float* x = inp + p * HW;
    for (int i = 0; i < HW; ++i) sum += x[i];
    out[p] = float(sum / HW);
  }
}

void avgpool_backward_naive(float* dinp, const float* dout, int N, int C, int HW) {
  const float inv = 1.0f / float(HW);
  for (int64_t p = 0; p < int64_t(N) * C; ++p) {
    const float g = dout[p] * inv;
    std::fill(dinp + p * HW, dinp + (p + 1) * HW, g);
  }
}

// Times one batch norm or pooling call for tensor::cpu_bn_pool_record.
class OpTimer {
 public:
  OpTimer(tensor::BnPoolOp op, bool dnnl)
      : op_(op), dnnl_(dnnl), t0_(tensor::cpu_bn_pool_recording() ? mono_seconds() : -1) {}
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;
  ~OpTimer() {
    if (t0_ >= 0) tensor::cpu_bn_pool_note(op_, dnnl_, mono_seconds() - t0_);
  }

 private:
  tensor::BnPoolOp op_;
  bool dnnl_;
  double t0_;
};

tensor::CpuBnDims bn_dims(const BatchNormShape& s) {
  tensor::CpuBnDims d;
  d.N = s.N, d.C = s.C, d.HW = s.HW, d.eps = s.eps;
  return d;
}

void check_bn(const BatchNormShape& s) {
  PTRAIN_CHECK(s.N > 0 && s.C > 0 && s.HW > 0 && s.eps >= 0,
               "batch norm shape N={} C={} HW={} eps {}", s.N, s.C, s.HW, s.eps);
}

void compute_rstd(float* rstd, const float* var, const BatchNormShape& s) {
  for (int c = 0; c < s.C; ++c) rstd[c] = float(1.0 / std::sqrt(double(var[c]) + double(s.eps)));
}

tensor::CpuPoolDims pool_dims(const PoolShape& s) {
  tensor::CpuPoolDims d;
  d.kind = tensor::PoolKind::kMax;
  d.N = s.N, d.C = s.C, d.H = s.H, d.W = s.W;
  d.KH = d.KW = s.K, d.SH = d.SW = s.stride, d.PH = d.PW = s.pad;
  return d;
}

// The global average pool as oneDNN's average pooling of [N,C,HW,1] with an HWx1 window.
tensor::CpuPoolDims global_avg_dims(int N, int C, int HW) {
  tensor::CpuPoolDims d;
  d.kind = tensor::PoolKind::kAvg;
  d.N = N, d.C = C, d.H = HW, d.W = 1, d.KH = HW, d.KW = 1;
  return d;
}

void check_pool(const PoolShape& s) {
  PTRAIN_CHECK(s.N > 0 && s.C > 0 && s.H > 0 && s.W > 0 && s.K > 0 && s.stride > 0 && s.pad >= 0,
               "max-pool shape N={} C={} H={} W={} window {} stride {} pad {}", s.N, s.C, s.H, s.W,
               s.K, s.stride, s.pad);
  PTRAIN_CHECK(s.OH() > 0 && s.OW() > 0, "max-pool: a {}x{} input is smaller than the {}x{} window",
               s.H, s.W, s.K, s.K);
}

}  // namespace

void batchnorm_normalize(float* y, float* rstd, const float* x, const float* mean, const float* var,
                         const float* weight, const float* bias, const BatchNormShape& s) {
  check_bn(s);
  const tensor::CpuBnDims d = bn_dims(s);
  const bool dnnl = tensor::cpu_bn_uses_dnnl(d);
  OpTimer timer(tensor::BnPoolOp::kBnNormalize, dnnl);
  compute_rstd(rstd, var, s);
  if (dnnl)
    tensor::dnnl_bn_forward_inference(y, x, mean, var, weight, bias, d);
  else
    normalize_naive(y, x, mean, rstd, weight, bias, s);
}

int64_t batchnorm_forward_training(float* y, float* mean, float* var, float* rstd, const float* x,
                                   const float* weight, const float* bias, const BatchNormShape& s,
                                   GroupComm* group, const float* shift) {
  check_bn(s);
  const tensor::CpuBnDims d = bn_dims(s);
  const bool dnnl = tensor::cpu_bn_uses_dnnl(d);
  OpTimer timer(tensor::BnPoolOp::kBnTrainForward, dnnl);
  if (dnnl && !group) {
    tensor::dnnl_bn_forward_training(y, mean, var, x, weight, bias, d);
    compute_rstd(rstd, var, s);
    return int64_t(s.N) * s.HW;
  }
  const int64_t count = batchnorm_batch_stats(mean, var, x, s, group, shift);
  compute_rstd(rstd, var, s);
  if (dnnl)
    tensor::dnnl_bn_forward_inference(y, x, mean, var, weight, bias, d);
  else
    normalize_naive(y, x, mean, rstd, weight, bias, s);
  return count;
}

void batchnorm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                        const float* mean, const float* rstd, const float* weight,
                        const BatchNormShape& s, bool batch_stats, int64_t count,
                        GroupComm* group) {
  check_bn(s);
  const tensor::CpuBnDims d = bn_dims(s);
  const bool dnnl = dx && !(batch_stats && group) && tensor::cpu_bn_uses_dnnl(d);
  OpTimer timer(tensor::BnPoolOp::kBnBackward, dnnl);
  if (!dnnl) {
    backward_naive(dx, dweight, dbias, dy, x, mean, rstd, weight, s, batch_stats, count, group);
    return;
  }
  PTRAIN_CHECK(!batch_stats || count == int64_t(s.N) * s.HW,
               "batch norm backward: statistics over {} values, the batch has {}", count,
               int64_t(s.N) * s.HW);
  // oneDNN takes the variance: the one whose rstd forward gave, var + eps = 1 / rstd^2 (to
  // round-off), and sums per channel that this call accumulates.
  thread_local std::vector<float> tmp;
  tmp.resize(3 * size_t(s.C));
  float* var = tmp.data();
  float* dw = var + s.C;
  float* db = dw + s.C;
  for (int c = 0; c < s.C; ++c) {
    const double r = rstd[c];
    var[c] = float(std::max(0.0, 1.0 / (r * r) - double(s.eps)));
  }
  tensor::dnnl_bn_backward(dx, dw, db, dy, x, mean, var, weight, batch_stats, d);
  for (int c = 0; c < s.C; ++c) {
    dweight[c] += dw[c];
    dbias[c] += db[c];
  }
}

void maxpool2d_forward(float* out, int32_t* argmax, const float* inp, const PoolShape& s) {
  check_pool(s);
  const tensor::CpuPoolDims d = pool_dims(s);
  const bool dnnl = tensor::cpu_pool_uses_dnnl(false, d);
  OpTimer timer(tensor::BnPoolOp::kMaxPoolForward, dnnl);
  if (dnnl)
    tensor::dnnl_maxpool_forward(out, argmax, inp, d);
  else
    maxpool_forward_naive(out, argmax, inp, s);
}

void maxpool2d_backward(float* dinp, const float* dout, const int32_t* argmax, const PoolShape& s) {
  check_pool(s);
  const tensor::CpuPoolDims d = pool_dims(s);
  const bool dnnl = tensor::cpu_pool_uses_dnnl(true, d);
  OpTimer timer(tensor::BnPoolOp::kMaxPoolBackward, dnnl);
  if (dnnl)
    tensor::dnnl_maxpool_backward(dinp, dout, argmax, d);
  else
    maxpool_backward_naive(dinp, dout, argmax, s);
}

void global_avgpool_forward(float* out, const float* inp, int N, int C, int HW) {
  PTRAIN_CHECK(N > 0 && C > 0 && HW > 0, "global average pool shape N={} C={} HW={}", N, C, HW);
  const tensor::CpuPoolDims d = global_avg_dims(N, C, HW);
  const bool dnnl = tensor::cpu_pool_uses_dnnl(false, d);
  OpTimer timer(tensor::BnPoolOp::kAvgPoolForward, dnnl);
  if (dnnl)
    tensor::dnnl_avgpool_forward(out, inp, d);
  else
    avgpool_forward_naive(out, inp, N, C, HW);
}

void global_avgpool_backward(float* dinp, const float* dout, int N, int C, int HW) {
  PTRAIN_CHECK(N > 0 && C > 0 && HW > 0, "global average pool shape N={} C={} HW={}", N, C, HW);
  const tensor::CpuPoolDims d = global_avg_dims(N, C, HW);
  const bool dnnl = tensor::cpu_pool_uses_dnnl(true, d);
  OpTimer timer(tensor::BnPoolOp::kAvgPoolBackward, dnnl);
  if (dnnl)
    tensor::dnnl_avgpool_backward(dinp, dout, d);
  else
    avgpool_backward_naive(dinp, dout, N, C, HW);
}

void crossentropy_smoothed_forward(float* losses, float* lse, const float* logits,
                                   const int32_t* targets, int N, int V, float smoothing) {
  for (int n = 0; n < N; ++n) {
    const float* z = logits + int64_t(n) * V;
    float mx = z[0];
    for (int j = 1; j < V; ++j) mx = std::max(mx, z[j]);
    double se = 0, sz = 0;
    for (int j = 0; j < V; ++j) {
      se += std::exp(double(z[j]) - mx);
      sz += z[j];
    }
    const double l = mx + std::log(se);
    lse[n] = float(l);
    const int t = targets[n];
    if (t < 0) {
      losses[n] = 0;
      continue;
    }
    PTRAIN_CHECK(t < V, "target {} of row {} is outside [0, {})", t, n, V);
    losses[n] = float(l - (1.0 - smoothing) * z[t] - smoothing * sz / V);
  }
}

void crossentropy_smoothed_backward(float* dlogits, const float* logits, const float* lse,
                                    const int32_t* targets, int N, int V, float smoothing,
                                    float dloss) {
  const float off = smoothing / float(V);
  for (int n = 0; n < N; ++n) {
    const float* z = logits + int64_t(n) * V;
    float* d = dlogits + int64_t(n) * V;
    const int t = targets[n];
    if (t < 0) {
      std::fill(d, d + V, 0.0f);
      continue;
    }
    for (int j = 0; j < V; ++j) {
      float q = off + (j == t ? 1.0f - smoothing : 0.0f);
      d[j] = (std::exp(z[j] - lse[n]) - q) * dloss;
    }
  }
}

}  // namespace ptrain::nn
