// CPU GEMMs through oneDNN's matmul or OpenBLAS's sgemm. oneDNN picks its kernels for the
// machine by itself (AVX-512, bf16 dot products), while OpenBLAS may be pinned to older ones by
// OPENBLAS_CORETYPE. A matmul primitive is created once per (shape, strides, alpha, beta, dtype,
// threads) in a process-wide cache; each thread executes it on its own stream and scratchpad, so
// rank threads and the pool's workers can run GEMMs at the same time.
#include "cpu_gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "cpu_dnnl.h"
#include "cpu_parallel.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "ptrain/core/error.h"
#include "ptrain/tensor/cpu_kernels.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::tensor::cpu {
namespace {

using dt = dnnl::memory::data_type;

struct Key {
  dt type;
  bool ta, tb;
  int M, N, K, lda, ldb, ldc, count, threads;
  int64_t sa, sb, sc;
  float alpha, beta;
  bool operator==(const Key& o) const {
    return type == o.type && ta == o.ta && tb == o.tb && M == o.M && N == o.N && K == o.K &&
           lda == o.lda && ldb == o.ldb && ldc == o.ldc && count == o.count &&
           threads == o.threads && sa == o.sa && sb == o.sb && sc == o.sc &&
           std::memcmp(&alpha, &o.alpha, sizeof alpha) == 0 &&
           std::memcmp(&beta, &o.beta, sizeof beta) == 0;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    uint32_t a, b;
    std::memcpy(&a, &k.alpha, 4);
    std::memcpy(&b, &k.beta, 4);
    for (uint64_t v : {uint64_t(k.type), uint64_t(k.ta) | uint64_t(k.tb) << 1, uint64_t(k.M),
                       uint64_t(k.N), uint64_t(k.K), uint64_t(k.lda), uint64_t(k.ldb),
                       uint64_t(k.ldc), uint64_t(k.count), uint64_t(k.threads), uint64_t(k.sa),
                       uint64_t(k.sb), uint64_t(k.sc), uint64_t(a), uint64_t(b)})
      mix(v);
    return size_t(h);
  }
};

// A created primitive; immutable, shared by all threads.
struct Primitive {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul prim;
};

dnnl::engine& engine() {
  return dnnl_engine();
}

std::shared_ptr<const Primitive> create(const Key& k) {
  using dims = dnnl::memory::dims;
  const bool batched = k.count > 1;
  // Stored A is MxK (KxM when transposed) with row stride lda: element (m, k) of op(A) lies at
  // m*lda + k, or k*lda + m.
  dims a_strides = k.ta ? dims{1, k.lda} : dims{k.lda, 1};
  dims b_strides = k.tb ? dims{1, k.ldb} : dims{k.ldb, 1};
  dims c_strides{k.ldc, 1};
  dims a_dims{k.M, k.K}, b_dims{k.K, k.N}, c_dims{k.M, k.N};
  if (batched) {
    a_dims.insert(a_dims.begin(), k.count);
    b_dims.insert(b_dims.begin(), k.count);
    c_dims.insert(c_dims.begin(), k.count);
    a_strides.insert(a_strides.begin(), k.sa);
    b_strides.insert(b_strides.begin(), k.sb);
    c_strides.insert(c_strides.begin(), k.sc);
  }
  dnnl::memory::desc a(a_dims, k.type, a_strides), b(b_dims, k.type, b_strides),
      c(c_dims, dt::f32, c_strides);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (k.alpha != 1.0f) attr.set_output_scales(0, {k.alpha});
  if (k.beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(k.beta);
    attr.set_post_ops(po);
  }
  set_omp_threads(k.threads);
  try {
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine());
    auto p = std::make_shared<Primitive>(Primitive{pd, dnnl::matmul(pd)});
    return p;
  } catch (const dnnl::error& e) {
    PTRAIN_CHECK(false, "oneDNN matmul {}x{}x{} (trans {} {}, count {}): {}", k.M, k.N, k.K, k.ta,
                 k.tb, k.count, e.what());
  }
  return nullptr;
}

