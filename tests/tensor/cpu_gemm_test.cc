// The CPU GEMM dispatch (oneDNN and OpenBLAS) against naive double-precision references: every
// library choice, transpose, alpha/beta, leading dimension and batch layout; bf16 operands; the
// primitive cache under concurrent callers.
#include "cpu_gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "ptrain/tensor/cpu_kernels.h"
#include "ptrain/tensor/ops.h"
#include "ptrain/tensor/tensor.h"

using namespace ptrain::tensor;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = float_to_bf16(x[i]);
  return out;
}

// Restores the GEMM mode and thread count a test changed.
class ModeGuard {
 public:
  explicit ModeGuard(CpuGemm mode) : saved_(cpu_gemm_mode()), threads_(cpu_threads()) {
    set_cpu_gemm(mode);
  }
  ~ModeGuard() {
    set_cpu_gemm(saved_);
    set_cpu_threads(threads_);
  }

 private:
  CpuGemm saved_;
  int threads_;
};

struct Shape {
  int M, N, K;
};

// A GEMM case: stored operands with padded leading dimensions, `count` matrices apart by their
// strides, and the naive double-precision result.
struct Case {
  bool ta, tb;
  Shape s;
  int count;
  float alpha, beta;
  int lda, ldb, ldc;
  int64_t sa, sb, sc;
  std::vector<float> A, B, C, expect;

  Case(bool ta_, bool tb_, Shape s_, int count_, float alpha_, float beta_, bool share_b,
       uint32_t seed)
      : ta(ta_), tb(tb_), s(s_), count(count_), alpha(alpha_), beta(beta_) {
    const int pad = 3;
    int a_rows = ta ? s.K : s.M, a_cols = ta ? s.M : s.K;
    int b_rows = tb ? s.N : s.K, b_cols = tb ? s.K : s.N;
    lda = a_cols + pad;
    ldb = b_cols + pad;
    ldc = s.N + pad;
    sa = int64_t(a_rows) * lda + 5;
    sb = share_b ? 0 : int64_t(b_rows) * ldb + 7;
    sc = int64_t(s.M) * ldc + 1;
    A = randn(sa * count, seed);
    B = randn(share_b ? b_rows * ldb : sb * count, seed + 1);
    C = randn(sc * count, seed + 2);
    expect = C;
  }

  void reference(bool bf16) {
    for (int c = 0; c < count; ++c) {
      for (int i = 0; i < s.M; ++i) {
        for (int j = 0; j < s.N; ++j) {
          double sum = 0;
          for (int k = 0; k < s.K; ++k) {
            float a = A[c * sa + (ta ? k * lda + i : i * lda + k)];
            float b = B[c * sb + (tb ? j * ldb + k : k * ldb + j)];
            if (bf16) {
              a = bf16_to_float(float_to_bf16(a));
              b = bf16_to_float(float_to_bf16(b));
            }
            sum += double(a) * b;
          }
          float& e = expect[c * sc + i * ldc + j];
          e = float(alpha * sum + (beta == 0.0f ? 0.0 : double(beta) * e));
        }
      }
    }
  }

  // Every element within tolerance; padding and the gaps between matrices untouched.
  void check(const std::vector<float>& got) const {
    const double tol = 2e-6 * std::sqrt(double(s.K) + 1) * 4;
    int bad = 0;
    for (size_t i = 0; i < got.size() && bad < 5; ++i) {
      const int64_t c = int64_t(i) / sc, r = int64_t(i) % sc;
      const bool inside = c < count && r / ldc < s.M && r % ldc < s.N;
      if (inside) {
        if (!(std::abs(got[i] - expect[i]) <= tol * (1 + std::abs(expect[i])))) {
          ADD_FAILURE() << "element " << i << ": " << got[i] << " vs " << expect[i];
          ++bad;
        }
      } else if (std::memcmp(&got[i], &expect[i], sizeof(float)) != 0) {
        ADD_FAILURE() << "element " << i << " outside the matrices was written";
        ++bad;
      }
    }
  }
};

using Param = std::tuple<CpuGemm, bool, bool>;

class CpuGemmLayouts : public ::testing::TestWithParam<Param> {};

