// The op table test (ggml test-backend-ops style): every Ops entry runs on the CPU table (the
// reference) and on the CUDA table with the same fresh random inputs. Outputs that an op writes
// are poisoned with NaN first, so an element a kernel forgets shows up; gradients that an op
// accumulates into (+=) start from the same random values on both, so "+=" is checked too.
// Results must agree within a per-op bound on the normalized error max|cuda - cpu| / max|cpu|.
//
// Without a usable CUDA device every case skips with the reason. Environment:
//   PTRAIN_OPS_PERF=1        also run the Perf.* cases (timings, bf16 GEMM rate; GPU only)
//   PTRAIN_OPS_SELF_CHECK=1  with no device, run the table CPU against CPU (checks the harness)
// The Attention cases set PTRAIN_ATTENTION (and PTRAIN_ATTENTION_SCRATCH_MB) themselves.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "ptrain/tensor/ops.h"
#ifdef PTRAIN_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace ptrain::tensor {
namespace {

using Vec = std::vector<float>;
using IVec = std::vector<int32_t>;
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// Bounds on the normalized error, by kind of op (justified where used).
constexpr double kExact = 0.0;         // copies, conversions: bit-identical
constexpr double kElementwise = 1e-6;  // one or two roundings per element
constexpr double kFp32 = 1e-5;         // fp32 with short reductions in a different order
constexpr double kFp32Long = 1e-4;     // fp32 with long reductions through exp (attention grads)
constexpr double kBf16 = 1e-2;         // bf16 inputs against an fp32 reference

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, "1") == 0;
}

// The table under test, or nullptr with `why` set.
const Ops* device_table(std::string* why) {
  if (const Ops* t = cuda_ops()) return t;
#ifdef PTRAIN_WITH_CUDA
  *why = "no usable CUDA device (" + cuda::unavailable_reason() + ")";
#else
  *why = "ptrain was built without CUDA (PTRAIN_CUDA=OFF or no toolkit found)";
#endif
  if (env_flag("PTRAIN_OPS_SELF_CHECK")) return &cpu_ops();
  return nullptr;
}

class Rng {
 public:
  explicit Rng(uint32_t seed) : gen_(seed) {}
  Vec uniform(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> d(lo, hi);
    Vec v(n);
    for (auto& x : v) x = d(gen_);
    return v;
  }
  IVec ints(size_t n, int lo, int hi) {  // [lo, hi]
    std::uniform_int_distribution<int> d(lo, hi);
    IVec v(n);
    for (auto& x : v) x = d(gen_);
    return v;
  }

 private:
  std::mt19937 gen_;
};

// A device array of one table, filled from a host vector; freed by the table.
template <class T>
class Buf {
 public:
  Buf(const Ops& ops, const std::vector<T>& host) : ops_(&ops), n_(host.size()) {
    ptr_ = static_cast<T*>(ops.alloc(bytes()));
    if (n_ > 0) ops.copy_from_host(ptr_, host.data(), bytes());
  }
  ~Buf() { ops_->free(ptr_); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  T* get() { return ptr_; }
  std::vector<T> host() const {
    std::vector<T> out(n_);
    ops_->synchronize();
    if (n_ > 0) ops_->copy_to_host(out.data(), ptr_, bytes());
    return out;
  }

 private:
  size_t bytes() const { return n_ * sizeof(T); }
  const Ops* ops_;
  size_t n_;
  T* ptr_ = nullptr;
};

struct Output {
  std::string name;
  std::vector<double> values;
};
using Outputs = std::vector<Output>;

Output out(std::string name, const Vec& v) {
  return {std::move(name), {v.begin(), v.end()}};
}

Vec poison(size_t n) {
  return Vec(n, kNaN);
}

// Round to bf16 (nearest even) and back, on the host: the reference for the bf16 paths.
float round_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}
std::vector<uint16_t> to_bf16_bits(const Vec& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    float r = round_bf16(v[i]);
    uint32_t u;
    std::memcpy(&u, &r, 4);
    out[i] = static_cast<uint16_t>(u >> 16);
  }
  return out;
}
Vec rounded(const Vec& v) {
  Vec r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = round_bf16(v[i]);
  return r;
}

