// Batch normalization and pooling on oneDNN's primitives (cpu_bn_pool.h), on plain NCHW fp32.
// Max pooling keeps its argmax as oneDNN's workspace does (u8 or s32, the position within the
// window counted from its padded corner, kh * KW + kw, in the output's layout); the interface
// speaks plane indices, so forward converts the workspace to them and backward back.
#include "ptrain/tensor/cpu_bn_pool.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "cpu_dnnl.h"
#include "cpu_gemm.h"
#include "cpu_parallel.h"
#include "ptrain/core/error.h"

namespace ptrain::tensor {

bool CpuBnDims::operator==(const CpuBnDims& o) const {
  return N == o.N && C == o.C && HW == o.HW && eps == o.eps;
}

bool CpuPoolDims::operator==(const CpuPoolDims& o) const {
  return kind == o.kind && N == o.N && C == o.C && H == o.H && W == o.W && KH == o.KH &&
         KW == o.KW && SH == o.SH && SW == o.SW && PH == o.PH && PW == o.PW;
}

const char* cpu_path_name(CpuPath mode) {
  switch (mode) {
    case CpuPath::kNaive:
      return "naive";
    case CpuPath::kDnnl:
      return "dnnl";
    default:
      return "auto";
  }
}

const char* bn_pool_op_name(BnPoolOp op) {
  switch (op) {
    case BnPoolOp::kBnTrainForward:
      return "batch norm forward (train)";
    case BnPoolOp::kBnNormalize:
      return "batch norm normalize (eval)";
    case BnPoolOp::kBnBackward:
      return "batch norm backward";
    case BnPoolOp::kMaxPoolForward:
      return "max pool forward";
    case BnPoolOp::kMaxPoolBackward:
      return "max pool backward";
    case BnPoolOp::kAvgPoolForward:
      return "avg pool forward";
    default:
      return "avg pool backward";
  }
}

namespace cpu {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// --- the modes (PTRAIN_CPU_BN, PTRAIN_CPU_POOL) ---
CpuPath path_from_env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v || std::strcmp(v, "auto") == 0) return CpuPath::kAuto;
  if (std::strcmp(v, "naive") == 0) return CpuPath::kNaive;
  if (std::strcmp(v, "dnnl") == 0) return CpuPath::kDnnl;
  throw ConfigError(fmt::format("{}={} is not auto, naive or dnnl", name, v),
                    fmt::format("unset {}, or set it to auto, naive or dnnl", name));
}

// -1 until the environment has been read.
std::atomic<int> g_bn{-1}, g_pool{-1};

CpuPath mode_of(std::atomic<int>& slot, const char* env) {
  int m = slot.load();
  if (m < 0) {
    m = int(path_from_env(env));
    int unset = -1;
    if (!slot.compare_exchange_strong(unset, m)) m = unset;
  }
  return CpuPath(m);
}

// --- primitives ---
enum class Pass { kBnTrain, kBnInfer, kBnBackward, kBnBackwardGlobal, kPoolForward, kPoolBackward };

struct Key {
  Pass pass;
  CpuBnDims bn;      // batch norm passes
  CpuPoolDims pool;  // pooling passes
  int threads;
  bool operator==(const Key& o) const {
    return pass == o.pass && bn == o.bn && pool == o.pool && threads == o.threads;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    uint32_t eps;
    std::memcpy(&eps, &k.bn.eps, sizeof eps);
    for (uint32_t v :
         {uint32_t(k.pass), uint32_t(k.bn.N), uint32_t(k.bn.C), uint32_t(k.bn.HW), eps,
          uint32_t(k.pool.kind), uint32_t(k.pool.N), uint32_t(k.pool.C), uint32_t(k.pool.H),
          uint32_t(k.pool.W), uint32_t(k.pool.KH), uint32_t(k.pool.KW), uint32_t(k.pool.SH),
          uint32_t(k.pool.SW), uint32_t(k.pool.PH), uint32_t(k.pool.PW), uint32_t(k.threads)})
      h = (h ^ v) * 1099511628211ull;
    return size_t(h);
  }
};

