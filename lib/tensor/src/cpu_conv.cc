// Convolutions on oneDNN's primitives (cpu_conv.h). Each primitive is created with format_tag::any
// so oneDNN picks its blocked layouts (nChw16c and the like): on plain NCHW it falls back to its
// own im2col + GEMM kernel ("gemm:jit"), 2-4x slower than the direct ones. The reorders between
// ptrain's plain tensors and those layouts are created with it and cost a pass over memory each.
#include "ptrain/tensor/cpu_conv.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "cpu_dnnl.h"
#include "cpu_gemm.h"
#include "cpu_parallel.h"
#include "ptrain/core/error.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::tensor {

bool CpuConvDims::operator==(const CpuConvDims& o) const {
  return N == o.N && C == o.C && H == o.H && W == o.W && OC == o.OC && KH == o.KH && KW == o.KW &&
         stride == o.stride && pad == o.pad;
}

const char* conv_pass_name(ConvPass pass) {
  switch (pass) {
    case ConvPass::kForward:
      return "forward";
    case ConvPass::kBackwardData:
      return "backward data";
    default:
      return "backward weights";
  }
}

namespace cpu {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

struct Key {
  CpuConvDims d;
  ConvPass pass;
  int threads;
  bool operator==(const Key& o) const { return d == o.d && pass == o.pass && threads == o.threads; }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    for (int v : {k.d.N, k.d.C, k.d.H, k.d.W, k.d.OC, k.d.KH, k.d.KW, k.d.stride, k.d.pad,
                  int(k.pass), k.threads})
      h = (h ^ uint64_t(uint32_t(v))) * 1099511628211ull;
    return size_t(h);
  }
};

// A reorder between ptrain's layout and the primitive's, with the scratchpad it needs.
struct Reorder {
  dnnl::reorder prim;
  dnnl::memory::desc scratch;
};

// A created convolution pass; immutable, shared by all threads. Its operands are two inputs and
// one output: forward (src, weights -> dst), backward data (diff_dst, weights -> diff_src),
// backward weights (diff_dst, src -> diff_weights, accumulated by its reorder's sum post-op).
struct Conv {
  dnnl::primitive prim;
  dnnl::memory::desc scratch;
  std::string impl;
  int arg[3];
  dnnl::memory::desc plain[3];   // ptrain's layouts
  dnnl::memory::desc want[3];    // the primitive's
  std::optional<Reorder> to[2];  // plain -> want, for inputs whose layouts differ
  std::optional<Reorder> from;   // want -> plain for the output (always when accumulating)
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

Reorder make_reorder(const dnnl::memory::desc& from, const dnnl::memory::desc& to, bool sum) {
  dnnl::primitive_attr attr = user_scratchpad();
  if (sum) {
    dnnl::post_ops po;
    po.append_sum(1.0f);
    attr.set_post_ops(po);
  }
  dnnl::reorder::primitive_desc pd(dnnl_engine(), from, dnnl_engine(), to, attr);
  return Reorder{dnnl::reorder(pd), pd.scratchpad_desc()};
}

std::shared_ptr<const Conv> create(const Key& k) {
  using dims = dnnl::memory::dims;
  const CpuConvDims& d = k.d;
  const dims src{d.N, d.C, d.H, d.W}, wei{d.OC, d.C, d.KH, d.KW}, dst{d.N, d.OC, d.OH(), d.OW()};
  const dims strides{d.stride, d.stride}, pad{d.pad, d.pad};
  const dnnl::memory::desc src_any(src, dt::f32, tag::any), wei_any(wei, dt::f32, tag::any),
      dst_any(dst, dt::f32, tag::any);
  const dnnl::memory::desc src_plain(src, dt::f32, tag::nchw), wei_plain(wei, dt::f32, tag::oihw),
      dst_plain(dst, dt::f32, tag::nchw);
  set_omp_threads(k.threads);
  auto c = std::make_shared<Conv>();
  try {
    const dnnl::engine& eng = dnnl_engine();
    const auto attr = user_scratchpad();
    dnnl::convolution_forward::primitive_desc fwd(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                        dnnl::algorithm::convolution_direct, src_any, wei_any,
                                        dst_any, strides, pad, pad),
        attr, eng);
    bool accumulate = false;
    switch (k.pass) {
      case ConvPass::kForward:
        c->prim = dnnl::convolution_forward(fwd);
        c->scratch = fwd.scratchpad_desc();
        c->impl = fwd.impl_info_str();
        c->arg[0] = DNNL_ARG_SRC, c->arg[1] = DNNL_ARG_WEIGHTS, c->arg[2] = DNNL_ARG_DST;
        c->plain[0] = src_plain, c->plain[1] = wei_plain, c->plain[2] = dst_plain;
        c->want[0] = fwd.src_desc(), c->want[1] = fwd.weights_desc(), c->want[2] = fwd.dst_desc();
        break;
      case ConvPass::kBackwardData: {
        dnnl::convolution_backward_data::primitive_desc pd(
            dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, src_any,
                                                  wei_any, dst_any, strides, pad, pad),
            attr, eng, fwd);
        c->prim = dnnl::convolution_backward_data(pd);
        c->scratch = pd.scratchpad_desc();
        c->impl = pd.impl_info_str();
        c->arg[0] = DNNL_ARG_DIFF_DST, c->arg[1] = DNNL_ARG_WEIGHTS, c->arg[2] = DNNL_ARG_DIFF_SRC;
        c->plain[0] = dst_plain, c->plain[1] = wei_plain, c->plain[2] = src_plain;
        c->want[0] = pd.diff_dst_desc(), c->want[1] = pd.weights_desc();
        c->want[2] = pd.diff_src_desc();
        break;
      }
      case ConvPass::kBackwardWeights: {
        dnnl::convolution_backward_weights::primitive_desc pd(
            dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, src_any,
                                                     wei_any, dst_any, strides, pad, pad),
            attr, eng, fwd);
        c->prim = dnnl::convolution_backward_weights(pd);
        c->scratch = pd.scratchpad_desc();
        c->impl = pd.impl_info_str();
        c->arg[0] = DNNL_ARG_DIFF_DST, c->arg[1] = DNNL_ARG_SRC, c->arg[2] = DNNL_ARG_DIFF_WEIGHTS;
        c->plain[0] = dst_plain, c->plain[1] = src_plain, c->plain[2] = wei_plain;
        c->want[0] = pd.diff_dst_desc(), c->want[1] = pd.src_desc();
        c->want[2] = pd.diff_weights_desc();
        accumulate = true;
        break;
      }
    }
    for (int i = 0; i < 2; ++i)
      if (c->want[i] != c->plain[i]) c->to[i] = make_reorder(c->plain[i], c->want[i], false);
    if (accumulate || c->want[2] != c->plain[2])
      c->from = make_reorder(c->want[2], c->plain[2], accumulate);
  } catch (const dnnl::error& e) {
    PTRAIN_CHECK(
        false, "oneDNN convolution {} N={} C={} H={} W={} OC={} K={}x{} stride {} pad {}: {}",
        conv_pass_name(k.pass), d.N, d.C, d.H, d.W, d.OC, d.KH, d.KW, d.stride, d.pad, e.what());
  }
  return c;
}

