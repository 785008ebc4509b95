// The CNN layers (nn/cnn.h) against naive double-precision references: forward values
// directly, gradients by central finite differences of loss = sum(out * R) for a fixed random R.
// Convolutions run on both paths (im2col + GEMM and oneDNN's primitives, PTRAIN_CPU_CONV), and
// so do batch norm and pooling (the loops and oneDNN's primitives, PTRAIN_CPU_BN/POOL), which
// are also compared with each other over a table of shapes.
// Sync batch norm over two ranks (threads) equals batch norm over the joined batch.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <mutex>
#include <thread>

#include "grad_check.h"
#include "ptrain/core/error.h"
#include "ptrain/nn/cnn.h"
#include "ptrain/tensor/cpu_bn_pool.h"
#include "ptrain/tensor/cpu_conv.h"
#include "ptrain/tensor/cpu_kernels.h"
#include "ptrain/tensor/ops.h"

using namespace ptrain;
using namespace ptrain::nn;
using namespace ptrain::nn::testing;
using tensor::cpu_ops;
using tensor::CpuConv;
using tensor::CpuPath;

namespace {

double dot(const std::vector<double>& a, const std::vector<float>& r) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * r[i];
  return s;
}

void expect_close(const std::vector<float>& got, const std::vector<double>& ref, double atol,
                  double rtol, const std::string& what) {
  expect_grad_close(got, ref, atol, rtol, what);
}

// --- references ---
std::vector<double> ref_conv(const std::vector<double>& x, const std::vector<double>& w,
                             const Conv2dShape& s) {
  const int OH = s.OH(), OW = s.OW();
  std::vector<double> y(size_t(s.out_numel()));
  for (int n = 0; n < s.N; ++n)
    for (int o = 0; o < s.OC; ++o)
      for (int oh = 0; oh < OH; ++oh)
        for (int ow = 0; ow < OW; ++ow) {
          double acc = 0;
          for (int c = 0; c < s.C; ++c)
            for (int kh = 0; kh < s.KH; ++kh)
              for (int kw = 0; kw < s.KW; ++kw) {
                int ih = oh * s.stride - s.pad + kh, iw = ow * s.stride - s.pad + kw;
                if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
                acc += x[((size_t(n) * s.C + c) * s.H + ih) * s.W + iw] *
                       w[((size_t(o) * s.C + c) * s.KH + kh) * s.KW + kw];
              }
          y[((size_t(n) * s.OC + o) * OH + oh) * OW + ow] = acc;
        }
  return y;
}

// Training-mode batch norm (batch statistics, biased variance) or evaluation mode (given
// statistics).
std::vector<double> ref_bn(const std::vector<double>& x, const std::vector<double>& w,
                           const std::vector<double>& b, int N, int C, int HW, bool train,
                           const std::vector<double>& rm = {}, const std::vector<double>& rv = {}) {
  std::vector<double> y(x.size());
  for (int c = 0; c < C; ++c) {
    double m = 0, v = 0;
    if (train) {
      for (int n = 0; n < N; ++n)
        for (int i = 0; i < HW; ++i) m += x[(size_t(n) * C + c) * HW + i];
      m /= double(N) * HW;
      for (int n = 0; n < N; ++n)
        for (int i = 0; i < HW; ++i) {
          double d = x[(size_t(n) * C + c) * HW + i] - m;
          v += d * d;
        }
      v /= double(N) * HW;
    } else {
      m = rm[c];
      v = rv[c];
    }
    double r = 1 / std::sqrt(v + 1e-5);
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < HW; ++i) {
        size_t k = (size_t(n) * C + c) * HW + i;
        y[k] = (x[k] - m) * r * w[c] + b[c];
      }
  }
  return y;
}

std::vector<double> ref_maxpool(const std::vector<double>& x, const PoolShape& s) {
  const int OH = s.OH(), OW = s.OW();
  std::vector<double> y(size_t(s.out_numel()));
  for (int p = 0; p < s.N * s.C; ++p)
    for (int oh = 0; oh < OH; ++oh)
      for (int ow = 0; ow < OW; ++ow) {
        double best = -INFINITY;
        for (int kh = 0; kh < s.K; ++kh)
          for (int kw = 0; kw < s.K; ++kw) {
            int ih = oh * s.stride - s.pad + kh, iw = ow * s.stride - s.pad + kw;
            if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
            best = std::max(best, x[(size_t(p) * s.H + ih) * s.W + iw]);
          }
        y[(size_t(p) * OH + oh) * OW + ow] = best;
      }
  return y;
}

std::vector<double> ref_ce(const std::vector<double>& z, const std::vector<int32_t>& t, int N,
                           int V, double e) {
  std::vector<double> l(static_cast<size_t>(N));
  for (int n = 0; n < N; ++n) {
    if (t[size_t(n)] < 0) continue;
    double mx = -INFINITY, se = 0;
    for (int j = 0; j < V; ++j) mx = std::max(mx, z[size_t(n) * V + j]);
    for (int j = 0; j < V; ++j) se += std::exp(z[size_t(n) * V + j] - mx);
    double lse = mx + std::log(se), loss = 0;
    for (int j = 0; j < V; ++j) {
      double q = e / V + (j == t[size_t(n)] ? 1 - e : 0);
      loss += q * (lse - z[size_t(n) * V + j]);
    }
    l[size_t(n)] = loss;
  }
  return l;
}

std::vector<float> conv_fwd(const std::vector<float>& x, const std::vector<float>& w,
                            const Conv2dShape& s) {
  std::vector<float> y(size_t(s.out_numel()));
  conv2d_forward(cpu_ops(), y.data(), x.data(), w.data(), s);
  return y;
}

// Forces one convolution path (and threads) for a test and restores the previous ones.
class ConvModeGuard {
 public:
  explicit ConvModeGuard(CpuConv mode, int threads = 1)
      : saved_(tensor::cpu_conv_mode()), threads_(tensor::cpu_threads()) {
    tensor::set_cpu_conv(mode);
    tensor::set_cpu_threads(threads);
  }
  ~ConvModeGuard() {
    tensor::set_cpu_conv(saved_);
    tensor::set_cpu_threads(threads_);
  }

 private:
  CpuConv saved_;
  int threads_;
};

