// `ptrain bench step [job.yaml] [--device cpu|cuda] [--threads N] [--steps N] [--warmup N]
// [--precision fp32|bf16] [--model bench|gpt2-124m] [--batch B] [--seq T]`: times whole training
// steps (forward, backward, clipping, AdamW) of a GPT on one process and prints ms/step, tokens/s,
// achieved model GFLOP/s and the MFU: that rate over the best GEMM rate measured in the same run
// (on CPU: OpenBLAS and oneDNN fp32, and oneDNN bf16, at 1024^3 and 2048^3, naming the kernels;
// on CUDA: a bf16 -- or fp32 -- GEMM 8192^3).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/core/time.h"
#include "ptrain/models/registry.h"
#include "ptrain/nn/cnn.h"
#include "ptrain/nn/model.h"
#include "ptrain/optim/clip.h"
#include "ptrain/spec/spec.h"
#include "ptrain/tensor/cpu_bn_pool.h"
#include "ptrain/tensor/cpu_conv.h"
#include "ptrain/tensor/cpu_kernels.h"
#include "ptrain/tensor/tensor.h"
#include "ptrain/train/metrics.h"
#include "ptrain/train/setup.h"

namespace ptrain::cli {
namespace {

struct BenchStepArgs {
  std::string job;
  std::string device = "cpu";
  std::string precision;  // "" = the job's (fp32 for the built-in models)
  std::string model = "bench";
  int threads = 0;  // 0 = the job's threads_per_proc, else 1
  int steps = 10;
  int warmup = 2;
  int batch = 0;  // 0 = the model's default
  int seq = 0;
  bool gemm_table = false;     // CPU: replay each GEMM of a step on OpenBLAS and oneDNN
  bool conv_table = false;     // CPU: replay each convolution of a step on im2col and oneDNN
  bool bn_pool_table = false;  // CPU: time the batch norm and pooling calls of the timed steps
};

// A key's value as the spec would write it.
std::string describe(const spec::ModelSpec& m, const spec::ModelKey& k) {
  using Kind = spec::ModelKey::Kind;
  switch (k.kind) {
    case Kind::kInt:
      return std::to_string(m.integer(k.name));
    case Kind::kNumber:
      return fmt::format("{}", m.number(k.name));
    case Kind::kBool:
      return m.flag(k.name) ? "true" : "false";
    case Kind::kIntList:
      return fmt::format("[{}]", fmt::join(m.ints(k.name), ", "));
    default:
      return m.text(k.name);
  }
}

// The spec the bench runs: the job file's model and batch, or one of the built-in models.
spec::JobSpec bench_spec(const BenchStepArgs& a) {
  spec::JobSpec s;
  if (!a.job.empty()) {
    s = spec::load_file(a.job);
  } else if (a.model == "bench") {
    s.model.type = "gpt";
    s.model.set("layers", 4).set("heads", 4).set("dim", 256).set("seq_len", 128);
    s.model.set("vocab", 256);
    s.data.type = "synthetic";
    s.data.batch_size = 8;
  } else if (a.model == "gpt2-124m") {
    s.model.type = "gpt";
    s.model.set("layers", 12).set("heads", 12).set("dim", 768).set("seq_len", 1024);
    s.model.set("vocab", 50257);
    s.data.type = "synthetic";
    s.data.batch_size = 8;
  } else {
    throw ConfigError(fmt::format("--model {}: unknown model", a.model), "use bench or gpt2-124m");
  }
  s.parallel = {};
  s.model.init_from.clear();
  s.nodes.device = a.device;
  if (!a.precision.empty()) s.train.precision = a.precision;
  if (a.batch > 0) s.data.batch_size = a.batch;
  if (a.seq > 0) {
    if (!models::family_of(s).find_key("seq_len"))
      throw ConfigError(fmt::format("--seq: model.type {} has no seq_len", s.model.type),
                        "leave --seq out for this model");
    s.model.set("seq_len", a.seq);
  }
  if (a.job.empty()) {
    s.train.optimizer.type = "adamw";
    s.train.optimizer.grad_clip = 1.0;
  }
  return s;
}

// The CPU GEMM rates of this run (GFLOP/s, best over sizes and repeats): each library forced in
// turn through the op table, then the table's own choice restored.
struct CpuGemmRates {
  double openblas = 0, dnnl = 0, dnnl_bf16 = 0;  // dnnl_bf16 0: no native bf16
  double best_fp32() const { return std::max(openblas, dnnl); }
  double best(bool bf16) const { return bf16 ? std::max(dnnl_bf16, best_fp32()) : best_fp32(); }
};

double cpu_gemm_rate(tensor::CpuGemm mode, bool bf16, int n) {
  const tensor::Ops& o = tensor::cpu_ops();
  const tensor::CpuGemm saved = tensor::cpu_gemm_mode();
  tensor::set_cpu_gemm(mode);
  const size_t nn = size_t(n) * n;
  std::vector<float> a(nn, 0.5f), b(nn, 0.25f), c(nn, 0.f);
  std::vector<uint16_t> ah(bf16 ? nn : 0), bh(bf16 ? nn : 0);
  if (bf16) {
    o.f32_to_bf16(ah.data(), a.data(), nn);
    o.f32_to_bf16(bh.data(), b.data(), nn);
  }
  auto run = [&] {
    if (bf16)
      o.gemm_bf16(false, false, n, n, n, 1.f, ah.data(), n, bh.data(), n, 0.f, c.data(), n);
    else
      o.gemm(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
  };
  run();
  double best = 1e30;
  for (int r = 0; r < 3; ++r) {
    double t0 = mono_seconds();
    run();
    best = std::min(best, mono_seconds() - t0);
  }
  tensor::set_cpu_gemm(saved);
  return 2.0 * n * double(n) * n / best / 1e9;
}

CpuGemmRates measure_cpu_gemms() {
  CpuGemmRates r;
  for (int n : {1024, 2048}) {
    r.openblas = std::max(r.openblas, cpu_gemm_rate(tensor::CpuGemm::kOpenBlas, false, n));
    r.dnnl = std::max(r.dnnl, cpu_gemm_rate(tensor::CpuGemm::kDnnl, false, n));
    if (tensor::cpu_has_bf16())
      r.dnnl_bf16 = std::max(r.dnnl_bf16, cpu_gemm_rate(tensor::CpuGemm::kDnnl, true, n));
  }
  return r;
}

// Seconds one recorded GEMM takes in `mode` (best of several runs on fresh zero buffers).
double replay_seconds(const tensor::CpuGemmShape& g, tensor::CpuGemm mode) {
  const tensor::Ops& o = tensor::cpu_ops();
  const tensor::CpuGemm saved = tensor::cpu_gemm_mode();
  tensor::set_cpu_gemm(mode);
  auto span = [&](int rows, int ld, int64_t stride) {
    return size_t(stride) * (g.count - 1) + size_t(rows) * ld + 1;
  };
  const size_t na = span(g.trans_a ? g.K : g.M, g.lda, g.stride_a);
  const size_t nb = span(g.trans_b ? g.N : g.K, g.ldb, g.stride_b);
  std::vector<float> a(na, 0.5f), b(nb, 0.25f), c(span(g.M, g.ldc, g.stride_c), 0.f);
  std::vector<uint16_t> ah(g.bf16 ? na : 0, 0x3f00), bh(g.bf16 ? nb : 0, 0x3e80);
  auto run = [&] {
    if (g.bf16)
      o.gemm_bf16_strided_batched(g.trans_a, g.trans_b, g.M, g.N, g.K, g.alpha, ah.data(), g.lda,
                                  g.stride_a, bh.data(), g.ldb, g.stride_b, g.beta, c.data(), g.ldc,
                                  g.stride_c, g.count);
    else
      o.gemm_strided_batched(g.trans_a, g.trans_b, g.M, g.N, g.K, g.alpha, a.data(), g.lda,
                             g.stride_a, b.data(), g.ldb, g.stride_b, g.beta, c.data(), g.ldc,
                             g.stride_c, g.count);
  };
  run();
  const int reps = int(std::clamp(2e8 / std::max(g.flops(), 1.0), 3.0, 200.0));
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    double t0 = mono_seconds();
    run();
    best = std::min(best, mono_seconds() - t0);
  }
  tensor::set_cpu_gemm(saved);
  return best;
}

// The GEMMs of the timed steps, each replayed on both libraries, and what auto picks.
void print_gemm_table(int steps) {
  auto shapes = tensor::cpu_gemm_recorded();
  std::printf("GEMMs of one step, replayed on each library (GFLOP/s; %zu distinct):\n",
              shapes.size());
  std::printf("  %5s %-4s %-17s %-15s %5s %4s %9s %9s %5s %8s\n", "calls", "op", "M x N x K",
              "lda ldb ldc", "batch", "beta", "OpenBLAS", "oneDNN", "auto", "ms/step");
  double total_ms = 0;
  for (const auto& g : shapes) {
    const double calls = double(g.calls) / steps;
    const double blas = replay_seconds(g, tensor::CpuGemm::kOpenBlas);
    const double dnnl = replay_seconds(g, tensor::CpuGemm::kDnnl);
    const char* pick = g.bf16 ? (tensor::cpu_has_bf16() ? "dnnl" : "openblas")
                              : tensor::cpu_gemm_auto_choice(g.trans_a, g.trans_b, g.M, g.N, g.K);
    const double ms = calls * (std::string(pick) == "dnnl" ? dnnl : blas) * 1e3;
    total_ms += ms;
    std::printf(
        "  %5.0f %-4s %-17s %-15s %5d %4g %9.1f %9.1f %5s %8.2f\n", calls,
        fmt::format("{}{}{}", g.bf16 ? "h" : "", g.trans_a ? "T" : "N", g.trans_b ? "T" : "N")
            .c_str(),
        fmt::format("{}x{}x{}", g.M, g.N, g.K).c_str(),
        fmt::format("{} {} {}", g.lda, g.ldb, g.ldc).c_str(), g.count, g.beta,
        g.flops() / blas / 1e9, g.flops() / dnnl / 1e9, pick, ms);
  }
  std::printf(
      "  GEMM time of one step with auto's choices: %.2f ms (op hNN etc.: bf16 inputs, "
      "OpenBLAS column: widened to fp32)\n",
      total_ms);
}

// Seconds one recorded convolution pass takes on one path (best of several runs).
double conv_replay_seconds(const tensor::CpuConvCall& c, tensor::CpuConv mode) {
  const tensor::Ops& o = tensor::cpu_ops();
  const tensor::CpuConv saved = tensor::cpu_conv_mode();
  tensor::set_cpu_conv(mode);
  const tensor::CpuConvDims& d = c.dims;
  nn::Conv2dShape s;
  s.N = d.N, s.C = d.C, s.H = d.H, s.W = d.W, s.OC = d.OC, s.KH = d.KH, s.KW = d.KW;
  s.stride = d.stride, s.pad = d.pad;
  std::vector<float> x(size_t(s.in_numel()), 0.5f), w(size_t(s.weight_numel()), 0.25f),
      y(size_t(s.out_numel()), 0.125f), dx(x.size()), dw(w.size());
  auto run = [&] {
    switch (c.pass) {
      case tensor::ConvPass::kForward:
        nn::conv2d_forward(o, y.data(), x.data(), w.data(), s);
        break;
      case tensor::ConvPass::kBackwardData:
        nn::conv2d_backward(o, dx.data(), nullptr, y.data(), x.data(), w.data(), s);
        break;
      case tensor::ConvPass::kBackwardWeights:
        nn::conv2d_backward(o, nullptr, dw.data(), y.data(), x.data(), w.data(), s);
        break;
    }
  };
  run();
  const int reps = int(std::clamp(3e8 / std::max(c.flops(), 1.0), 3.0, 50.0));
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    double t0 = mono_seconds();
    run();
    best = std::min(best, mono_seconds() - t0);
  }
  tensor::set_cpu_conv(saved);
  return best;
}

// The convolution passes of the timed steps, each replayed on both paths, and what auto picks.
void print_conv_table(int steps) {
  const auto calls = tensor::cpu_conv_recorded();
  std::printf("convolutions of one step, replayed on each path (GFLOP/s; %zu distinct):\n",
              calls.size());
  std::printf("  %5s %-16s %-22s %7s %7s %6s %8s  %s\n", "calls", "pass", "N C HxW > OC KxK /s +p",
              "im2col", "oneDNN", "auto", "ms/step", "oneDNN kernel");
  double total_ms = 0, im2col_ms = 0, dnnl_ms = 0;
  for (const auto& c : calls) {
    const double per_step = double(c.calls) / steps;
    const double a = conv_replay_seconds(c, tensor::CpuConv::kIm2col);
    const double b = conv_replay_seconds(c, tensor::CpuConv::kDnnl);
    const tensor::CpuConv saved = tensor::cpu_conv_mode();
    tensor::set_cpu_conv(tensor::CpuConv::kAuto);
    const bool pick = tensor::cpu_conv_uses_dnnl(c.pass, c.dims);
    tensor::set_cpu_conv(saved);
    total_ms += per_step * (pick ? b : a) * 1e3;
    im2col_ms += per_step * a * 1e3;
    dnnl_ms += per_step * b * 1e3;
    const auto& d = c.dims;
    std::printf("  %5.0f %-16s %-22s %7.1f %7.1f %6s %8.2f  %s\n", per_step,
                tensor::conv_pass_name(c.pass),
                fmt::format("{} {} {}x{} > {} {}x{} /{} +{}", d.N, d.C, d.H, d.W, d.OC, d.KH, d.KW,
                            d.stride, d.pad)
                    .c_str(),
                c.flops() / a / 1e9, c.flops() / b / 1e9, pick ? "dnnl" : "im2col",
                per_step * (pick ? b : a) * 1e3, tensor::dnnl_conv_impl(c.pass, c.dims).c_str());
  }
  std::printf(
      "  convolution time of one step: im2col %.2f ms, oneDNN %.2f ms, auto's choices %.2f ms\n",
      im2col_ms, dnnl_ms, total_ms);
}

// The batch norm and pooling calls of the timed steps, timed where they ran (on the path the
// modes chose), and their share of the steps' time.
void print_bn_pool_table(int steps, double step_seconds) {
  const auto times = tensor::cpu_bn_pool_recorded();
  std::printf("batch norm and pooling in the timed steps (PTRAIN_CPU_BN=%s, PTRAIN_CPU_POOL=%s):\n",
              tensor::cpu_path_name(tensor::cpu_bn_mode()),
              tensor::cpu_path_name(tensor::cpu_pool_mode()));
  std::printf("  %-28s %-5s %6s %8s %6s\n", "op", "path", "calls", "ms/step", "share");
  double total = 0;
  for (const auto& t : times) {
    total += t.seconds;
    std::printf("  %-28s %-5s %6.0f %8.2f %5.1f%%\n", tensor::bn_pool_op_name(t.op),
                t.dnnl ? "dnnl" : "naive", double(t.calls) / steps, t.seconds / steps * 1e3,
                100 * t.seconds / step_seconds);
  }
  std::printf("  batch norm and pooling: %.2f ms/step, %.1f%% of the step time\n",
              total / steps * 1e3, 100 * total / step_seconds);
}

// The CUDA GEMM rate this run compares against, in GFLOP/s.
double gemm_peak_gflops(tensor::Device device, bool bf16) {
  const tensor::Ops& o = tensor::ops(device);
  const int n = 8192;
  const size_t nn = size_t(n) * n;
  tensor::Tensor a, b;
  if (bf16) {
    PTRAIN_CHECK(o.gemm_bf16 != nullptr, "the {} op table has no bf16 GEMM", o.name);
    a = tensor::Tensor::zeros({int64_t(nn)}, tensor::DType::kBF16, device);
    b = tensor::Tensor::zeros({int64_t(nn)}, tensor::DType::kBF16, device);
  } else {
    a = tensor::Tensor::zeros({int64_t(nn)}, tensor::DType::kF32, device);
    b = tensor::Tensor::zeros({int64_t(nn)}, tensor::DType::kF32, device);
    o.fill(a.data<float>(), 0.5f, nn);
    o.fill(b.data<float>(), 0.25f, nn);
  }
  auto c = tensor::Tensor::zeros({int64_t(nn)}, tensor::DType::kF32, device);
  auto run = [&] {
    if (bf16)
      o.gemm_bf16(false, false, n, n, n, 1.f, a.data<uint16_t>(), n, b.data<uint16_t>(), n, 0.f,
                  c.data<float>(), n);
    else
      o.gemm(false, false, n, n, n, 1.f, a.data<float>(), n, b.data<float>(), n, 0.f,
             c.data<float>(), n);
  };
  run();
  o.synchronize();
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    double t0 = mono_seconds();
    run();
    run();
    o.synchronize();
    best = std::min(best, (mono_seconds() - t0) / 2);
  }
  return 2.0 * n * double(n) * n / best / 1e9;
}