// A created pass; immutable, shared by all threads.
struct Prim {
  dnnl::primitive prim;
  dnnl::memory::desc scratch;
  dnnl::memory::desc ws;  // max pooling's workspace (zero-sized otherwise)
  std::string impl;
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::memory::desc bn_data(const CpuBnDims& d) {
  return dnnl::memory::desc({d.N, d.C, 1, d.HW}, dt::f32, tag::nchw);
}

template <typename PD>
void fill(Prim& p, const PD& pd) {
  p.scratch = pd.scratchpad_desc();
  p.impl = pd.impl_info_str();
}

void create_bn(const Key& k, Prim& p) {
  using flags = dnnl::normalization_flags;
  const CpuBnDims& d = k.bn;
  const dnnl::engine& eng = dnnl_engine();
  const auto attr = user_scratchpad();
  const auto data = bn_data(d);
  const flags affine = flags::use_scale | flags::use_shift;
  const bool global = k.pass == Pass::kBnInfer || k.pass == Pass::kBnBackwardGlobal;
  const flags f = global ? affine | flags::use_global_stats : affine;
  const auto prop = k.pass == Pass::kBnInfer ? dnnl::prop_kind::forward_inference
                                             : dnnl::prop_kind::forward_training;
  dnnl::batch_normalization_forward::primitive_desc fwd(
      dnnl::batch_normalization_forward::desc(prop, data, d.eps, f), attr, eng);
  if (k.pass == Pass::kBnTrain || k.pass == Pass::kBnInfer) {
    p.prim = dnnl::batch_normalization_forward(fwd);
    fill(p, fwd);
    return;
  }
  dnnl::batch_normalization_backward::primitive_desc bwd(
      dnnl::batch_normalization_backward::desc(dnnl::prop_kind::backward, data, data, d.eps, f),
      attr, eng, fwd);
  p.prim = dnnl::batch_normalization_backward(bwd);
  fill(p, bwd);
}

void create_pool(const Key& k, Prim& p) {
  using dims = dnnl::memory::dims;
  const CpuPoolDims& d = k.pool;
  const dnnl::engine& eng = dnnl_engine();
  const auto attr = user_scratchpad();
  const dims src{d.N, d.C, d.H, d.W}, dst{d.N, d.C, d.OH(), d.OW()};
  const dims strides{d.SH, d.SW}, kernel{d.KH, d.KW}, pad{d.PH, d.PW};
  const dnnl::memory::desc src_md(src, dt::f32, tag::nchw), dst_md(dst, dt::f32, tag::nchw);
  const bool max = d.kind == PoolKind::kMax;
  const auto alg =
      max ? dnnl::algorithm::pooling_max : dnnl::algorithm::pooling_avg_exclude_padding;
  // Max pooling trains with a workspace; average pooling needs none.
  const auto prop = max ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  dnnl::pooling_forward::primitive_desc fwd(
      dnnl::pooling_forward::desc(prop, alg, src_md, dst_md, strides, kernel, pad, pad), attr, eng);
  if (max) {
    p.ws = fwd.workspace_desc();
    const dt ws_type = p.ws.data_type();
    PTRAIN_CHECK((ws_type == dt::u8 || ws_type == dt::s32) &&
                     p.ws == dnnl::memory::desc(dst, ws_type, tag::nchw),
                 "oneDNN max pooling's workspace is not an NCHW u8/s32 tensor of the output's "
                 "shape ({})",
                 fwd.impl_info_str());
  }
  if (k.pass == Pass::kPoolForward) {
    p.prim = dnnl::pooling_forward(fwd);
    fill(p, fwd);
    return;
  }
  dnnl::pooling_backward::primitive_desc bwd(
      dnnl::pooling_backward::desc(alg, src_md, dst_md, strides, kernel, pad, pad), attr, eng, fwd);
  p.prim = dnnl::pooling_backward(bwd);
  fill(p, bwd);
}

std::shared_ptr<const Prim> create(const Key& k) {
  set_omp_threads(k.threads);
  auto p = std::make_shared<Prim>();
  const bool pool = k.pass == Pass::kPoolForward || k.pass == Pass::kPoolBackward;
  try {
    if (pool)
      create_pool(k, *p);
    else
      create_bn(k, *p);
  } catch (const dnnl::error& e) {
    const CpuPoolDims& q = k.pool;
    if (pool)
      PTRAIN_CHECK(false,
                   "oneDNN {} pooling {} N={} C={} H={} W={} window {}x{} stride {}x{} pad {}x{}: "
                   "{}",
                   q.kind == PoolKind::kMax ? "max" : "average",
                   k.pass == Pass::kPoolForward ? "forward" : "backward", q.N, q.C, q.H, q.W, q.KH,
                   q.KW, q.SH, q.SW, q.PH, q.PW, e.what());
    PTRAIN_CHECK(false, "oneDNN batch normalization pass {} N={} C={} HW={}: {}", int(k.pass),
                 k.bn.N, k.bn.C, k.bn.HW, e.what());
  }
  return p;
}

using Cache = PrimitiveCache<Key, Prim, KeyHash, create>;

Cache& cache() {
  static Cache c;
  return c;
}

// One thread's stream, the primitives it has looked up, its scratchpad and workspace memory.
struct ThreadState {
  std::unique_ptr<dnnl::stream> stream;
  std::unordered_map<Key, std::shared_ptr<const Prim>, KeyHash> seen;
  DnnlBuffer scratch, ws;
};

ThreadState& thread_state() {
  thread_local ThreadState s;
  return s;
}

int threads_now() {
  return parallel_threads(int64_t(1) << 40, 1);  // 1 inside a parallel region
}

Key bn_key(Pass pass, const CpuBnDims& d) {
  PTRAIN_CHECK(d.N > 0 && d.C > 0 && d.HW > 0 && d.eps >= 0,
               "oneDNN batch normalization shape N={} C={} HW={} eps {}", d.N, d.C, d.HW, d.eps);
  return Key{pass, d, CpuPoolDims{}, threads_now()};
}

Key pool_key(Pass pass, const CpuPoolDims& d) {
  PTRAIN_CHECK(d.N > 0 && d.C > 0 && d.H > 0 && d.W > 0 && d.KH > 0 && d.KW > 0 && d.SH > 0 &&
                   d.SW > 0 && d.PH >= 0 && d.PW >= 0 && d.PH < d.KH && d.PW < d.KW && d.OH() > 0 &&
                   d.OW() > 0,
               "oneDNN pooling shape N={} C={} H={} W={} window {}x{} stride {}x{} pad {}x{} "
               "(padding must be smaller than the window)",
               d.N, d.C, d.H, d.W, d.KH, d.KW, d.SH, d.SW, d.PH, d.PW);
  return Key{pass, CpuBnDims{}, d, threads_now()};
}

// Runs the pass of `k` with `args` (the scratchpad is added here).
void execute(const Key& k, std::unordered_map<int, dnnl::memory> args, ThreadState& ts,
             const Prim& p) {
  const dnnl::engine& eng = dnnl_engine();
  if (!ts.stream) ts.stream = std::make_unique<dnnl::stream>(eng);
  set_omp_threads(k.threads);
  args.emplace(DNNL_ARG_SCRATCHPAD,
               dnnl::memory(p.scratch, eng, ts.scratch.get(p.scratch.get_size())));
  p.prim.execute(*ts.stream, args);
  ts.stream->wait();
}

const Prim& lookup(const Key& k, ThreadState& ts) {
  auto it = ts.seen.find(k);
  if (it == ts.seen.end()) it = ts.seen.emplace(k, cache().get(k)).first;
  return *it->second;
}

dnnl::memory mem(const dnnl::memory::desc& md, const void* p) {
  return dnnl::memory(md, dnnl_engine(), const_cast<void*>(p));
}

dnnl::memory::desc vec(int C) {
  return dnnl::memory::desc({C}, dt::f32, tag::x);
}

// Max pooling's workspace <-> plane indices, plane by plane. to_argmax: ws -> argmax.
template <typename W>
void convert_ws(W* ws, int32_t* argmax, const CpuPoolDims& d, bool to_argmax) {
  const int OH = d.OH(), OW = d.OW();
  const int64_t OHW = int64_t(OH) * OW, planes = int64_t(d.N) * d.C;
  parallel_for(planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(OHW, 1)),
               [&](int64_t p0, int64_t p1) {
                 for (int64_t p = p0; p < p1; ++p) {
                   W* w = ws + p * OHW;
                   int32_t* a = argmax + p * OHW;
                   for (int oh = 0; oh < OH; ++oh) {
                     const int h0 = oh * d.SH - d.PH;
                     for (int ow = 0; ow < OW; ++ow) {
                       const int w0 = ow * d.SW - d.PW;
                       const int64_t j = int64_t(oh) * OW + ow;
                       if (to_argmax) {
                         const int k = int(w[j]);
                         a[j] = (h0 + k / d.KW) * d.W + (w0 + k % d.KW);
                       } else {
                         const int ih = a[j] / d.W, iw = a[j] % d.W;
                         w[j] = W((ih - h0) * d.KW + (iw - w0));
                       }
                     }
                   }
                 }
               });
}