using Cache = PrimitiveCache<Key, Primitive, KeyHash, create>;

Cache& cache() {
  static Cache c;
  return c;
}

// What one thread keeps per primitive: memory objects whose data handles are swapped per call.
struct Bound {
  std::shared_ptr<const Primitive> p;
  dnnl::memory a, b, c, scratch;
};

struct ThreadState {
  std::unique_ptr<dnnl::stream> stream;
  std::unordered_map<Key, Bound, KeyHash> bound;
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
  ~ThreadState() { std::free(scratch); }
  void* scratchpad(size_t bytes) {
    if (bytes > scratch_bytes) {
      std::free(scratch);
      scratch_bytes = (bytes + 4095) / 4096 * 4096;
      scratch = std::aligned_alloc(64, scratch_bytes);
      if (!scratch)
        throw IoError(fmt::format("out of host memory for a {} byte scratchpad", bytes));
    }
    return scratch;
  }
};

ThreadState& thread_state() {
  thread_local ThreadState s;
  return s;
}

// C = beta * C for the degenerate K == 0 product.
void scale_c(float beta, float* C, int M, int N, int ldc, int64_t stride_c, int count) {
  for (int i = 0; i < count; ++i) {
    for (int m = 0; m < M; ++m) {
      float* row = C + i * stride_c + int64_t(m) * ldc;
      for (int n = 0; n < N; ++n) row[n] = beta == 0.0f ? 0.0f : beta * row[n];
    }
  }
}

// --- recording the shapes that run (cpu_gemm_record) ---
std::atomic<bool> g_recording{false};
std::mutex g_record_mu;
std::unordered_map<Key, int64_t, KeyHash> g_recorded;

void record(dt type, bool ta, bool tb, int M, int N, int K, float alpha, int lda, int64_t sa,
            int ldb, int64_t sb, float beta, int ldc, int64_t sc, int count) {
  if (!g_recording.load(std::memory_order_relaxed)) return;
  Key k{type, ta, tb, M, N, K, lda, ldb, ldc, count, 0, sa, sb, sc, alpha, beta};
  std::lock_guard<std::mutex> lock(g_record_mu);
  ++g_recorded[k];
}

void run_dnnl(dt type, bool ta, bool tb, int M, int N, int K, float alpha, const void* A, int lda,
              int64_t sa, const void* B, int ldb, int64_t sb, float beta, float* C, int ldc,
              int64_t sc, int count) {
  if (count <= 0 || M <= 0 || N <= 0) return;
  if (K <= 0) {
    scale_c(beta, C, M, N, ldc, sc, count);
    return;
  }
  // A batch is one primitive only when its matrices are laid out with positive strides; a shared
  // operand (stride 0) runs as a loop over the single GEMM.
  if (count > 1 && (sa <= 0 || sb <= 0 || sc <= 0)) {
    const size_t esize = type == dt::f32 ? 4 : 2;
    for (int i = 0; i < count; ++i) {
      run_dnnl(type, ta, tb, M, N, K, alpha, static_cast<const char*>(A) + i * sa * esize, lda, 0,
               static_cast<const char*>(B) + i * sb * esize, ldb, 0, beta, C + i * sc, ldc, 0, 1);
    }
    return;
  }
  const int threads = parallel_threads(int64_t(1) << 40, 1);  // 1 inside a parallel region
  Key k{type,
        ta,
        tb,
        M,
        N,
        K,
        lda,
        ldb,
        ldc,
        count,
        threads,
        count > 1 ? sa : 0,
        count > 1 ? sb : 0,
        count > 1 ? sc : 0,
        alpha,
        beta};
  ThreadState& ts = thread_state();
  auto it = ts.bound.find(k);
  if (it == ts.bound.end()) {
    Bound b;
    b.p = cache().get(k);
    const auto& pd = b.p->pd;
    b.a = dnnl::memory(pd.src_desc(), engine(), DNNL_MEMORY_NONE);
    b.b = dnnl::memory(pd.weights_desc(), engine(), DNNL_MEMORY_NONE);
    b.c = dnnl::memory(pd.dst_desc(), engine(), DNNL_MEMORY_NONE);
    b.scratch = dnnl::memory(pd.scratchpad_desc(), engine(), DNNL_MEMORY_NONE);
    it = ts.bound.emplace(k, std::move(b)).first;
  }
  if (!ts.stream) ts.stream = std::make_unique<dnnl::stream>(engine());
  Bound& b = it->second;
  b.a.set_data_handle(const_cast<void*>(A));
  b.b.set_data_handle(const_cast<void*>(B));
  b.c.set_data_handle(C);
  b.scratch.set_data_handle(
      ts.scratchpad(std::max<size_t>(b.p->pd.scratchpad_desc().get_size(), 1)));
  set_omp_threads(threads);
  b.p->prim.execute(*ts.stream, {{DNNL_ARG_SRC, b.a},
                                 {DNNL_ARG_WEIGHTS, b.b},
                                 {DNNL_ARG_DST, b.c},
                                 {DNNL_ARG_SCRATCHPAD, b.scratch}});
  ts.stream->wait();
}