int bench_step(const BenchStepArgs& a) {
  if (a.steps < 1 || a.warmup < 0)
    throw ConfigError("--steps must be >= 1 and --warmup >= 0", "e.g. --steps 10 --warmup 2");
  spec::JobSpec s = bench_spec(a);
  tensor::Device device = train::resolve_device(s.nodes.device);
  int threads = a.threads > 0 ? a.threads : std::max(1, s.nodes.threads_per_proc);
  tensor::set_cpu_threads(threads);
  const tensor::Ops& o = tensor::ops(device);
  const bool bf16 = s.train.precision == "bf16";

  auto model = train::make_model(s, device, 0, 0);
  auto layout = train::make_layout(*model);
  optim::Shard all = optim::Shard::whole(layout);
  auto optimizer = train::make_optimizer(s, o, std::move(layout), all);
  // One global batch of the job's data (synthetic for the built-in models), read once: the
  // timing does not depend on what is learned.
  const models::Family& family = models::family_of(s);
  auto data = family.make_data(s);
  const int B = int(data->rows(1, 1)), T = family.seq_len(s.model);
  models::HostBatch host(family.batch_schema(s, B), B, T);
  data->fill(0, 0, 1, 0, 1, data::Split::kTrain, host);
  const nn::Batch& batch = host.view();
  auto acts = model->make_activations(B, T);
  const double targets = data->global_targets(0, data::Split::kTrain);

  const float dloss = float(1.0 / targets);
  const double clip = s.train.optimizer.grad_clip;
  double loss = 0;
  auto step = [&] {
    model->zero_grad();
    loss = model->forward(batch, *acts) / targets;
    model->backward(*acts, dloss);
    double norm = std::sqrt(optim::grad_sum_squares(o, model->grad_data(), all));
    if (clip > 0) optim::clip_grads(o, model->grad_data(), all, norm, clip);
    optimizer->step(model->param_data(), model->grad_data(), float(s.train.optimizer.lr));
    o.synchronize();
  };
  for (int i = 0; i < a.warmup; ++i) step();
  const bool table = a.gemm_table && device == tensor::Device::kCpu;
  if (table) tensor::cpu_gemm_record(true);
  const bool conv_table = a.conv_table && device == tensor::Device::kCpu;
  if (conv_table) tensor::cpu_conv_record(true);
  const bool bn_pool_table = a.bn_pool_table && device == tensor::Device::kCpu;
  if (bn_pool_table) tensor::cpu_bn_pool_record(true);
  std::vector<double> ms;
  for (int i = 0; i < a.steps; ++i) {
    double t0 = mono_seconds();
    step();
    ms.push_back((mono_seconds() - t0) * 1e3);
  }
  if (!std::isfinite(loss))
    throw Error(fmt::format("bench step: the loss became {}", loss), "lower the learning rate");
  if (table) tensor::cpu_gemm_record(false);
  if (conv_table) tensor::cpu_conv_record(false);
  if (bn_pool_table) tensor::cpu_bn_pool_record(false);
  double step_seconds = 0;
  for (double m : ms) step_seconds += m / 1e3;
  std::sort(ms.begin(), ms.end());
  double median = ms[ms.size() / 2];
  double flops = model->train_flops(B, T);
  double gflops = flops / (median / 1e3) / 1e9;
  double tokens_per_s = targets / (median / 1e3);
  const bool cpu = device == tensor::Device::kCpu;
  CpuGemmRates rates;
  if (cpu) rates = measure_cpu_gemms();
  double peak = cpu ? rates.best(bf16) : gemm_peak_gflops(device, bf16);

  std::string what = a.job.empty() ? a.model : a.job;
  std::string keys;
  for (const auto& k : family.keys())
    if (s.model.values.count(k.name) || k.default_value.index() != 0)
      keys += fmt::format(", {} {}", k.name, describe(s.model, k));
  std::printf("model %s: %s%s, batch %d, %.1fM params\n", what.c_str(), s.model.type.c_str(),
              keys.c_str(), B, double(model->num_params()) / 1e6);
  std::printf("device %s, precision %s, threads %d, %d steps after %d warm-up\n", o.name,
              s.train.precision.c_str(), threads, a.steps, a.warmup);
  std::printf("step time: median %.2f ms (min %.2f, max %.2f); loss %.4f\n", median, ms.front(),
              ms.back(), loss);
  std::printf("model FLOPs per step: %.3f GFLOP\n", flops / 1e9);
  std::string extra;
  if (cpu) {
    const char* mode = tensor::cpu_gemm_name(tensor::cpu_gemm_mode());
    const char* conv = tensor::cpu_conv_name(tensor::cpu_conv_mode());
    const char* bn = tensor::cpu_path_name(tensor::cpu_bn_mode());
    const char* pool = tensor::cpu_path_name(tensor::cpu_pool_mode());
    std::printf(
        "cpu kernels: %s; GEMMs: %s; convolutions: %s; batch norm: %s; pooling: %s; bf16: %s\n",
        tensor::cpu_kernels().c_str(), mode, conv, bn, pool,
        tensor::cpu_has_bf16() ? "oneDNN native" : "widened to fp32 (no bf16 ISA)");
    std::printf(
        "GEMM 1024^3/2048^3, best: OpenBLAS fp32 %.1f, oneDNN fp32 %.1f, oneDNN bf16 %s "
        "GFLOP/s\n",
        rates.openblas, rates.dnnl,
        rates.dnnl_bf16 > 0 ? fmt::format("{:.1f}", rates.dnnl_bf16).c_str() : "-");
    std::printf("model %.1f GFLOP/s = %.3f of the best %s GEMM rate (%.1f GFLOP/s)\n", gflops,
                gflops / peak, bf16 ? "bf16" : "fp32", peak);
    if (table) print_gemm_table(a.steps);
    if (conv_table) print_conv_table(a.steps);
    if (bn_pool_table) print_bn_pool_table(a.steps, step_seconds);
    extra = fmt::format(
        " gemm={} conv={} bn={} pool={} openblas_gflops={:.1f} dnnl_gflops={:.1f} "
        "dnnl_bf16_gflops={:.1f}",
        mode, conv, bn, pool, rates.openblas, rates.dnnl, rates.dnnl_bf16);
  } else {
    std::printf("%s: %.1f GFLOP/s\n", bf16 ? "bf16 GEMM 8192^3" : "fp32 GEMM 8192^3", peak);
  }
  std::printf(
      "RESULT device=%s model=%s precision=%s threads=%d ms_per_step=%.2f "
      "tokens_per_s=%.0f gflops=%.1f gemm_gflops=%.1f mfu=%.3f%s\n",
      o.name, what.c_str(), s.train.precision.c_str(), threads, median, tokens_per_s, gflops, peak,
      gflops / peak, extra.c_str());
  std::fflush(stdout);
  return 0;
}