// Compares every output; reports the worst element of each that fails.
void expect_close(const std::string& op, const Outputs& ref, const Outputs& got, double tol) {
  ASSERT_EQ(ref.size(), got.size()) << op;
  for (size_t k = 0; k < ref.size(); ++k) {
    const auto& r = ref[k].values;
    const auto& g = got[k].values;
    ASSERT_EQ(r.size(), g.size()) << op << " " << ref[k].name;
    double max_ref = 0.0, max_err = 0.0;
    size_t worst = 0, bad_nan = SIZE_MAX;
    for (size_t i = 0; i < r.size(); ++i) {
      ASSERT_FALSE(std::isnan(r[i]))
          << op << ": the CPU reference left NaN in " << ref[k].name << "[" << i << "]";
      if (std::isnan(g[i]) && bad_nan == SIZE_MAX) bad_nan = i;
      max_ref = std::max(max_ref, std::abs(r[i]));
      double e = std::abs(r[i] - g[i]);
      if (e > max_err) {
        max_err = e;
        worst = i;
      }
    }
    EXPECT_EQ(bad_nan, SIZE_MAX) << op << ": " << ref[k].name << "[" << bad_nan
                                 << "] is NaN on the device (poisoned output not written?)";
    double norm = max_ref > 0.0 ? max_err / max_ref : max_err;
    EXPECT_LE(norm, tol) << op << ": " << ref[k].name
                         << " differs: max|cuda-cpu|/max|cpu| = " << norm << " (bound " << tol
                         << "), worst at [" << worst << "]: cpu " << r[worst] << " cuda "
                         << g[worst] << ", " << r.size() << " elements";
  }
}

class OpTable : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    dev_ = device_table(&why);
    if (!dev_) GTEST_SKIP() << why;
  }
  const Ops& cpu() const { return cpu_ops(); }
  const Ops& dev() const { return *dev_; }
  // Runs `run` on both tables and compares what it returns.
  template <class F>
  void compare(const std::string& op, double tol, F run) {
    Outputs ref = run(cpu());
    Outputs got = run(dev());
    expect_close(op, ref, got, tol);
  }

  const Ops* dev_ = nullptr;
  Rng rng_{20240520};
};

// --- memory ---

TEST_F(OpTable, AllocReturnsZeroFilledMemory) {
  const size_t n = 1000;
  float* p = static_cast<float*>(dev().alloc(n * sizeof(float)));
  Vec host(n, kNaN);
  dev().copy_to_host(host.data(), p, n * sizeof(float));
  dev().free(p);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(host[i], 0.0f) << "element " << i;
}

TEST_F(OpTable, CopyRoundTripsThroughDeviceToDeviceCopy) {
  Vec x = rng_.uniform(4099);
  compare("copy", kExact, [&](const Ops& o) {
    Buf<float> a(o, x), b(o, poison(x.size()));
    o.copy(b.get(), a.get(), x.size() * sizeof(float));
    return Outputs{out("b", b.host())};
  });
}

TEST_F(OpTable, FillWritesEveryElement) {
  compare("fill", kExact, [&](const Ops& o) {
    Buf<float> x(o, poison(10007));
    o.fill(x.get(), 0.25f, 10007);
    return Outputs{out("x", x.host())};
  });
}

// --- GEMM: all transpose combinations, odd sizes, leading dimensions wider than the rows ---

struct GemmCase {
  bool ta, tb;
  float beta;
};

class Gemm : public OpTable, public ::testing::WithParamInterface<GemmCase> {};

TEST_P(Gemm, MatchesCpu) {
  const auto [ta, tb, beta] = GetParam();
  const int M = 37, N = 53, K = 71, pad = 3;
  // Row-major storage: op(A) is MxK, so A is stored MxK (or KxM when transposed).
  const int a_rows = ta ? K : M, a_cols = ta ? M : K;
  const int b_rows = tb ? N : K, b_cols = tb ? K : N;
  const int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
  Vec A = rng_.uniform(static_cast<size_t>(a_rows) * lda);
  Vec B = rng_.uniform(static_cast<size_t>(b_rows) * ldb);
  // beta == 0 means C is not read: poison it to prove that.
  Vec C = beta == 0.0f ? poison(static_cast<size_t>(M) * ldc) : rng_.uniform(size_t(M) * ldc);
  // fp32 with K=71 terms: both sides round each partial sum; 1e-5 of the largest |C| holds.
  compare("gemm", kFp32, [&](const Ops& o) {
    Buf<float> a(o, A), b(o, B), c(o, C);
    o.gemm(ta, tb, M, N, K, 0.7f, a.get(), lda, b.get(), ldb, beta, c.get(), ldc);
    Vec h = c.host();
    Vec valid;  // padding columns are not part of C
    for (int i = 0; i < M; ++i)
      valid.insert(valid.end(), h.begin() + i * ldc, h.begin() + i * ldc + N);
    return Outputs{out("C", valid)};
  });
}