unsigned effective_isa() {
  static const unsigned isa = unsigned(dnnl::get_effective_cpu_isa());
  return isa;
}

}  // namespace

dnnl::engine& dnnl_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

void set_omp_threads(int threads) {
  if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
}

DnnlBuffer::~DnnlBuffer() {
  std::free(p_);
}

void* DnnlBuffer::get(size_t bytes) {
  bytes = std::max<size_t>(bytes, 64);
  if (bytes > size_) {
    std::free(p_);
    size_ = (bytes + 4095) / 4096 * 4096;
    p_ = std::aligned_alloc(64, size_);
    if (!p_) {
      size_ = 0;
      throw IoError(fmt::format("out of host memory for a {} byte oneDNN buffer", bytes));
    }
  }
  return p_;
}

bool dnnl_has_avx512() {
  const unsigned bits = dnnl_cpu_isa_avx512_core;
  return (effective_isa() & bits) == bits;
}

bool dnnl_has_bf16() {
  const unsigned bits = dnnl_cpu_isa_avx512_core_bf16;
  return (effective_isa() & bits) == bits;
}

std::string dnnl_isa_name() {
  switch (effective_isa()) {
    case dnnl_cpu_isa_sse41:
      return "sse41";
    case dnnl_cpu_isa_avx:
      return "avx";
    case dnnl_cpu_isa_avx2:
      return "avx2";
    case dnnl_cpu_isa_avx512_mic:
      return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops:
      return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core:
      return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx:
      return "avx512_core_amx";
    case dnnl_cpu_isa_avx2_vnni:
      return "avx2_vnni";
    default:
      return fmt::format("isa 0x{:x}", effective_isa());
  }
}

std::string dnnl_version_string() {
  const dnnl_version_t* v = dnnl_version();
  return fmt::format("{}.{}.{}", v->major, v->minor, v->patch);
}

std::string openblas_core_name() {
  const char* name = openblas_get_corename();
  return name ? name : "unknown";
}

bool openblas_has_avx512() {
  static const bool has = [] {
    std::string core = openblas_core_name();
    std::transform(core.begin(), core.end(), core.begin(), ::tolower);
    return core == "skylakex" || core == "cooperlake" || core == "sapphirerapids";
  }();
  return has;
}

size_t dnnl_cached_primitives() {
  return cache().size();
}