const Shape kShapes[] = {{5, 7, 3}, {64, 128, 64}, {130, 70, 33}, {256, 96, 200}, {1, 1, 1}};

TEST_P(CpuGemmLayouts, Fp32MatchesNaiveWithAlphaBetaAndLeadingDims) {
  auto [mode, ta, tb] = GetParam();
  ModeGuard guard(mode);
  for (const Shape& s : kShapes) {
    for (float beta : {0.0f, 1.0f, -1.3f}) {
      SCOPED_TRACE(::testing::Message() << s.M << "x" << s.N << "x" << s.K << " beta " << beta);
      Case c(ta, tb, s, 1, 0.7f, beta, false, 100 + s.M);
      if (beta == 0.0f) std::fill(c.C.begin(), c.C.end(), std::nanf(""));  // beta 0 never reads C
      c.expect = c.C;
      c.reference(false);
      auto got = c.C;
      cpu_ops().gemm(ta, tb, s.M, s.N, s.K, c.alpha, c.A.data(), c.lda, c.B.data(), c.ldb, beta,
                     got.data(), c.ldc);
      c.check(got);
    }
  }
}

TEST_P(CpuGemmLayouts, Fp32StridedBatchedMatchesNaive) {
  auto [mode, ta, tb] = GetParam();
  ModeGuard guard(mode);
  for (bool share_b : {false, true}) {
    SCOPED_TRACE(share_b ? "B shared (stride 0)" : "B strided");
    Case c(ta, tb, {33, 20, 17}, 4, 1.0f, 0.5f, share_b, 7);
    c.reference(false);
    auto got = c.C;
    cpu_ops().gemm_strided_batched(ta, tb, c.s.M, c.s.N, c.s.K, c.alpha, c.A.data(), c.lda, c.sa,
                                   c.B.data(), c.ldb, c.sb, c.beta, got.data(), c.ldc, c.sc,
                                   c.count);
    c.check(got);
  }
}

TEST_P(CpuGemmLayouts, Bf16MatchesNaiveOnRoundedInputs) {
  auto [mode, ta, tb] = GetParam();
  ModeGuard guard(mode);
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.M << "x" << s.N << "x" << s.K);
    Case c(ta, tb, s, 1, 0.5f, 2.0f, false, 300 + s.N);
    c.reference(true);
    auto a = to_bf16(c.A), b = to_bf16(c.B);
    auto got = c.C;
    cpu_ops().gemm_bf16(ta, tb, s.M, s.N, s.K, c.alpha, a.data(), c.lda, b.data(), c.ldb, c.beta,
                        got.data(), c.ldc);
    c.check(got);
  }
}

TEST_P(CpuGemmLayouts, Bf16StridedBatchedMatchesNaive) {
  auto [mode, ta, tb] = GetParam();
  ModeGuard guard(mode);
  Case c(ta, tb, {40, 24, 64}, 3, 1.0f, 1.0f, false, 9);
  c.reference(true);
  auto a = to_bf16(c.A), b = to_bf16(c.B);
  auto got = c.C;
  cpu_ops().gemm_bf16_strided_batched(ta, tb, c.s.M, c.s.N, c.s.K, c.alpha, a.data(), c.lda, c.sa,
                                      b.data(), c.ldb, c.sb, c.beta, got.data(), c.ldc, c.sc,
                                      c.count);
  c.check(got);
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  auto [mode, ta, tb] = info.param;
  return std::string(cpu_gemm_name(mode)) + (ta ? "_T" : "_N") + (tb ? "T" : "N");
}

INSTANTIATE_TEST_SUITE_P(AllLibrariesAndLayouts, CpuGemmLayouts,
                         ::testing::Combine(::testing::Values(CpuGemm::kAuto, CpuGemm::kOpenBlas,
                                                              CpuGemm::kDnnl),
                                            ::testing::Bool(), ::testing::Bool()),
                         param_name);

TEST(CpuGemm, EmptyInnerDimensionScalesC) {
  ModeGuard guard(CpuGemm::kDnnl);
  std::vector<float> C{1, 2, 3, 4}, A(1), B(1);
  cpu_ops().gemm(false, false, 2, 2, 0, 1.0f, A.data(), 1, B.data(), 2, 0.5f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{0.5f, 1, 1.5f, 2}));
  cpu_ops().gemm(false, false, 2, 2, 0, 1.0f, A.data(), 1, B.data(), 2, 0.0f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>(4, 0.0f)));
}