// Forces one batch norm and pooling path (and threads) for a test and restores the previous ones.
class BnPoolGuard {
 public:
  explicit BnPoolGuard(CpuPath mode, int threads = 1)
      : bn_(tensor::cpu_bn_mode()),
        pool_(tensor::cpu_pool_mode()),
        threads_(tensor::cpu_threads()) {
    tensor::set_cpu_bn(mode);
    tensor::set_cpu_pool(mode);
    tensor::set_cpu_threads(threads);
  }
  ~BnPoolGuard() {
    tensor::set_cpu_bn(bn_);
    tensor::set_cpu_pool(pool_);
    tensor::set_cpu_threads(threads_);
  }

 private:
  CpuPath bn_, pool_;
  int threads_;
};

constexpr CpuPath kPaths[] = {CpuPath::kNaive, CpuPath::kDnnl};

Conv2dShape conv(int N, int C, int H, int W, int OC, int KH, int KW, int stride, int pad) {
  Conv2dShape s;
  s.N = N, s.C = C, s.H = H, s.W = W, s.OC = OC, s.KH = KH, s.KW = KW, s.stride = stride,
  s.pad = pad;
  return s;
}

// Shapes: odd sizes, strides 1-3, padding 0-3, 1x1 / 3x3 / 7x7 / non-square kernels, batches
// that group into one GEMM and batches of one, C=3 images, channel counts oneDNN pads to its
// 16-wide blocks, 1x1 stride-2 downsampling whose last input row no window reaches.
const Conv2dShape kConvShapes[] = {
    conv(2, 3, 5, 6, 4, 3, 3, 1, 1),     // 3x3 same
    conv(3, 2, 7, 7, 3, 3, 3, 2, 1),     // stride 2
    conv(1, 2, 9, 8, 2, 7, 7, 2, 3),     // 7x7 stem
    conv(2, 4, 4, 5, 3, 1, 1, 1, 0),     // pointwise
    conv(2, 4, 6, 5, 3, 1, 1, 2, 0),     // downsample
    conv(2, 1, 6, 7, 2, 2, 3, 3, 2),     // odd
    conv(1, 3, 3, 3, 2, 3, 3, 1, 0),     // 1x1 output
    conv(1, 3, 11, 10, 4, 7, 7, 2, 3),   // ImageNet stem on C=3, batch 1
    conv(2, 3, 8, 8, 5, 3, 3, 2, 1),     // C=3, stride 2, padding
    conv(1, 5, 6, 6, 4, 1, 1, 2, 0),     // 1x1 stride 2 on an even size, batch 1
    conv(2, 17, 5, 5, 3, 3, 3, 1, 1),    // input channels past one 16-wide block
    conv(2, 3, 5, 5, 18, 3, 3, 1, 1),    // output channels past one 16-wide block
    conv(1, 16, 4, 4, 32, 3, 3, 2, 1)};  // ResNet's stride-2 widening, block-aligned

struct ConvCase {
  Conv2dShape shape;
  CpuConv mode;
};

class Conv2dGrad : public ::testing::TestWithParam<ConvCase> {};

TEST_P(Conv2dGrad, ForwardAndGradientsMatchTheReference) {
  const Conv2dShape s = GetParam().shape;
  ConvModeGuard guard(GetParam().mode);
  auto x = randn(size_t(s.in_numel()), 1);
  auto w = randn(size_t(s.weight_numel()), 2, 0.5f);
  auto R = randn(size_t(s.out_numel()), 3);
  auto y = conv_fwd(x, w, s);
  expect_close(y, ref_conv(to_double(x), to_double(w), s), 1e-4, 1e-4, "conv2d forward");

  std::vector<float> dx(x.size(), 7.0f), dw(w.size(), 0.25f);  // dx written, dw accumulated
  conv2d_backward(cpu_ops(), dx.data(), dw.data(), R.data(), x.data(), w.data(), s);
  auto gx =
      fd_grad([&](const std::vector<double>& xx) { return dot(ref_conv(xx, to_double(w), s), R); },
              to_double(x));
  auto gw =
      fd_grad([&](const std::vector<double>& ww) { return dot(ref_conv(to_double(x), ww, s), R); },
              to_double(w));
  for (auto& g : gw) g += 0.25;
  expect_close(dx, gx, 1e-4, 1e-3, "conv2d d input");
  expect_close(dw, gw, 1e-4, 1e-3, "conv2d d weight");

  // Without an input gradient only the weight gradient is formed.
  std::vector<float> dw2(w.size(), 0.0f);
  conv2d_backward(cpu_ops(), nullptr, dw2.data(), R.data(), x.data(), w.data(), s);
  for (size_t i = 0; i < dw2.size(); ++i) EXPECT_NEAR(dw2[i] + 0.25f, dw[i], 1e-4);
}

std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> cases;
  // auto splits a backward between the paths where it keeps small weight gradients on im2col.
  for (CpuConv mode : {CpuConv::kIm2col, CpuConv::kDnnl, CpuConv::kAuto})
    for (const Conv2dShape& s : kConvShapes) cases.push_back({s, mode});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, Conv2dGrad, ::testing::ValuesIn(conv_cases()),
                         [](const auto& info) {
                           return fmt::format("{}_s{}", tensor::cpu_conv_name(info.param.mode),
                                              info.index % std::size(kConvShapes));
                         });

// ResNet-sized layers, too large for finite differences: oneDNN's passes equal im2col's (which
// the shapes above check against the reference) at 1 and 2 threads, and running the same call
// again gives the same bits.
TEST(Conv2dPaths, OneDnnEqualsIm2colOnResNetLayers) {
  for (const Conv2dShape& s :
       {conv(4, 16, 28, 28, 16, 3, 3, 1, 1), conv(4, 16, 28, 28, 32, 3, 3, 2, 1),
        conv(4, 16, 28, 28, 32, 1, 1, 2, 0), conv(2, 3, 32, 32, 64, 7, 7, 2, 3),
        conv(2, 64, 8, 8, 64, 3, 3, 1, 1)}) {
    const std::string what =
        fmt::format("N={} C={} H={} OC={} K={} stride {}", s.N, s.C, s.H, s.OC, s.KH, s.stride);
    auto x = randn(size_t(s.in_numel()), 70), w = randn(size_t(s.weight_numel()), 71, 0.1f);
    auto dy = randn(size_t(s.out_numel()), 72);
    auto pass = [&](CpuConv mode, int threads) {
      ConvModeGuard guard(mode, threads);
      std::vector<float> y(size_t(s.out_numel())), dx(x.size()), dw(w.size(), 0.5f);
      conv2d_forward(cpu_ops(), y.data(), x.data(), w.data(), s);
      conv2d_backward(cpu_ops(), dx.data(), dw.data(), dy.data(), x.data(), w.data(), s);
      return std::vector<std::vector<float>>{y, dx, dw};
    };
    const auto ref = pass(CpuConv::kIm2col, 1);
    for (int threads : {1, 2}) {
      const auto got = pass(CpuConv::kDnnl, threads);
      const char* names[] = {"forward", "d input", "d weight"};
      for (int i = 0; i < 3; ++i) {
        double worst = 0, scale = 0;
        for (size_t j = 0; j < ref[i].size(); ++j) {
          worst = std::max(worst, double(std::abs(got[i][j] - ref[i][j])));
          scale = std::max(scale, double(std::abs(ref[i][j])));
        }
        EXPECT_LE(worst, 2e-5 * (1 + scale)) << what << " " << names[i] << " threads " << threads;
      }
      EXPECT_EQ(pass(CpuConv::kDnnl, threads), got) << what << " is not deterministic";
    }
  }
}