INSTANTIATE_TEST_SUITE_P(AllTransposes, Gemm,
                         ::testing::Values(GemmCase{false, false, 0.0f},
                                           GemmCase{true, false, 0.0f}, GemmCase{false, true, 0.0f},
                                           GemmCase{true, true, 0.0f}, GemmCase{false, false, 0.3f},
                                           GemmCase{true, true, 0.3f}),
                         [](const auto& info) {
                           return std::string(info.param.ta ? "T" : "N") +
                                  (info.param.tb ? "T" : "N") +
                                  (info.param.beta == 0.0f ? "_beta0" : "_beta");
                         });

TEST_F(OpTable, GemmStridedBatchedMatchesCpu) {
  const int M = 19, N = 23, K = 29, count = 3;
  const int64_t sa = M * K + 5, sb = K * N + 7, sc = M * N + 11;  // gaps between matrices
  Vec A = rng_.uniform(sa * count), B = rng_.uniform(sb * count), C = rng_.uniform(sc * count);
  compare("gemm_strided_batched", kFp32, [&](const Ops& o) {
    Buf<float> a(o, A), b(o, B), c(o, C);
    // C_i = A_i * B_i^T with A_i MxK and B_i NxK, as attention uses it.
    o.gemm_strided_batched(false, true, M, N, K, 1.0f, a.get(), K, sa, b.get(), K, sb, 0.5f,
                           c.get(), N, sc, count);
    return Outputs{out("C", c.host())};
  });
}

// --- elementwise ---

TEST_F(OpTable, AddAccumulateScaleMatchCpu) {
  const size_t n = 70001;
  Vec a = rng_.uniform(n), b = rng_.uniform(n);
  compare("add/accumulate/scale", kElementwise, [&](const Ops& o) {
    Buf<float> x(o, a), y(o, b), sum(o, poison(n)), acc(o, a), sc(o, b);
    o.add(sum.get(), x.get(), y.get(), n);
    o.accumulate(acc.get(), y.get(), n);
    o.scale(sc.get(), -1.7f, n);
    return Outputs{out("add", sum.host()), out("accumulate", acc.host()), out("scale", sc.host())};
  });
}

TEST_F(OpTable, SumSquaresMatchesCpuInDouble) {
  Vec x = rng_.uniform(1000003, -3.0f, 3.0f);
  // Both sum the same double products in different orders: ~1e-15 relative.
  compare("sum_squares", 1e-12, [&](const Ops& o) {
    Buf<float> b(o, x);
    return Outputs{{"sum", {o.sum_squares(b.get(), x.size())}}};
  });
}

TEST_F(OpTable, BiasAddAndBackwardMatchCpu) {
  const int N = 300, OC = 77;
  Vec out0 = rng_.uniform(size_t(N) * OC), bias = rng_.uniform(OC),
      dout = rng_.uniform(size_t(N) * OC);
  Vec dbias0 = rng_.uniform(OC);
  // dbias sums N=300 rows in a different order: 1e-5 of its largest magnitude.
  compare("bias_add/bias_backward", kFp32, [&](const Ops& o) {
    Buf<float> y(o, out0), b(o, bias), dy(o, dout), db(o, dbias0);
    o.bias_add(y.get(), b.get(), N, OC);
    o.bias_backward(db.get(), dy.get(), N, OC);
    return Outputs{out("out", y.host()), out("dbias", db.host())};
  });
}

TEST_F(OpTable, GeluForwardBackwardMatchCpu) {
  const size_t n = 50000;
  Vec x = rng_.uniform(n, -6.0f, 6.0f), dy = rng_.uniform(n), dx0 = rng_.uniform(n);
  // tanh: the CPU's polynomial is within ~1e-7 absolute of tanhf.
  compare("gelu", kFp32, [&](const Ops& o) {
    Buf<float> in(o, x), y(o, poison(n)), d(o, dy), dx(o, dx0);
    o.gelu_forward(y.get(), in.get(), n);
    o.gelu_backward(dx.get(), in.get(), d.get(), n);
    return Outputs{out("out", y.host()), out("dinp", dx.host())};
  });
}

TEST_F(OpTable, ReluForwardBackwardMatchCpu) {
  const size_t n = 50000;
  Vec x = rng_.uniform(n), dy = rng_.uniform(n), dx0 = rng_.uniform(n);
  compare("relu", kExact, [&](const Ops& o) {
    Buf<float> in(o, x), y(o, poison(n)), d(o, dy), dx(o, dx0);
    o.relu_forward(y.get(), in.get(), n);
    o.relu_backward(dx.get(), in.get(), d.get(), n);
    return Outputs{out("out", y.host()), out("dinp", dx.host())};
  });
}

// --- LayerNorm ---