TEST(CpuGemm, TwoThreadsMatchTheReference) {
  ModeGuard guard(CpuGemm::kDnnl);
  set_cpu_threads(2);
  Case c(false, true, {256, 192, 128}, 1, 1.0f, 1.0f, false, 21);
  c.reference(false);
  auto got = c.C;
  cpu_ops().gemm(false, true, c.s.M, c.s.N, c.s.K, 1.0f, c.A.data(), c.lda, c.B.data(), c.ldb, 1.0f,
                 got.data(), c.ldc);
  c.check(got);
}

// Rank threads share the primitive cache: the same shapes from four threads at once give each
// caller its own correct result, and the cache holds one primitive per shape.
TEST(CpuGemm, ConcurrentCallersShareOnePrimitivePerShape) {
  ModeGuard guard(CpuGemm::kDnnl);
  const Shape shapes[] = {{48, 40, 24}, {24, 48, 40}};
  std::vector<Case> cases;
  for (int t = 0; t < 4; ++t) {
    cases.emplace_back(false, false, shapes[t % 2], 1, 1.0f, 0.0f, false, 500 + t);
    cases.back().reference(false);
  }
  const size_t before = cpu::dnnl_cached_primitives();
  std::vector<std::vector<float>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Case& c = cases[t];
      for (int r = 0; r < 20; ++r) {
        got[t] = c.C;
        cpu_ops().gemm(false, false, c.s.M, c.s.N, c.s.K, 1.0f, c.A.data(), c.lda, c.B.data(),
                       c.ldb, 0.0f, got[t].data(), c.ldc);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) cases[t].check(got[t]);
  EXPECT_EQ(cpu::dnnl_cached_primitives(), before + 2);
}

TEST(CpuGemm, RecordingListsEachDistinctGemmWithItsCalls) {
  std::vector<float> A(64 * 64, 1.0f), B(64 * 64, 1.0f), C(64 * 64);
  std::vector<uint16_t> Ah(64 * 64, 0x3f80), Bh(64 * 64, 0x3f80);
  cpu_gemm_record(true);
  for (int i = 0; i < 3; ++i)
    cpu_ops().gemm(false, true, 8, 16, 32, 1.0f, A.data(), 32, B.data(), 32, 0.0f, C.data(), 16);
  cpu_ops().gemm_bf16(true, false, 4, 4, 4, 0.5f, Ah.data(), 4, Bh.data(), 4, 1.0f, C.data(), 4);
  cpu_gemm_record(false);
  cpu_ops().gemm(false, false, 2, 2, 2, 1.0f, A.data(), 2, B.data(), 2, 0.0f, C.data(), 2);
  auto shapes = cpu_gemm_recorded();
  ASSERT_GE(shapes.size(), 2u);  // bf16 forced onto OpenBLAS also notes its widened fp32 GEMM
  EXPECT_FALSE(shapes[0].bf16);  // the larger one first
  EXPECT_TRUE(shapes[0].trans_b);
  EXPECT_EQ(shapes[0].M * 1000000 + shapes[0].N * 1000 + shapes[0].K, 8016032);
  EXPECT_EQ(shapes[0].calls, 3);
  bool bf16_seen = false;
  for (const auto& s : shapes) {
    EXPECT_FALSE(s.M == 2 && s.N == 2) << "recorded after recording stopped";
    if (s.bf16) {
      bf16_seen = true;
      EXPECT_TRUE(s.trans_a);
      EXPECT_EQ(s.alpha, 0.5f);
      EXPECT_EQ(s.beta, 1.0f);
    }
  }
  EXPECT_TRUE(bf16_seen);
}

TEST(CpuGemm, KernelsAreNamed) {
  const std::string k = cpu_kernels();
  EXPECT_NE(k.find("oneDNN "), std::string::npos) << k;
  EXPECT_NE(k.find("OpenBLAS "), std::string::npos) << k;
  EXPECT_NE(k.find(cpu::dnnl_isa_name()), std::string::npos) << k;
  EXPECT_EQ(cpu_has_bf16(), cpu_bf16_missing().empty());
}

}  // namespace