TEST(Conv2dPaths, AutoTakesOneDnnExceptWeightGradientsOfFewPixels) {
  ConvModeGuard guard(CpuConv::kAuto);
  const bool avx512 = tensor::cpu_kernels().find("(ISA avx512") != std::string::npos;
  auto dims = [](int H, int stride) {
    tensor::CpuConvDims d;
    d.N = 32, d.C = 256, d.H = H, d.W = H, d.OC = 256, d.KH = 3, d.KW = 3, d.stride = stride;
    d.pad = 1;
    return d;
  };
  using tensor::ConvPass;
  for (ConvPass pass : {ConvPass::kForward, ConvPass::kBackwardData, ConvPass::kBackwardWeights})
    EXPECT_EQ(tensor::cpu_conv_uses_dnnl(pass, dims(8, 1)), avx512) << conv_pass_name(pass);
  EXPECT_EQ(tensor::cpu_conv_uses_dnnl(ConvPass::kBackwardData, dims(2, 1)), avx512);
  EXPECT_FALSE(tensor::cpu_conv_uses_dnnl(ConvPass::kBackwardWeights, dims(2, 1)));  // 4 pixels
  EXPECT_FALSE(tensor::cpu_conv_uses_dnnl(ConvPass::kBackwardWeights, dims(4, 2)));  // 4 pixels
  EXPECT_EQ(tensor::cpu_conv_uses_dnnl(ConvPass::kBackwardWeights, dims(5, 2)), avx512);  // 9
  // The forced modes ignore the shape.
  tensor::set_cpu_conv(CpuConv::kDnnl);
  EXPECT_TRUE(tensor::cpu_conv_uses_dnnl(ConvPass::kBackwardWeights, dims(2, 1)));
  tensor::set_cpu_conv(CpuConv::kIm2col);
  EXPECT_FALSE(tensor::cpu_conv_uses_dnnl(ConvPass::kForward, dims(8, 1)));
}

TEST(Conv2dPaths, PrimitivesAreCreatedOncePerShape) {
  ConvModeGuard guard(CpuConv::kDnnl);
  const Conv2dShape s = conv(2, 5, 9, 9, 7, 3, 3, 2, 1);
  auto x = randn(size_t(s.in_numel()), 80), w = randn(size_t(s.weight_numel()), 81);
  std::vector<float> y(size_t(s.out_numel())), dx(x.size()), dw(w.size());
  conv2d_forward(cpu_ops(), y.data(), x.data(), w.data(), s);
  conv2d_backward(cpu_ops(), dx.data(), dw.data(), y.data(), x.data(), w.data(), s);
  const size_t after_first = tensor::dnnl_conv_cached_primitives();
  for (int i = 0; i < 3; ++i) {
    conv2d_forward(cpu_ops(), y.data(), x.data(), w.data(), s);
    conv2d_backward(cpu_ops(), dx.data(), dw.data(), y.data(), x.data(), w.data(), s);
  }
  EXPECT_EQ(tensor::dnnl_conv_cached_primitives(), after_first);
  // Another shape is one more primitive per pass.
  Conv2dShape t = s;
  t.N = 3;
  std::vector<float> x3(size_t(t.in_numel())), y3(size_t(t.out_numel())), dx3(x3.size());
  conv2d_forward(cpu_ops(), y3.data(), x3.data(), w.data(), t);
  conv2d_backward(cpu_ops(), dx3.data(), dw.data(), y3.data(), x3.data(), w.data(), t);
  EXPECT_EQ(tensor::dnnl_conv_cached_primitives(), after_first + 3);
}

TEST(Conv2d, RefusesAnInputSmallerThanTheKernel) {
  Conv2dShape s = conv(1, 1, 2, 2, 1, 3, 3, 1, 0);
  std::vector<float> x(4), w(9), y(4);
  EXPECT_THROW(conv2d_forward(cpu_ops(), y.data(), x.data(), w.data(), s), Error);
}

struct BnCase {
  int N, C, HW;
};

class BatchNormGrad : public ::testing::TestWithParam<BnCase> {};