void convert_ws(void* ws, dt type, int32_t* argmax, const CpuPoolDims& d, bool to_argmax) {
  if (type == dt::u8)
    convert_ws(static_cast<uint8_t*>(ws), argmax, d, to_argmax);
  else
    convert_ws(static_cast<int32_t*>(ws), argmax, d, to_argmax);
}

// --- recording (cpu_bn_pool_record) ---
constexpr int kOps = int(BnPoolOp::kAvgPoolBackward) + 1;
std::atomic<bool> g_recording{false};
std::mutex g_record_mu;
BnPoolTime g_recorded[kOps][2];

}  // namespace
}  // namespace cpu

void set_cpu_bn(CpuPath mode) {
  cpu::g_bn.store(int(mode));
}

CpuPath cpu_bn_mode() {
  return cpu::mode_of(cpu::g_bn, "PTRAIN_CPU_BN");
}

void set_cpu_pool(CpuPath mode) {
  cpu::g_pool.store(int(mode));
}

CpuPath cpu_pool_mode() {
  return cpu::mode_of(cpu::g_pool, "PTRAIN_CPU_POOL");
}

bool cpu_bn_uses_dnnl(const CpuBnDims& /*d*/) {
  // Measured on the ResNet benches (docs/ARCHITECTURE.md §CPU kernels): on plain NCHW oneDNN 2.6
  // runs its batch normalization on "ncsp_bnorm:any", not a JIT kernel (those want nChw16c or
  // NHWC, and a reorder each way would cost more than the pass), and it took 1.3x (medians) to
  // 1.8x (best runs) the loops' time forward and backward at 1 thread. auto keeps the loops.
  return cpu_bn_mode() == CpuPath::kDnnl;
}