PTRAIN_BENCH({"step",
              "time training steps (forward, backward, AdamW) of a GPT: ms/step, tokens/s, MFU",
              false, 20, [](CLI::App& sub) -> Action {
                auto a = std::make_shared<BenchStepArgs>();
                sub.add_option("job", a->job, "job spec whose model and batch to time (optional)");
                sub.add_option("--device", a->device, "cpu|cuda")->capture_default_str();
                sub.add_option("--threads", a->threads, "CPU threads (default: the job's, else 1)");
                sub.add_option("--steps", a->steps, "timed steps")->capture_default_str();
                sub.add_option("--warmup", a->warmup, "untimed steps first")->capture_default_str();
                sub.add_option("--precision", a->precision, "fp32|bf16 (default: the job's, fp32)");
                sub.add_option("--model", a->model, "bench|gpt2-124m (without a job)")
                    ->capture_default_str();
                sub.add_option("--batch", a->batch, "sequences per step (default: the model's)");
                sub.add_option("--seq", a->seq, "tokens per sequence (default: the model's)");
                sub.add_flag("--gemm-table", a->gemm_table,
                             "CPU: replay each GEMM of a step on OpenBLAS and oneDNN");
                sub.add_flag("--conv-table", a->conv_table,
                             "CPU: replay each convolution of a step on im2col and oneDNN");
                sub.add_flag("--bn-pool-table", a->bn_pool_table,
                             "CPU: time the batch norm and pooling calls of the timed steps and "
                             "their share of the step");
                return [a] { return bench_step(*a); };
              }});

}  // namespace
}  // namespace ptrain::cli