TEST_P(BatchNormGrad, TrainingModeMatchesTheReference) {
  for (CpuPath path : kPaths) {
    SCOPED_TRACE(tensor::cpu_path_name(path));
    BnPoolGuard guard(path);
    const auto [N, C, HW] = GetParam();
    BatchNormShape s{N, C, HW};
    auto x = randn(size_t(N) * C * HW, 4, 2.0f);
    for (auto& v : x) v += 0.5f;
    auto w = randn(size_t(C), 5), b = randn(size_t(C), 6);
    auto R = randn(x.size(), 7);
    std::vector<float> mean(static_cast<size_t>(C)), var(static_cast<size_t>(C)),
        rstd(static_cast<size_t>(C)), y(x.size());
    int64_t count = batchnorm_batch_stats(mean.data(), var.data(), x.data(), s, nullptr);
    EXPECT_EQ(count, int64_t(N) * HW);
    batchnorm_normalize(y.data(), rstd.data(), x.data(), mean.data(), var.data(), w.data(),
                        b.data(), s);
    auto bd = to_double(b), wd = to_double(w), xd = to_double(x);
    expect_close(y, ref_bn(xd, wd, bd, N, C, HW, true), 1e-5, 1e-4, "bn forward");
    {
      std::vector<float> y1(x.size()), mean1(static_cast<size_t>(C)), var1(static_cast<size_t>(C)),
          rstd1(static_cast<size_t>(C));
      EXPECT_EQ(batchnorm_forward_training(y1.data(), mean1.data(), var1.data(), rstd1.data(),
                                           x.data(), w.data(), b.data(), s, nullptr),
                count);
      expect_close(y1, ref_bn(xd, wd, bd, N, C, HW, true), 1e-5, 1e-4, "bn one-call forward");
      for (int c = 0; c < C; ++c) {
        EXPECT_NEAR(mean1[c], mean[c], 1e-6 * (1 + std::abs(mean[c])));
        EXPECT_NEAR(var1[c], var[c], 1e-5 * var[c]);
      }
    }

    std::vector<float> dx(x.size()), dw(size_t(C), 1.0f), db(size_t(C), -1.0f);
    batchnorm_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), mean.data(),
                       rstd.data(), w.data(), s, true, count, nullptr);
    auto gx = fd_grad(
        [&](const std::vector<double>& v) { return dot(ref_bn(v, wd, bd, N, C, HW, true), R); },
        xd);
    auto gw = fd_grad(
        [&](const std::vector<double>& v) { return dot(ref_bn(xd, v, bd, N, C, HW, true), R); },
        wd);
    auto gb = fd_grad(
        [&](const std::vector<double>& v) { return dot(ref_bn(xd, wd, v, N, C, HW, true), R); },
        bd);
    for (auto& g : gw) g += 1.0;
    for (auto& g : gb) g -= 1.0;
    expect_close(dx, gx, 2e-4, 2e-3, "bn d input");
    expect_close(dw, gw, 2e-4, 1e-3, "bn d weight");
    expect_close(db, gb, 2e-4, 1e-3, "bn d bias");

    // One pass about a shift (what synchronised batch norm sends) gives the same statistics.
    std::vector<float> shift(static_cast<size_t>(C), 0.4f), mean1(static_cast<size_t>(C)),
        var1(static_cast<size_t>(C));
    EXPECT_EQ(batchnorm_batch_stats(mean1.data(), var1.data(), x.data(), s, nullptr, shift.data()),
              count);
    for (int c = 0; c < C; ++c) {
      EXPECT_NEAR(mean1[c], mean[c], 1e-6 * (1 + std::abs(mean[c])));
      EXPECT_NEAR(var1[c], var[c], 1e-5 * var[c]);
    }

    // Running statistics: momentum 0.1, the unbiased variance.
    std::vector<float> rm(size_t(C), 0.5f), rv(size_t(C), 2.0f);
    float nbt = 3;
    batchnorm_update_running(rm.data(), rv.data(), &nbt, mean.data(), var.data(), count, s);
    EXPECT_EQ(nbt, 4.0f);
    for (int c = 0; c < C; ++c) {
      double m = 0, v = 0, M = double(N) * HW;
      for (int n = 0; n < N; ++n)
        for (int i = 0; i < HW; ++i) m += xd[(size_t(n) * C + c) * HW + i];
      m /= M;
      for (int n = 0; n < N; ++n)
        for (int i = 0; i < HW; ++i) v += std::pow(xd[(size_t(n) * C + c) * HW + i] - m, 2);
      EXPECT_NEAR(rm[size_t(c)], 0.9 * 0.5 + 0.1 * m, 1e-5);
      EXPECT_NEAR(rv[size_t(c)], 0.9 * 2.0 + 0.1 * v / (M - 1), 1e-4);
    }
  }
}

TEST_P(BatchNormGrad, EvaluationModeUsesTheRunningStatistics) {
  for (CpuPath path : kPaths) {
    SCOPED_TRACE(tensor::cpu_path_name(path));
    BnPoolGuard guard(path);
    const auto [N, C, HW] = GetParam();
    BatchNormShape s{N, C, HW};
    auto x = randn(size_t(N) * C * HW, 8);
    auto w = randn(size_t(C), 9), b = randn(size_t(C), 10), R = randn(x.size(), 11);
    std::vector<float> rm = randn(size_t(C), 12), rv(static_cast<size_t>(C));
    for (int c = 0; c < C; ++c) rv[size_t(c)] = 0.5f + 0.25f * float(c);
    std::vector<float> y(x.size()), rstd(static_cast<size_t>(C));
    batchnorm_normalize(y.data(), rstd.data(), x.data(), rm.data(), rv.data(), w.data(), b.data(),
                        s);
    auto wd = to_double(w), bd = to_double(b), rmd = to_double(rm), rvd = to_double(rv);
    auto f = [&](const std::vector<double>& xx, const std::vector<double>& ww,
                 const std::vector<double>& bb) {
      return ref_bn(xx, ww, bb, N, C, HW, false, rmd, rvd);
    };
    expect_close(y, f(to_double(x), wd, bd), 1e-5, 1e-4, "bn eval forward");
    std::vector<float> dx(x.size()), dw(static_cast<size_t>(C)), db(static_cast<size_t>(C));
    batchnorm_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), rm.data(), rstd.data(),
                       w.data(), s, false, 0, nullptr);
    expect_close(
        dx,
        fd_grad([&](const std::vector<double>& v) { return dot(f(v, wd, bd), R); }, to_double(x)),
        1e-4, 1e-3, "bn eval d input");
    expect_close(
        dw,
        fd_grad([&](const std::vector<double>& v) { return dot(f(to_double(x), v, bd), R); }, wd),
        1e-4, 1e-3, "bn eval d weight");
    expect_close(
        db,
        fd_grad([&](const std::vector<double>& v) { return dot(f(to_double(x), wd, v), R); }, bd),
        1e-4, 1e-3, "bn eval d bias");
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, BatchNormGrad,
                         ::testing::Values(BnCase{4, 3, 5}, BnCase{2, 2, 9}, BnCase{8, 1, 1}),
                         [](const auto& info) { return fmt::format("s{}", info.index); });

// Two ranks as threads: allreduce_sum adds every rank's buffer.
class ThreadGroup {
 public:
  explicit ThreadGroup(int n) : n_(n), barrier_(n) {}
  class Member : public GroupComm {
   public:
    Member(ThreadGroup& g) : g_(g) {}
    void allreduce_sum(float* data, size_t count) override { g_.reduce(data, count, false); }
    void allreduce_max(float* data, size_t count) override { g_.reduce(data, count, true); }
    uint64_t calls = 0;