bool cpu_pool_uses_dnnl(bool backward, const CpuPoolDims& d) {
  if (d.PH >= d.KH || d.PW >= d.KW) return false;
  switch (cpu_pool_mode()) {
    case CpuPath::kNaive:
      return false;
    case CpuPath::kDnnl:
      return true;
    case CpuPath::kAuto:
      break;
  }
  // Measured as above: max pool forward (the ImageNet stem's 3x3 stride 2) ran 7-8x faster on
  // oneDNN's AVX-512 kernel than the loops' branchy scan; its backward (a memset and a scatter
  // in the loops) and the global average pool (an HWx1 window, oneDNN's simple_nchw kernel)
  // were slower there. Without AVX-512 nothing was measured.
  return d.kind == PoolKind::kMax && !backward && cpu::dnnl_has_avx512();
}

void dnnl_bn_forward_training(float* y, float* mean, float* var, const float* x,
                              const float* weight, const float* bias, const CpuBnDims& d) {
  using namespace cpu;
  const Key k = bn_key(Pass::kBnTrain, d);
  ThreadState& ts = thread_state();
  const Prim& p = lookup(k, ts);
  const auto data = bn_data(d), c = vec(d.C);
  execute(k,
          {{DNNL_ARG_SRC, mem(data, x)},
           {DNNL_ARG_DST, mem(data, y)},
           {DNNL_ARG_MEAN, mem(c, mean)},
           {DNNL_ARG_VARIANCE, mem(c, var)},
           {DNNL_ARG_SCALE, mem(c, weight)},
           {DNNL_ARG_SHIFT, mem(c, bias)}},
          ts, p);
}