TEST_F(OpTable, LayerNormForwardMatchesCpu) {
  const int N = 67, C = 200;
  Vec x = rng_.uniform(size_t(N) * C, -2.0f, 3.0f), w = rng_.uniform(C), b = rng_.uniform(C);
  // Row reductions over C=200 in a different order (warp-strided vs sequential).
  compare("layernorm_forward", kFp32, [&](const Ops& o) {
    Buf<float> in(o, x), W(o, w), B(o, b), y(o, poison(x.size())), mean(o, poison(N)),
        rstd(o, poison(N));
    o.layernorm_forward(y.get(), mean.get(), rstd.get(), in.get(), W.get(), B.get(), N, C);
    return Outputs{out("out", y.host()), out("mean", mean.host()), out("rstd", rstd.host())};
  });
}

TEST_F(OpTable, LayerNormBackwardMatchesCpu) {
  const int N = 67, C = 200;
  Vec x = rng_.uniform(size_t(N) * C, -2.0f, 3.0f), w = rng_.uniform(C), b = rng_.uniform(C);
  Vec dy = rng_.uniform(x.size()), dx0 = rng_.uniform(x.size()), dw0 = rng_.uniform(C),
      db0 = rng_.uniform(C);
  // mean/rstd come from the CPU forward so both backwards see the same statistics.
  Vec mean(N), rstd(N);
  {
    Vec y(x.size());
    cpu().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  }
  // dinp: two row reductions; dweight/dbias: column sums over N=67 rows.
  compare("layernorm_backward", kFp32, [&](const Ops& o) {
    Buf<float> in(o, x), W(o, w), d(o, dy), dx(o, dx0), dw(o, dw0), db(o, db0), m(o, mean),
        r(o, rstd);
    o.layernorm_backward(dx.get(), dw.get(), db.get(), d.get(), in.get(), W.get(), m.get(), r.get(),
                         N, C);
    return Outputs{out("dinp", dx.host()), out("dweight", dw.host()), out("dbias", db.host())};
  });
}

// --- attention: several head sizes (each CUDA template instance), T across tile edges, and
// each CUDA implementation forced through PTRAIN_ATTENTION (the CPU reference ignores it) ---

// Sets an environment variable for one scope (nullptr unsets it) and restores it afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) {
      old_ = old;
      had_ = true;
    }
    set(value);
  }
  ~ScopedEnv() { set(had_ ? old_.c_str() : nullptr); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  void set(const char* value) {
    if (value) {
      setenv(name_, value, 1);
    } else {
      unsetenv(name_);
    }
  }
  const char* name_;
  std::string old_;
  bool had_ = false;
};

struct AttnCase {
  int B, T, C, NH;
};

// Flash: the tiled kernels. Gemm: cuBLAS batched GEMMs over all batches at once. GemmChunked: the
// GEMM path with a 0 MiB scratch bound, so it runs one batch per chunk.
struct AttnPath {
  const char* name;
  const char* mode;        // PTRAIN_ATTENTION
  const char* scratch_mb;  // PTRAIN_ATTENTION_SCRATCH_MB, nullptr: the default
};

class Attention : public OpTable,
                  public ::testing::WithParamInterface<std::tuple<AttnCase, AttnPath>> {
 protected:
  void SetUp() override {
    OpTable::SetUp();
    if (IsSkipped()) return;
    const AttnPath& path = std::get<1>(GetParam());
    mode_ = std::make_unique<ScopedEnv>("PTRAIN_ATTENTION", path.mode);
    scratch_ = std::make_unique<ScopedEnv>("PTRAIN_ATTENTION_SCRATCH_MB", path.scratch_mb);
  }
  void TearDown() override {
    scratch_.reset();
    mode_.reset();
    OpTable::TearDown();
  }
  std::unique_ptr<ScopedEnv> mode_, scratch_;
};

TEST_P(Attention, ForwardMatchesCpu) {
  const auto [B, T, C, NH] = std::get<0>(GetParam());
  Vec qkv = rng_.uniform(size_t(B) * T * 3 * C, -2.0f, 2.0f);
  // Softmax over <= T keys with the max subtracted in a different (online) order: 1e-5.
  compare("attention_forward", kFp32, [&](const Ops& o) {
    Buf<float> x(o, qkv), y(o, poison(size_t(B) * T * C)), lse(o, poison(size_t(B) * NH * T));
    o.attention_forward(y.get(), lse.get(), x.get(), B, T, C, NH);
    return Outputs{out("out", y.host()), out("lse", lse.host())};
  });
}