   private:
    ThreadGroup& g_;
  };
  void reduce(float* data, size_t count, bool max) {
    {
      std::lock_guard lock(mu_);
      if (arrived_ == 0)
        acc_.assign(data, data + count);
      else
        for (size_t i = 0; i < count; ++i)
          acc_[i] = max ? std::max(acc_[i], data[i]) : acc_[i] + data[i];
      ++arrived_;
    }
    barrier_.arrive_and_wait();
    std::copy(acc_.begin(), acc_.begin() + long(count), data);
    barrier_.arrive_and_wait();
    {
      std::lock_guard lock(mu_);
      arrived_ = 0;
    }
    barrier_.arrive_and_wait();
  }

 private:
  int n_;
  std::barrier<> barrier_;
  std::mutex mu_;
  int arrived_ = 0;
  std::vector<float> acc_;
};

TEST(SyncBatchNorm, TwoRanksEqualTheJoinedBatch) {
  const int N = 6, C = 3, HW = 7;
  auto x = randn(size_t(N) * C * HW, 20, 3.0f);
  auto w = randn(size_t(C), 21), b = randn(size_t(C), 22), dy = randn(x.size(), 23);
  // One process over the whole batch.
  BatchNormShape all{N, C, HW};
  std::vector<float> mean(C), var(C), rstd(C), y(x.size()), dx(x.size()), dw(C), db(C);
  int64_t count = batchnorm_batch_stats(mean.data(), var.data(), x.data(), all, nullptr);
  batchnorm_normalize(y.data(), rstd.data(), x.data(), mean.data(), var.data(), w.data(), b.data(),
                      all);
  batchnorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), mean.data(), rstd.data(),
                     w.data(), all, true, count, nullptr);
  // Two ranks of three images each.
  ThreadGroup group(2);
  std::vector<float> y2(x.size()), dx2(x.size()), dw2(2 * C), db2(2 * C), mean2(2 * C);
  std::vector<int64_t> counts(2);
  const std::vector<float> shift = {0.5f, -1.0f, 2.0f};  // both ranks' running mean
  for (bool one_pass : {false, true}) {
    auto rank = [&](int r) {
      ThreadGroup::Member m(group);
      BatchNormShape half{N / 2, C, HW};
      const size_t off = size_t(r) * (N / 2) * C * HW;
      std::vector<float> var_r(C), rstd_r(C);
      counts[r] = batchnorm_batch_stats(mean2.data() + r * C, var_r.data(), x.data() + off, half,
                                        &m, one_pass ? shift.data() : nullptr);
      batchnorm_normalize(y2.data() + off, rstd_r.data(), x.data() + off, mean2.data() + r * C,
                          var_r.data(), w.data(), b.data(), half);
      batchnorm_backward(dx2.data() + off, dw2.data() + r * C, db2.data() + r * C, dy.data() + off,
                         x.data() + off, mean2.data() + r * C, rstd_r.data(), w.data(), half, true,
                         counts[r], &m);
    };
    std::thread t0(rank, 0), t1(rank, 1);
    t0.join();
    t1.join();
    EXPECT_EQ(counts[0], count);
    EXPECT_EQ(counts[1], count);
    for (int c = 0; c < C; ++c) {
      EXPECT_NEAR(mean2[c], mean[c], 1e-6 * (1 + std::abs(mean[c])));
      EXPECT_NEAR(mean2[C + c], mean[c], 1e-6 * (1 + std::abs(mean[c])));
      // Weight gradients are each rank's share; the data-parallel sum is the whole.
      EXPECT_NEAR(dw2[c] + dw2[C + c], dw[c], 1e-5 * (1 + std::abs(dw[c])));
      EXPECT_NEAR(db2[c] + db2[C + c], db[c], 1e-5 * (1 + std::abs(db[c])));
    }
    for (size_t i = 0; i < x.size(); ++i) {
      EXPECT_NEAR(y2[i], y[i], 1e-5 * (1 + std::abs(y[i]))) << i;
      EXPECT_NEAR(dx2[i], dx[i], 1e-5 * (1 + std::abs(dx[i]))) << i;
    }
    std::fill(dw2.begin(), dw2.end(), 0.0f);
    std::fill(db2.begin(), db2.end(), 0.0f);
  }
}

class MaxPoolGrad : public ::testing::TestWithParam<PoolShape> {};

TEST_P(MaxPoolGrad, ForwardAndGradientMatchTheReference) {
  for (CpuPath path : kPaths) {
    SCOPED_TRACE(tensor::cpu_path_name(path));
    BnPoolGuard guard(path);
    const PoolShape s = GetParam();
    // Distinct values, so no window has a tie that finite differences could flip.
    std::vector<float> x(size_t(s.N) * s.C * s.H * s.W);
    auto noise = randn(x.size(), 30);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] = float((i * 7919) % x.size()) * 0.01f + noise[i] * 1e-3f;
    auto R = randn(size_t(s.out_numel()), 31);
    std::vector<float> y(size_t(s.out_numel()));
    std::vector<int32_t> idx(y.size());
    maxpool2d_forward(y.data(), idx.data(), x.data(), s);
    expect_close(y, ref_maxpool(to_double(x), s), 0, 0, "maxpool forward");
    std::vector<float> dx(x.size(), 5.0f);
    maxpool2d_backward(dx.data(), R.data(), idx.data(), s);
    expect_close(dx,
                 fd_grad([&](const std::vector<double>& v) { return dot(ref_maxpool(v, s), R); },
                         to_double(x), 1e-4),
                 1e-5, 1e-4, "maxpool d input");
  }
}

PoolShape pool(int N, int C, int H, int W, int K, int stride, int pad) {
  PoolShape s;
  s.N = N, s.C = C, s.H = H, s.W = W, s.K = K, s.stride = stride, s.pad = pad;
  return s;
}

INSTANTIATE_TEST_SUITE_P(Shapes, MaxPoolGrad,
                         ::testing::Values(pool(2, 3, 8, 8, 3, 2, 1),  // the ImageNet stem's
                                           pool(1, 2, 7, 9, 3, 2, 1), pool(2, 1, 6, 6, 2, 2, 0),
                                           pool(1, 2, 5, 5, 3, 1, 1)),
                         [](const auto& info) { return fmt::format("s{}", info.index); });