void dnnl_bn_forward_inference(float* y, const float* x, const float* mean, const float* var,
                               const float* weight, const float* bias, const CpuBnDims& d) {
  using namespace cpu;
  const Key k = bn_key(Pass::kBnInfer, d);
  ThreadState& ts = thread_state();
  const Prim& p = lookup(k, ts);
  const auto data = bn_data(d), c = vec(d.C);
  execute(k,
          {{DNNL_ARG_SRC, mem(data, x)},
           {DNNL_ARG_DST, mem(data, y)},
           {DNNL_ARG_MEAN, mem(c, mean)},
           {DNNL_ARG_VARIANCE, mem(c, var)},
           {DNNL_ARG_SCALE, mem(c, weight)},
           {DNNL_ARG_SHIFT, mem(c, bias)}},
          ts, p);
}

void dnnl_bn_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                      const float* mean, const float* var, const float* weight, bool batch_stats,
                      const CpuBnDims& d) {
  using namespace cpu;
  const Key k = bn_key(batch_stats ? Pass::kBnBackward : Pass::kBnBackwardGlobal, d);
  ThreadState& ts = thread_state();
  const Prim& p = lookup(k, ts);
  const auto data = bn_data(d), c = vec(d.C);
  // oneDNN asks for the shift it does not read (the gradient does not depend on it).
  float* shift = static_cast<float*>(ts.ws.get(sizeof(float) * size_t(d.C)));
  std::fill(shift, shift + d.C, 0.0f);
  execute(k,
          {{DNNL_ARG_SRC, mem(data, x)},
           {DNNL_ARG_DIFF_DST, mem(data, dy)},
           {DNNL_ARG_SHIFT, mem(c, shift)},
           {DNNL_ARG_MEAN, mem(c, mean)},
           {DNNL_ARG_VARIANCE, mem(c, var)},
           {DNNL_ARG_SCALE, mem(c, weight)},
           {DNNL_ARG_DIFF_SRC, mem(data, dx)},
           {DNNL_ARG_DIFF_SCALE, mem(c, dweight)},
           {DNNL_ARG_DIFF_SHIFT, mem(c, dbias)}},
          ts, p);
}

void dnnl_maxpool_forward(float* out, int32_t* argmax, const float* inp, const CpuPoolDims& d) {
  using namespace cpu;
  PTRAIN_CHECK(d.kind == PoolKind::kMax, "dnnl_maxpool_forward on an average pooling");
  const Key k = pool_key(Pass::kPoolForward, d);
  ThreadState& ts = thread_state();
  const Prim& p = lookup(k, ts);
  const dnnl::memory::desc src({d.N, d.C, d.H, d.W}, dt::f32, tag::nchw),
      dst({d.N, d.C, d.OH(), d.OW()}, dt::f32, tag::nchw);
  void* ws = ts.ws.get(p.ws.get_size());
  execute(k,
          {{DNNL_ARG_SRC, mem(src, inp)},
           {DNNL_ARG_DST, mem(dst, out)},
           {DNNL_ARG_WORKSPACE, mem(p.ws, ws)}},
          ts, p);
  convert_ws(ws, p.ws.data_type(), argmax, d, true);
}