TEST_P(Attention, BackwardMatchesCpu) {
  const auto [B, T, C, NH] = std::get<0>(GetParam());
  Vec qkv = rng_.uniform(size_t(B) * T * 3 * C, -2.0f, 2.0f);
  Vec dy = rng_.uniform(size_t(B) * T * C), dqkv0 = rng_.uniform(qkv.size());
  Vec y(size_t(B) * T * C), lse(size_t(B) * NH * T);
  cpu().attention_forward(y.data(), lse.data(), qkv.data(), B, T, C, NH);
  // Gradients sum T products of exp-recomputed probabilities in different orders and through
  // rowsum(dout*out); 1e-4 of the largest gradient.
  compare("attention_backward", kFp32Long, [&](const Ops& o) {
    Buf<float> x(o, qkv), d(o, dy), yy(o, y), l(o, lse), dx(o, dqkv0);
    o.attention_backward(dx.get(), d.get(), x.get(), yy.get(), l.get(), B, T, C, NH);
    return Outputs{out("dqkv", dx.host())};
  });
}

INSTANTIATE_TEST_SUITE_P(
    HeadSizes, Attention,
    ::testing::Combine(::testing::Values(AttnCase{2, 45, 48, 3},    // HS 16, T crosses tiles
                                         AttnCase{1, 130, 128, 2},  // HS 64 (GPT-2)
                                         AttnCase{2, 33, 192, 2},   // HS 96, masked lanes
                                         AttnCase{1, 17, 256, 1},   // HS 256, large smem
                                         AttnCase{3, 1, 32, 4},     // T = 1
                                         AttnCase{3, 67, 192, 3}),  // HS 64, B and T odd
                       ::testing::Values(AttnPath{"Flash", "flash", nullptr},
                                         AttnPath{"Gemm", "gemm", nullptr},
                                         AttnPath{"GemmChunked", "gemm", "0"})),
    [](const auto& info) {
      const auto& p = std::get<0>(info.param);
      return std::string(std::get<1>(info.param).name) + "_B" + std::to_string(p.B) + "_T" +
             std::to_string(p.T) + "_C" + std::to_string(p.C) + "_NH" + std::to_string(p.NH);
    });

// The default choice (auto) must agree with the reference too: a shape this small takes the GEMM
// path, and with a 0 MiB scratch bound it falls back to the flash kernels.
TEST_F(OpTable, AttentionAutoPathMatchesCpu) {
  const int B = 2, T = 70, C = 128, NH = 2;
  Vec qkv = rng_.uniform(size_t(B) * T * 3 * C, -2.0f, 2.0f);
  Vec dy = rng_.uniform(size_t(B) * T * C), dqkv0 = rng_.uniform(qkv.size());
  Vec y(size_t(B) * T * C), lse(size_t(B) * NH * T);
  cpu().attention_forward(y.data(), lse.data(), qkv.data(), B, T, C, NH);
  ScopedEnv mode("PTRAIN_ATTENTION", "auto");
  for (const char* scratch_mb : {static_cast<const char*>(nullptr), "0"}) {
    SCOPED_TRACE(scratch_mb ? "PTRAIN_ATTENTION_SCRATCH_MB=0 (flash)" : "default bound (gemm)");
    ScopedEnv bound("PTRAIN_ATTENTION_SCRATCH_MB", scratch_mb);
    compare("attention_forward", kFp32, [&](const Ops& o) {
      Buf<float> x(o, qkv), yy(o, poison(size_t(B) * T * C)), l(o, poison(size_t(B) * NH * T));
      o.attention_forward(yy.get(), l.get(), x.get(), B, T, C, NH);
      return Outputs{out("out", yy.host()), out("lse", l.host())};
    });
    compare("attention_backward", kFp32Long, [&](const Ops& o) {
      Buf<float> x(o, qkv), d(o, dy), yy(o, y), l(o, lse), dx(o, dqkv0);
      o.attention_backward(dx.get(), d.get(), x.get(), yy.get(), l.get(), B, T, C, NH);
      return Outputs{out("dqkv", dx.host())};
    });
  }
}

// --- embeddings ---

TEST_F(OpTable, EmbeddingForwardMatchesCpu) {
  const int B = 3, T = 21, C = 40, V = 50;
  IVec tok = rng_.ints(B * T, 0, V - 1);
  Vec wte = rng_.uniform(size_t(V) * C), wpe = rng_.uniform(size_t(T) * C);
  compare("embedding_forward", kElementwise, [&](const Ops& o) {
    Buf<int32_t> t(o, tok);
    Buf<float> e(o, wte), p(o, wpe), y(o, poison(size_t(B) * T * C)),
        y2(o, poison(size_t(B) * T * C));
    o.embedding_forward(y.get(), t.get(), e.get(), p.get(), B, T, C);
    o.embedding_forward(y2.get(), t.get(), e.get(), nullptr, B, T, C);
    return Outputs{out("out", y.host()), out("out_no_wpe", y2.host())};
  });
}