using Cache = PrimitiveCache<Key, Conv, KeyHash, create>;

Cache& cache() {
  static Cache c;
  return c;
}

// One thread's stream and scratch memory: the operands in the primitive's layouts and the
// scratchpads. A thread runs one pass at a time, so every pass shares them.
struct ThreadState {
  std::unique_ptr<dnnl::stream> stream;
  std::unordered_map<Key, std::shared_ptr<const Conv>, KeyHash> seen;
  DnnlBuffer operand[3], scratch;
};

ThreadState& thread_state() {
  thread_local ThreadState s;
  return s;
}

void run(ConvPass pass, const CpuConvDims& d, const float* in0, const float* in1, float* out) {
  PTRAIN_CHECK(d.N > 0 && d.C > 0 && d.H > 0 && d.W > 0 && d.OC > 0 && d.KH > 0 && d.KW > 0 &&
                   d.stride > 0 && d.pad >= 0 && d.OH() > 0 && d.OW() > 0,
               "oneDNN convolution shape N={} C={} H={} W={} OC={} K={}x{} stride {} pad {}", d.N,
               d.C, d.H, d.W, d.OC, d.KH, d.KW, d.stride, d.pad);
  const int threads = parallel_threads(int64_t(1) << 40, 1);  // 1 inside a parallel region
  const Key k{d, pass, threads};
  ThreadState& ts = thread_state();
  auto it = ts.seen.find(k);
  if (it == ts.seen.end()) it = ts.seen.emplace(k, cache().get(k)).first;
  const Conv& c = *it->second;
  const dnnl::engine& eng = dnnl_engine();
  if (!ts.stream) ts.stream = std::make_unique<dnnl::stream>(eng);
  dnnl::stream& st = *ts.stream;
  set_omp_threads(threads);
  auto scratchpad = [&](const dnnl::memory::desc& desc) {
    return dnnl::memory(desc, eng, ts.scratch.get(desc.get_size()));
  };
  const void* inputs[2] = {in0, in1};
  std::unordered_map<int, dnnl::memory> args;
  for (int i = 0; i < 2; ++i) {
    dnnl::memory user(c.plain[i], eng, const_cast<void*>(inputs[i]));
    if (!c.to[i]) {
      args.emplace(c.arg[i], user);
      continue;
    }
    dnnl::memory mine(c.want[i], eng, ts.operand[i].get(c.want[i].get_size()));
    c.to[i]->prim.execute(st, {{DNNL_ARG_FROM, user},
                               {DNNL_ARG_TO, mine},
                               {DNNL_ARG_SCRATCHPAD, scratchpad(c.to[i]->scratch)}});
    args.emplace(c.arg[i], mine);
  }
  dnnl::memory user_out(c.plain[2], eng, out);
  dnnl::memory mine_out =
      c.from ? dnnl::memory(c.want[2], eng, ts.operand[2].get(c.want[2].get_size())) : user_out;
  args.emplace(c.arg[2], mine_out);
  args.emplace(DNNL_ARG_SCRATCHPAD, scratchpad(c.scratch));
  c.prim.execute(st, args);
  if (c.from) {
    c.from->prim.execute(st, {{DNNL_ARG_FROM, mine_out},
                              {DNNL_ARG_TO, user_out},
                              {DNNL_ARG_SCRATCHPAD, scratchpad(c.from->scratch)}});
  }
  st.wait();
}