TEST(GlobalAvgPool, ForwardAndGradient) {
  for (CpuPath path : kPaths) {
    SCOPED_TRACE(tensor::cpu_path_name(path));
    BnPoolGuard guard(path);
    const int N = 3, C = 4, HW = 6;
    auto x = randn(size_t(N) * C * HW, 40), R = randn(size_t(N) * C, 41);
    std::vector<float> y(size_t(N) * C), dx(x.size(), 3.0f);
    global_avgpool_forward(y.data(), x.data(), N, C, HW);
    auto ref = [&](const std::vector<double>& v) {
      std::vector<double> o(size_t(N) * C);
      for (size_t p = 0; p < o.size(); ++p) {
        for (int i = 0; i < HW; ++i) o[p] += v[p * HW + i];
        o[p] /= HW;
      }
      return o;
    };
    expect_close(y, ref(to_double(x)), 1e-6, 1e-5, "avgpool forward");
    global_avgpool_backward(dx.data(), R.data(), N, C, HW);
    expect_close(
        dx, fd_grad([&](const std::vector<double>& v) { return dot(ref(v), R); }, to_double(x)),
        1e-5, 1e-4, "avgpool d input");
  }
}

TEST(Relu, ForwardAndGradientThroughTheOpTable) {
  auto x = randn(64, 50), R = randn(64, 51);
  for (auto& v : x)
    if (std::abs(v) < 1e-3f) v = 0.5f;  // away from the kink
  std::vector<float> y(64), dx(64, 0.0f);
  cpu_ops().relu_forward(y.data(), x.data(), 64);
  auto ref = [](const std::vector<double>& v) {
    std::vector<double> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = std::max(0.0, v[i]);
    return o;
  };
  expect_close(y, ref(to_double(x)), 0, 0, "relu forward");
  cpu_ops().relu_backward(dx.data(), x.data(), R.data(), 64);
  expect_close(dx,
               fd_grad([&](const std::vector<double>& v) { return dot(ref(v), R); }, to_double(x)),
               1e-6, 1e-5, "relu d input");
}

TEST(CrossEntropySmoothed, LossAndGradientMatchTheReference) {
  const int N = 5, V = 7;
  auto z = randn(size_t(N) * V, 60, 2.0f);
  std::vector<int32_t> t = {3, 0, -1, 6, 2};  // row 2 is ignored
  for (float e : {0.0f, 0.1f}) {
    std::vector<float> loss(N), lse(N), dz(z.size());
    crossentropy_smoothed_forward(loss.data(), lse.data(), z.data(), t.data(), N, V, e);
    expect_close(loss, ref_ce(to_double(z), t, N, V, e), 1e-5, 1e-5, "ce forward");
    crossentropy_smoothed_backward(dz.data(), z.data(), lse.data(), t.data(), N, V, e, 0.5f);
    auto g = fd_grad(
        [&](const std::vector<double>& v) {
          double s = 0;
          for (double l : ref_ce(v, t, N, V, e)) s += 0.5 * l;
          return s;
        },
        to_double(z));
    expect_close(dz, g, 1e-5, 1e-4, "ce d logits");
    // With e = 0 it is the op table's cross-entropy.
    if (e == 0) {
      std::vector<float> l2(N), lse2(N);
      cpu_ops().crossentropy_forward(l2.data(), lse2.data(), z.data(), t.data(), N, V);
      for (int n = 0; n < N; ++n) EXPECT_NEAR(l2[n], loss[n], 1e-5);
    }
  }
}

// --- oneDNN against the loops, shape by shape ---

void expect_near_all(const std::vector<float>& got, const std::vector<float>& want, double rtol,
                     double atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i)
    if (!(std::abs(double(got[i]) - want[i]) <= atol + rtol * std::abs(double(want[i])))) {
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs " << want[i];
      ++bad;
    }
}

// Batch norm shapes: batch 1, odd planes, channels not a multiple of 16, ResNet's.
std::vector<BnCase> bn_path_cases() {
  return {{1, 3, 7},   {2, 17, 25}, {4, 64, 49},  {3, 5, 1},
          {8, 33, 13}, {1, 1, 1},   {2, 20, 784}, {32, 512, 1}};
}

struct BnRun {
  std::vector<float> y, mean, var, rstd, rm, rv, dx, dw, db, ey, erstd, edx, edw, edb;
  float nbt = 3;
};

BnRun run_bn(CpuPath path, int threads, const BnCase& c) {
  BnPoolGuard guard(path, threads);
  const auto [N, C, HW] = c;
  BatchNormShape s{N, C, HW};
  const size_t n = size_t(N) * C * HW, cs = size_t(C);
  auto x = randn(n, 70, 3.0f);
  for (auto& v : x) v += 1.5f;
  const auto w = randn(cs, 71), b = randn(cs, 72), dy = randn(n, 73);
  BnRun r;
  r.y.resize(n), r.mean.resize(cs), r.var.resize(cs), r.rstd.resize(cs);
  const int64_t count =
      batchnorm_forward_training(r.y.data(), r.mean.data(), r.var.data(), r.rstd.data(), x.data(),
                                 w.data(), b.data(), s, nullptr);
  EXPECT_EQ(count, int64_t(N) * HW);
  r.rm.assign(cs, 0.25f), r.rv.assign(cs, 1.5f);
  batchnorm_update_running(r.rm.data(), r.rv.data(), &r.nbt, r.mean.data(), r.var.data(), count, s);
  r.dx.resize(n), r.dw.assign(cs, 0.5f), r.db.assign(cs, -0.5f);
  batchnorm_backward(r.dx.data(), r.dw.data(), r.db.data(), dy.data(), x.data(), r.mean.data(),
                     r.rstd.data(), w.data(), s, true, count, nullptr);
  // Evaluation with fixed statistics (the same on both paths).
  std::vector<float> em = randn(cs, 74), ev(cs);
  for (size_t i = 0; i < cs; ++i) ev[i] = 0.5f + 0.125f * float(i % 7);
  r.ey.resize(n), r.erstd.resize(cs), r.edx.resize(n), r.edw.assign(cs, 0.f), r.edb.assign(cs, 0.f);
  batchnorm_normalize(r.ey.data(), r.erstd.data(), x.data(), em.data(), ev.data(), w.data(),
                      b.data(), s);
  batchnorm_backward(r.edx.data(), r.edw.data(), r.edb.data(), dy.data(), x.data(), em.data(),
                     r.erstd.data(), w.data(), s, false, 0, nullptr);
  return r;
}