TEST_F(OpTable, EmbeddingBackwardIsDeterministicAndMatchesCpu) {
  const int B = 4, T = 64, C = 300, V = 20;  // few tokens: many repeats per row
  IVec tok = rng_.ints(B * T, 0, V - 1);
  Vec dy = rng_.uniform(size_t(B) * T * C), dwte0 = rng_.uniform(size_t(V) * C),
      dwpe0 = rng_.uniform(size_t(T) * C);
  // Both add rows in position order: agreement to rounding of the same sums.
  auto run = [&](const Ops& o) {
    Buf<int32_t> t(o, tok);
    Buf<float> d(o, dy), dwte(o, dwte0), dwpe(o, dwpe0);
    o.embedding_backward(dwte.get(), dwpe.get(), d.get(), t.get(), B, T, C);
    return Outputs{out("dwte", dwte.host()), out("dwpe", dwpe.host())};
  };
  compare("embedding_backward", kElementwise, run);
  Outputs first = run(dev()), second = run(dev());
  expect_close("embedding_backward run-to-run", first, second, kExact);
}

// --- cross-entropy ---

TEST_F(OpTable, CrossEntropyForwardBackwardMatchCpu) {
  const int N = 37, V = 1001;
  Vec logits = rng_.uniform(size_t(N) * V, -8.0f, 8.0f);
  IVec targets = rng_.ints(N, 0, V - 1);
  targets[5] = -1;  // ignored row: loss 0, gradient 0
  // Row sums of V=1001 exponentials in a different order: 1e-5.
  compare("crossentropy", kFp32, [&](const Ops& o) {
    Buf<float> z(o, logits), loss(o, poison(N)), lse(o, poison(N)), dz(o, poison(logits.size()));
    Buf<int32_t> t(o, targets);
    o.crossentropy_forward(loss.get(), lse.get(), z.get(), t.get(), N, V);
    o.crossentropy_backward(dz.get(), z.get(), lse.get(), t.get(), 1.0f / N, N, V);
    return Outputs{out("losses", loss.host()), out("lse", lse.host()), out("dlogits", dz.host())};
  });
}

TEST_F(OpTable, CrossEntropyBackwardWorksInPlace) {
  const int N = 9, V = 517;
  Vec logits = rng_.uniform(size_t(N) * V, -4.0f, 4.0f);
  IVec targets = rng_.ints(N, 0, V - 1);
  compare("crossentropy_backward in place", kFp32, [&](const Ops& o) {
    Buf<float> z(o, logits), loss(o, poison(N)), lse(o, poison(N));
    Buf<int32_t> t(o, targets);
    o.crossentropy_forward(loss.get(), lse.get(), z.get(), t.get(), N, V);
    o.crossentropy_backward(z.get(), z.get(), lse.get(), t.get(), 0.5f, N, V);
    return Outputs{out("dlogits", z.host())};
  });
}

// --- optimizers ---

TEST_F(OpTable, AdamWMatchesCpuOverSeveralSteps) {
  const size_t n = 20011;
  Vec p = rng_.uniform(n), m = rng_.uniform(n, -0.1f, 0.1f), v = rng_.uniform(n, 0.0f, 0.1f);
  std::vector<Vec> grads = {rng_.uniform(n), rng_.uniform(n), rng_.uniform(n)};
  // Same arithmetic order on both; sqrt/division rounding only.
  compare("adamw_update", kElementwise, [&](const Ops& o) {
    Buf<float> P(o, p), M(o, m), V(o, v);
    for (int s = 0; s < 3; ++s) {
      Buf<float> g(o, grads[s]);
      o.adamw_update(P.get(), g.get(), M.get(), V.get(), n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, s + 1);
    }
    return Outputs{out("params", P.host()), out("m", M.host()), out("v", V.host())};
  });
}

TEST_F(OpTable, SgdMomentumAndNesterovMatchCpu) {
  const size_t n = 20011;
  Vec p = rng_.uniform(n), g1 = rng_.uniform(n), g2 = rng_.uniform(n);
  for (bool nesterov : {false, true}) {
    compare(nesterov ? "sgd_update nesterov" : "sgd_update", kElementwise, [&](const Ops& o) {
      Buf<float> P(o, p), buf(o, poison(n)), a(o, g1), b(o, g2);  // first step writes buf
      o.sgd_update(P.get(), a.get(), buf.get(), n, 0.1f, 0.9f, nesterov, 0.01f, true);
      o.sgd_update(P.get(), b.get(), buf.get(), n, 0.1f, 0.9f, nesterov, 0.01f, false);
      return Outputs{out("params", P.host()), out("momentum", buf.host())};
    });
  }
}