GemmBackend choose_gemm_backend(bool trans_a, bool trans_b, int M, int N, int K) {
  (void)M, (void)N, (void)K;
  switch (cpu_gemm_mode()) {
    case CpuGemm::kOpenBlas:
      return GemmBackend::kOpenBlas;
    case CpuGemm::kDnnl:
      return GemmBackend::kDnnl;
    case CpuGemm::kAuto:
      break;
  }
  // Measured on the bench GPT's shapes (docs/ARCHITECTURE.md §CPU kernels): oneDNN's AVX-512
  // kernels beat OpenBLAS's AVX2 (Haswell) ones by about 2x on every shape; against OpenBLAS's
  // own AVX-512 kernels they are level on A^T.B (the weight gradients), where OpenBLAS stays.
  if (!dnnl_has_avx512()) return GemmBackend::kOpenBlas;
  if (openblas_has_avx512() && trans_a && !trans_b) return GemmBackend::kOpenBlas;
  return GemmBackend::kDnnl;
}

void gemm_f32_openblas(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                       int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_f32_dnnl(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                   int lda, int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta,
                   float* C, int ldc, int64_t stride_c, int count) {
  run_dnnl(dt::f32, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
           ldc, stride_c, count);
}

void gemm_bf16_dnnl(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
                    int lda, int64_t stride_a, const uint16_t* B, int ldb, int64_t stride_b,
                    float beta, float* C, int ldc, int64_t stride_c, int count) {
  run_dnnl(dt::bf16, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
           ldc, stride_c, count);
}

void record_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, int lda,
                 int64_t stride_a, int ldb, int64_t stride_b, float beta, int ldc, int64_t stride_c,
                 int count) {
  record(dt::bf16, trans_a, trans_b, M, N, K, alpha, lda, stride_a, ldb, stride_b, beta, ldc,
         stride_c, count);
}

void gemm_f32(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
              int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta, float* C,
              int ldc, int64_t stride_c, int count) {
  record(dt::f32, trans_a, trans_b, M, N, K, alpha, lda, stride_a, ldb, stride_b, beta, ldc,
         stride_c, count);
  if (choose_gemm_backend(trans_a, trans_b, M, N, K) == GemmBackend::kDnnl) {
    gemm_f32_dnnl(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
                  ldc, stride_c, count);
    return;
  }
  for (int i = 0; i < count; ++i) {
    gemm_f32_openblas(trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda, B + i * stride_b,
                      ldb, beta, C + i * stride_c, ldc);
  }
}

}  // namespace ptrain::tensor::cpu

namespace ptrain::tensor {

void cpu_gemm_record(bool on) {
  std::lock_guard<std::mutex> lock(cpu::g_record_mu);
  if (on) cpu::g_recorded.clear();
  cpu::g_recording.store(on);
}

std::vector<CpuGemmShape> cpu_gemm_recorded() {
  std::vector<CpuGemmShape> out;
  {
    std::lock_guard<std::mutex> lock(cpu::g_record_mu);
    for (const auto& [k, calls] : cpu::g_recorded) {
      CpuGemmShape s;
      s.bf16 = k.type == cpu::dt::bf16;
      s.trans_a = k.ta;
      s.trans_b = k.tb;
      s.M = k.M, s.N = k.N, s.K = k.K, s.lda = k.lda, s.ldb = k.ldb, s.ldc = k.ldc;
      s.count = k.count;
      s.stride_a = k.sa, s.stride_b = k.sb, s.stride_c = k.sc;
      s.alpha = k.alpha, s.beta = k.beta;
      s.calls = calls;
      out.push_back(s);
    }
  }
  std::sort(out.begin(), out.end(), [](const CpuGemmShape& a, const CpuGemmShape& b) {
    return a.flops() * a.calls > b.flops() * b.calls;
  });
  return out;
}

const char* cpu_gemm_auto_choice(bool trans_a, bool trans_b, int M, int N, int K) {
  const CpuGemm saved = cpu_gemm_mode();
  set_cpu_gemm(CpuGemm::kAuto);
  const cpu::GemmBackend b = cpu::choose_gemm_backend(trans_a, trans_b, M, N, K);
  set_cpu_gemm(saved);
  return b == cpu::GemmBackend::kDnnl ? "dnnl" : "openblas";
}

}  // namespace ptrain::tensor