TEST(BatchNormPaths, OneDnnEqualsTheLoopsOverATableOfShapes) {
  for (const BnCase& c : bn_path_cases())
    for (int threads : {1, 2}) {
      SCOPED_TRACE(fmt::format("N={} C={} HW={} threads {}", c.N, c.C, c.HW, threads));
      const BnRun a = run_bn(CpuPath::kNaive, threads, c), b = run_bn(CpuPath::kDnnl, threads, c);
      expect_near_all(b.mean, a.mean, 1e-5, 1e-6, "mean");
      expect_near_all(b.var, a.var, 1e-4, 1e-6, "var");
      expect_near_all(b.rstd, a.rstd, 1e-4, 0, "rstd");
      expect_near_all(b.y, a.y, 1e-4, 1e-4, "y");
      // The running statistics follow the loops' update from (nearly) the same statistics.
      expect_near_all(b.rm, a.rm, 1e-5, 1e-6, "running mean");
      expect_near_all(b.rv, a.rv, 1e-4, 1e-6, "running var");
      EXPECT_EQ(b.nbt, a.nbt);
      expect_near_all(b.dx, a.dx, 1e-3, 1e-4, "d input");
      expect_near_all(b.dw, a.dw, 1e-4, 1e-4, "d weight");
      expect_near_all(b.db, a.db, 1e-4, 1e-4, "d bias");
      expect_near_all(b.ey, a.ey, 1e-5, 1e-5, "eval y");
      EXPECT_EQ(b.erstd, a.erstd);  // the loops' rounding on both paths
      expect_near_all(b.edx, a.edx, 1e-5, 1e-6, "eval d input");
      expect_near_all(b.edw, a.edw, 1e-4, 1e-4, "eval d weight");
      expect_near_all(b.edb, a.edb, 1e-4, 1e-4, "eval d bias");
    }
}

TEST(BatchNormPaths, OneDnnGradientsMatchFiniteDifferences) {
  BnPoolGuard guard(CpuPath::kDnnl);
  const int N = 3, C = 17, HW = 5;
  BatchNormShape s{N, C, HW};
  auto x = randn(size_t(N) * C * HW, 80, 2.0f);
  auto w = randn(size_t(C), 81), b = randn(size_t(C), 82), R = randn(x.size(), 83);
  std::vector<float> y(x.size()), mean(size_t(C) + 0), var(size_t(C) + 0), rstd(size_t(C) + 0);
  const int64_t count = batchnorm_forward_training(y.data(), mean.data(), var.data(), rstd.data(),
                                                   x.data(), w.data(), b.data(), s, nullptr);
  auto xd = to_double(x), wd = to_double(w), bd = to_double(b);
  expect_close(y, ref_bn(xd, wd, bd, N, C, HW, true), 1e-5, 1e-4, "bn forward");
  std::vector<float> dx(x.size()), dw(size_t(C) + 0), db(size_t(C) + 0);
  batchnorm_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), mean.data(), rstd.data(),
                     w.data(), s, true, count, nullptr);
  expect_close(
      dx,
      fd_grad(
          [&](const std::vector<double>& v) { return dot(ref_bn(v, wd, bd, N, C, HW, true), R); },
          xd),
      2e-4, 2e-3, "bn d input");
  expect_close(
      dw,
      fd_grad(
          [&](const std::vector<double>& v) { return dot(ref_bn(xd, v, bd, N, C, HW, true), R); },
          wd),
      2e-4, 1e-3, "bn d weight");
  expect_close(
      db,
      fd_grad(
          [&](const std::vector<double>& v) { return dot(ref_bn(xd, wd, v, N, C, HW, true), R); },
          bd),
      2e-4, 1e-3, "bn d bias");
}

TEST(BnPoolPaths, AutoTakesOneDnnOnlyForMaxPoolForwardWithAvx512) {
  BnPoolGuard guard(CpuPath::kAuto);
  tensor::CpuBnDims d;
  d.N = 2, d.C = 3, d.HW = 4;
  EXPECT_FALSE(tensor::cpu_bn_uses_dnnl(d));
  tensor::CpuPoolDims p;
  p.N = 2, p.C = 3, p.H = p.W = 8, p.KH = p.KW = 3, p.SH = p.SW = 2, p.PH = p.PW = 1;
  const bool avx512 = tensor::cpu_kernels().find("avx512") != std::string::npos;
  EXPECT_EQ(tensor::cpu_pool_uses_dnnl(false, p), avx512);
  EXPECT_FALSE(tensor::cpu_pool_uses_dnnl(true, p));
  p.kind = tensor::PoolKind::kAvg;
  EXPECT_FALSE(tensor::cpu_pool_uses_dnnl(false, p));
  tensor::set_cpu_bn(CpuPath::kDnnl);
  tensor::set_cpu_pool(CpuPath::kDnnl);
  EXPECT_TRUE(tensor::cpu_bn_uses_dnnl(d));
  EXPECT_TRUE(tensor::cpu_pool_uses_dnnl(true, p));
  tensor::set_cpu_bn(CpuPath::kNaive);
  tensor::set_cpu_pool(CpuPath::kNaive);
  EXPECT_FALSE(tensor::cpu_bn_uses_dnnl(d));
  p.kind = tensor::PoolKind::kMax;
  EXPECT_FALSE(tensor::cpu_pool_uses_dnnl(false, p));
}

// Max-pool shapes: the ImageNet stem's, odd sizes, stride and padding variants, batch 1.
std::vector<PoolShape> pool_path_cases() {
  return {pool(2, 3, 8, 8, 3, 2, 1), pool(1, 17, 7, 9, 3, 2, 1),   pool(2, 5, 6, 6, 2, 2, 0),
          pool(1, 2, 5, 5, 3, 1, 1), pool(3, 20, 11, 13, 3, 2, 1), pool(1, 1, 1, 1, 1, 1, 0),
          pool(2, 3, 9, 7, 3, 3, 0), pool(2, 64, 56, 56, 3, 2, 1), pool(1, 3, 10, 10, 5, 2, 2)};
}