// --- recording the convolutions that run (cpu_conv_record) ---
std::atomic<bool> g_recording{false};
std::mutex g_record_mu;
std::unordered_map<Key, int64_t, KeyHash> g_recorded;

}  // namespace
}  // namespace cpu

void cpu_conv_record(bool on) {
  std::lock_guard<std::mutex> lock(cpu::g_record_mu);
  if (on) cpu::g_recorded.clear();
  cpu::g_recording.store(on);
}

void cpu_conv_note(ConvPass pass, const CpuConvDims& d) {
  if (!cpu::g_recording.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lock(cpu::g_record_mu);
  ++cpu::g_recorded[cpu::Key{d, pass, 0}];
}

std::vector<CpuConvCall> cpu_conv_recorded() {
  std::vector<CpuConvCall> out;
  {
    std::lock_guard<std::mutex> lock(cpu::g_record_mu);
    for (const auto& [k, calls] : cpu::g_recorded) out.push_back({k.d, k.pass, calls});
  }
  std::sort(out.begin(), out.end(), [](const CpuConvCall& a, const CpuConvCall& b) {
    if (a.flops() * a.calls != b.flops() * b.calls)
      return a.flops() * a.calls > b.flops() * b.calls;
    return int(a.pass) < int(b.pass);
  });
  return out;
}

void dnnl_conv2d_forward(float* out, const float* inp, const float* weight, const CpuConvDims& d) {
  cpu::run(ConvPass::kForward, d, inp, weight, out);
}

void dnnl_conv2d_backward_data(float* dinp, const float* dout, const float* weight,
                               const CpuConvDims& d) {
  cpu::run(ConvPass::kBackwardData, d, dout, weight, dinp);
}

void dnnl_conv2d_backward_weights(float* dweight, const float* dout, const float* inp,
                                  const CpuConvDims& d) {
  cpu::run(ConvPass::kBackwardWeights, d, dout, inp, dweight);
}

std::string dnnl_conv_impl(ConvPass pass, const CpuConvDims& d) {
  const cpu::Key k{d, pass, cpu::parallel_threads(int64_t(1) << 40, 1)};
  return cpu::cache().get(k)->impl;
}

size_t dnnl_conv_cached_primitives() {
  return cpu::cache().size();
}

bool cpu_conv_uses_dnnl(ConvPass pass, const CpuConvDims& d) {
  switch (cpu_conv_mode()) {
    case CpuConv::kIm2col:
      return false;
    case CpuConv::kDnnl:
      return true;
    case CpuConv::kAuto:
      break;
  }
  // Measured on the ResNet benches' layers (docs/ARCHITECTURE.md §CPU kernels): oneDNN's
  // AVX-512 direct kernels run 2-4x im2col + GEMM's rate, except the weight gradient of layers
  // with at most 4 output pixels (ResNet-18's last stages on 32x32 images), where its reduction
  // over the few pixels runs at a third to a half of it. Without AVX-512 nothing was measured.
  if (!cpu::dnnl_has_avx512()) return false;
  if (pass == ConvPass::kBackwardWeights && int64_t(d.OH()) * d.OW() <= 4) return false;
  return true;
}

}  // namespace ptrain::tensor