// --- bf16 (device-only entries; the CPU reference is fp32 on bf16-rounded inputs) ---

TEST_F(OpTable, Bf16ConversionsRoundToNearestEven) {
  if (!dev().f32_to_bf16) GTEST_SKIP() << dev().name << " has no bf16 entries";
  Vec x = rng_.uniform(10001, -100.0f, 100.0f);
  x[0] = 1.00390625f;  // exactly halfway between two bf16 values: rounds to even (1.0)
  Buf<float> in(dev(), x), back(dev(), poison(x.size()));
  Buf<uint16_t> h(dev(), std::vector<uint16_t>(x.size(), 0xffff));
  dev().f32_to_bf16(h.get(), in.get(), x.size());
  dev().bf16_to_f32(back.get(), h.get(), x.size());
  EXPECT_EQ(h.host(), to_bf16_bits(x));
  expect_close("bf16 round trip", {out("x", rounded(x))}, {out("x", back.host())}, kExact);
  EXPECT_EQ(back.host()[0], 1.0f);
}

TEST_F(OpTable, GemmBf16MatchesFp32WithinBf16Bounds) {
  if (!dev().gemm_bf16) GTEST_SKIP() << dev().name << " has no bf16 entries";
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const int M = 64, N = 48, K = 256;
      Vec A = rng_.uniform(size_t(M) * K), B = rng_.uniform(size_t(K) * N);
      const int lda = ta ? M : K, ldb = tb ? K : N;
      Buf<uint16_t> a(dev(), to_bf16_bits(A)), b(dev(), to_bf16_bits(B));
      Buf<float> c(dev(), poison(size_t(M) * N));
      dev().gemm_bf16(ta, tb, M, N, K, 1.0f, a.get(), lda, b.get(), ldb, 0.0f, c.get(), N);
      Outputs got{out("C", c.host())};
      // Against the exact-input reference: bf16 products are exact in fp32, so only the
      // accumulation order differs (fp32 bound).
      Vec ref_r(size_t(M) * N), ref_f(size_t(M) * N);
      Vec Ar = rounded(A), Br = rounded(B);
      cpu().gemm(ta, tb, M, N, K, 1.0f, Ar.data(), lda, Br.data(), ldb, 0.0f, ref_r.data(), N);
      expect_close("gemm_bf16 vs fp32 on rounded inputs", {out("C", ref_r)}, got, kFp32);
      // Against the fp32 GEMM of the unrounded inputs: bf16's 8-bit mantissa, 1e-2.
      cpu().gemm(ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, ref_f.data(), N);
      expect_close("gemm_bf16 vs fp32", {out("C", ref_f)}, got, kBf16);
    }
  }
}

TEST_F(OpTable, GemmBf16StridedBatchedMatchesFp32) {
  if (!dev().gemm_bf16_strided_batched) GTEST_SKIP() << dev().name << " has no bf16 entries";
  const int M = 16, N = 24, K = 40, count = 4;
  const int64_t sa = M * K, sb = N * K, sc = M * N;
  Vec A = rounded(rng_.uniform(sa * count)), B = rounded(rng_.uniform(sb * count));
  Vec C0 = rng_.uniform(sc * count);
  Buf<uint16_t> a(dev(), to_bf16_bits(A)), b(dev(), to_bf16_bits(B));
  Buf<float> c(dev(), C0);
  dev().gemm_bf16_strided_batched(false, true, M, N, K, 0.5f, a.get(), K, sa, b.get(), K, sb, 1.0f,
                                  c.get(), N, sc, count);
  Vec ref = C0;
  cpu().gemm_strided_batched(false, true, M, N, K, 0.5f, A.data(), K, sa, B.data(), K, sb, 1.0f,
                             ref.data(), N, sc, count);
  expect_close("gemm_bf16_strided_batched", {out("C", ref)}, {out("C", c.host())}, kFp32);
}

// --- perf mode (PTRAIN_OPS_PERF=1): figures for scripts/gpu-check.sh; asserts only sanity ---

class Perf : public OpTable {
 protected:
  void SetUp() override {
    OpTable::SetUp();
    if (IsSkipped()) return;
    if (!env_flag("PTRAIN_OPS_PERF") || dev().device != Device::kCuda) {
      GTEST_SKIP() << "set PTRAIN_OPS_PERF=1 (and have a GPU) for the perf cases";
    }
  }
  // Mean seconds of `f` over `iters` runs after `warmup` runs.
  template <class F>
  double time(F f, int warmup = 3, int iters = 10) {
    for (int i = 0; i < warmup; ++i) f();
    dev().synchronize();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) f();
    dev().synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  }
};