TEST(MaxPoolPaths, OneDnnEqualsTheLoopsOverATableOfShapes) {
  for (const PoolShape& s : pool_path_cases())
    for (int threads : {1, 2}) {
      SCOPED_TRACE(fmt::format("N={} C={} {}x{} window {} stride {} pad {} threads {}", s.N, s.C,
                               s.H, s.W, s.K, s.stride, s.pad, threads));
      const size_t n = size_t(s.N) * s.C * s.H * s.W, m = size_t(s.out_numel());
      // Distinct values except for a run of ties, where both take the first maximum.
      std::vector<float> x(n);
      for (size_t i = 0; i < n; ++i) x[i] = float((i * 7919) % n) * 0.01f - 3.0f;
      for (size_t i = 0; i < std::min<size_t>(n, 12); ++i) x[i] = 100.0f;
      const auto dy = randn(m, 90);
      std::vector<float> y[2], dx[2], cross(n);
      std::vector<int32_t> idx[2];
      for (int p = 0; p < 2; ++p) {
        BnPoolGuard guard(kPaths[p], threads);
        y[p].resize(m), idx[p].resize(m), dx[p].assign(n, 7.0f);
        maxpool2d_forward(y[p].data(), idx[p].data(), x.data(), s);
        maxpool2d_backward(dx[p].data(), dy.data(), idx[p].data(), s);
      }
      EXPECT_EQ(y[1], y[0]);
      EXPECT_EQ(idx[1], idx[0]);
      expect_near_all(dx[1], dx[0], 1e-6, 1e-6, "d input");
      // The argmax of one path drives the other's backward.
      {
        BnPoolGuard guard(CpuPath::kDnnl, threads);
        maxpool2d_backward(cross.data(), dy.data(), idx[0].data(), s);
      }
      expect_near_all(cross, dx[0], 1e-6, 1e-6, "d input from the loops' argmax");
    }
}

TEST(MaxPoolPaths, OneDnnGradientMatchesFiniteDifferences) {
  BnPoolGuard guard(CpuPath::kDnnl);
  const PoolShape s = pool(2, 17, 7, 9, 3, 2, 1);
  std::vector<float> x(size_t(s.N) * s.C * s.H * s.W);
  auto noise = randn(x.size(), 91);
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = float((i * 7919) % x.size()) * 0.01f + noise[i] * 1e-3f;
  auto R = randn(size_t(s.out_numel()), 92);
  std::vector<float> y(size_t(s.out_numel())), dx(x.size());
  std::vector<int32_t> idx(y.size());
  maxpool2d_forward(y.data(), idx.data(), x.data(), s);
  expect_close(y, ref_maxpool(to_double(x), s), 0, 0, "maxpool forward");
  maxpool2d_backward(dx.data(), R.data(), idx.data(), s);
  expect_close(dx,
               fd_grad([&](const std::vector<double>& v) { return dot(ref_maxpool(v, s), R); },
                       to_double(x), 1e-4),
               1e-5, 1e-4, "maxpool d input");
}

TEST(MaxPoolPaths, PaddingAsWideAsTheWindowStaysOnTheLoops) {
  BnPoolGuard guard(CpuPath::kDnnl);
  tensor::CpuPoolDims d;
  d.N = 1, d.C = 1, d.H = d.W = 4, d.KH = d.KW = 2, d.SH = d.SW = 1, d.PH = d.PW = 2;
  EXPECT_FALSE(tensor::cpu_pool_uses_dnnl(false, d));
  d.PH = d.PW = 1;
  EXPECT_TRUE(tensor::cpu_pool_uses_dnnl(false, d));
}

TEST(GlobalAvgPoolPaths, OneDnnEqualsTheLoopsAndFiniteDifferences) {
  for (auto [N, C, HW] : std::vector<BnCase>{{1, 3, 1}, {2, 17, 49}, {3, 64, 16}, {32, 512, 4}})
    for (int threads : {1, 2}) {
      SCOPED_TRACE(fmt::format("N={} C={} HW={} threads {}", N, C, HW, threads));
      auto x = randn(size_t(N) * C * HW, 95), dy = randn(size_t(N) * C, 96);
      std::vector<float> y[2], dx[2];
      for (int p = 0; p < 2; ++p) {
        BnPoolGuard guard(kPaths[p], threads);
        y[p].resize(size_t(N) * C), dx[p].assign(x.size(), 2.0f);
        global_avgpool_forward(y[p].data(), x.data(), N, C, HW);
        global_avgpool_backward(dx[p].data(), dy.data(), N, C, HW);
      }
      expect_near_all(y[1], y[0], 1e-5, 1e-6, "y");
      expect_near_all(dx[1], dx[0], 1e-6, 0, "d input");
    }
  BnPoolGuard guard(CpuPath::kDnnl);
  const int N = 2, C = 5, HW = 9;
  auto x = randn(size_t(N) * C * HW, 97), R = randn(size_t(N) * C, 98);
  std::vector<float> dx(x.size());
  global_avgpool_backward(dx.data(), R.data(), N, C, HW);
  auto ref = [&](const std::vector<double>& v) {
    std::vector<double> o(size_t(N) * C);
    for (size_t p = 0; p < o.size(); ++p) {
      for (int i = 0; i < HW; ++i) o[p] += v[p * HW + i];
      o[p] /= HW;
    }
    return o;
  };
  expect_close(dx,
               fd_grad([&](const std::vector<double>& v) { return dot(ref(v), R); }, to_double(x)),
               1e-5, 1e-4, "avgpool d input");
}

TEST(BnPoolPaths, PrimitivesAreCreatedOncePerShape) {
  BnPoolGuard guard(CpuPath::kDnnl);
  const int N = 3, C = 7, HW = 11;
  BatchNormShape s{N, C, HW};
  auto x = randn(size_t(N) * C * HW, 99);
  std::vector<float> y(x.size()), dx(x.size()), v(4 * size_t(C), 1.0f);
  float* mean = v.data();
  float* var = mean + C;
  float* rstd = var + C;
  float* wb = rstd + C;
  auto step = [&] {
    batchnorm_forward_training(y.data(), mean, var, rstd, x.data(), wb, wb, s, nullptr);
    batchnorm_backward(dx.data(), wb, wb, x.data(), x.data(), mean, rstd, wb, s, true, N * HW,
                       nullptr);
  };
  step();
  const size_t after_first = tensor::dnnl_bn_pool_cached_primitives();
  step();
  EXPECT_EQ(tensor::dnnl_bn_pool_cached_primitives(), after_first);
}

}  // namespace