void dnnl_maxpool_backward(float* dinp, const float* dout, const int32_t* argmax,
                           const CpuPoolDims& d) {
  using namespace cpu;
  PTRAIN_CHECK(d.kind == PoolKind::kMax, "dnnl_maxpool_backward on an average pooling");
  const Key k = pool_key(Pass::kPoolBackward, d);
  ThreadState& ts = thread_state();
  const Prim& p = lookup(k, ts);
  const dnnl::memory::desc src({d.N, d.C, d.H, d.W}, dt::f32, tag::nchw),
      dst({d.N, d.C, d.OH(), d.OW()}, dt::f32, tag::nchw);
  void* ws = ts.ws.get(p.ws.get_size());
  convert_ws(ws, p.ws.data_type(), const_cast<int32_t*>(argmax), d, false);
  execute(k,
          {{DNNL_ARG_DIFF_DST, mem(dst, dout)},
           {DNNL_ARG_DIFF_SRC, mem(src, dinp)},
           {DNNL_ARG_WORKSPACE, mem(p.ws, ws)}},
          ts, p);
}

void dnnl_avgpool_forward(float* out, const float* inp, const CpuPoolDims& d) {
  using namespace cpu;
  PTRAIN_CHECK(d.kind == PoolKind::kAvg, "dnnl_avgpool_forward on a max pooling");
  const Key k = pool_key(Pass::kPoolForward, d);
  ThreadState& ts = thread_state();
  const Prim& p = lookup(k, ts);
  const dnnl::memory::desc src({d.N, d.C, d.H, d.W}, dt::f32, tag::nchw),
      dst({d.N, d.C, d.OH(), d.OW()}, dt::f32, tag::nchw);
  execute(k, {{DNNL_ARG_SRC, mem(src, inp)}, {DNNL_ARG_DST, mem(dst, out)}}, ts, p);
}

void dnnl_avgpool_backward(float* dinp, const float* dout, const CpuPoolDims& d) {
  using namespace cpu;
  PTRAIN_CHECK(d.kind == PoolKind::kAvg, "dnnl_avgpool_backward on a max pooling");
  const Key k = pool_key(Pass::kPoolBackward, d);
  ThreadState& ts = thread_state();
  const Prim& p = lookup(k, ts);
  const dnnl::memory::desc src({d.N, d.C, d.H, d.W}, dt::f32, tag::nchw),
      dst({d.N, d.C, d.OH(), d.OW()}, dt::f32, tag::nchw);
  execute(k, {{DNNL_ARG_DIFF_DST, mem(dst, dout)}, {DNNL_ARG_DIFF_SRC, mem(src, dinp)}}, ts, p);
}

size_t dnnl_bn_pool_cached_primitives() {
  return cpu::cache().size();
}

void cpu_bn_pool_record(bool on) {
  std::lock_guard<std::mutex> lock(cpu::g_record_mu);
  if (on)
    for (auto& row : cpu::g_recorded)
      for (auto& t : row) t = BnPoolTime{};
  cpu::g_recording.store(on);
}

bool cpu_bn_pool_recording() {
  return cpu::g_recording.load(std::memory_order_relaxed);
}

void cpu_bn_pool_note(BnPoolOp op, bool dnnl, double seconds) {
  if (!cpu_bn_pool_recording()) return;
  std::lock_guard<std::mutex> lock(cpu::g_record_mu);
  BnPoolTime& t = cpu::g_recorded[int(op)][dnnl ? 1 : 0];
  t.op = op, t.dnnl = dnnl;
  ++t.calls;
  t.seconds += seconds;
}

std::vector<BnPoolTime> cpu_bn_pool_recorded() {
  std::vector<BnPoolTime> out;
  std::lock_guard<std::mutex> lock(cpu::g_record_mu);
  for (const auto& row : cpu::g_recorded)
    for (const auto& t : row)
      if (t.calls > 0) out.push_back(t);
  return out;
}

}  // namespace ptrain::tensor