TEST_F(Perf, GemmRates) {
  for (int n : {4096, 8192}) {
    Vec A = rng_.uniform(size_t(n) * n);
    Buf<float> a(dev(), A), c(dev(), Vec(size_t(n) * n));
    Buf<uint16_t> ab(dev(), to_bf16_bits(A));
    double flop = 2.0 * n * n * double(n);
    double t_bf16 = time([&] {
      dev().gemm_bf16(false, true, n, n, n, 1.0f, ab.get(), n, ab.get(), n, 0.0f, c.get(), n);
    });
    std::printf("perf: gemm_bf16 %dx%dx%d: %.3f ms, %.1f TFLOP/s\n", n, n, n, t_bf16 * 1e3,
                flop / t_bf16 / 1e12);
    double t_f32 = time(
        [&] { dev().gemm(false, true, n, n, n, 1.0f, a.get(), n, a.get(), n, 0.0f, c.get(), n); },
        1, 3);
    std::printf("perf: gemm_fp32 %dx%dx%d: %.3f ms, %.1f TFLOP/s\n", n, n, n, t_f32 * 1e3,
                flop / t_f32 / 1e12);
    EXPECT_TRUE(std::isfinite(c.host()[0]));
  }
}

TEST_F(Perf, GptLayerKernels) {
  const int B = 8, T = 1024, C = 768, NH = 12, V = 50257, N = B * T;
  Buf<float> qkv(dev(), rng_.uniform(size_t(N) * 3 * C)), y(dev(), Vec(size_t(N) * C)),
      lse(dev(), Vec(size_t(B) * NH * T)), dy(dev(), rng_.uniform(size_t(N) * C)),
      dqkv(dev(), Vec(size_t(N) * 3 * C));
  double hs = C / NH;
  double attn_flop = 4.0 * B * NH * (T * (T + 1) / 2.0) * hs;  // QK^T and PV, causal half
  for (const char* path : {"flash", "gemm"}) {
    ScopedEnv mode("PTRAIN_ATTENTION", path);
    double tf = time([&] { dev().attention_forward(y.get(), lse.get(), qkv.get(), B, T, C, NH); });
    double tb = time([&] {
      dev().attention_backward(dqkv.get(), dy.get(), qkv.get(), y.get(), lse.get(), B, T, C, NH);
    });
    std::printf("perf: attention_forward (%s) B%d T%d C%d NH%d: %.3f ms, %.1f TFLOP/s\n", path, B,
                T, C, NH, tf * 1e3, attn_flop / tf / 1e12);
    std::printf("perf: attention_backward (%s): %.3f ms, %.1f TFLOP/s\n", path, tb * 1e3,
                2.5 * attn_flop / tb / 1e12);
  }
  Buf<float> x(dev(), rng_.uniform(size_t(N) * C)), w(dev(), rng_.uniform(C)),
      b(dev(), rng_.uniform(C)), mean(dev(), Vec(N)), rstd(dev(), Vec(N)), dw(dev(), Vec(C)),
      db(dev(), Vec(C));
  double tl = time([&] {
    dev().layernorm_forward(y.get(), mean.get(), rstd.get(), x.get(), w.get(), b.get(), N, C);
  });
  double tlb = time([&] {
    dev().layernorm_backward(dqkv.get(), dw.get(), db.get(), dy.get(), x.get(), w.get(), mean.get(),
                             rstd.get(), N, C);
  });
  std::printf("perf: layernorm N%d C%d: forward %.3f ms (%.0f GB/s), backward %.3f ms\n", N, C,
              tl * 1e3, 2.0 * N * C * 4 / tl / 1e9, tlb * 1e3);
  Buf<float> logits(dev(), rng_.uniform(size_t(N) * V)), losses(dev(), Vec(N)), clse(dev(), Vec(N));
  Buf<int32_t> targets(dev(), rng_.ints(N, 0, V - 1));
  double tc = time([&] {
    dev().crossentropy_forward(losses.get(), clse.get(), logits.get(), targets.get(), N, V);
  });
  std::printf("perf: crossentropy_forward N%d V%d: %.3f ms (%.0f GB/s)\n", N, V, tc * 1e3,
              double(N) * V * 4 / tc / 1e9);
  EXPECT_TRUE(std::isfinite(losses.host()[0]));
}

}  // namespace
}  // namespace ptrain::tensor
