// GPT-2 forward/backward over the op table. One buffer holds a microbatch's activations; the
// backward scratch is the model's (backward passes run one at a time, even under 1F1B).
// Tensor parallelism (Megatron-LM): with t = tp_size each rank holds the heads, MLP columns and
// vocabulary rows of its part; the tensor group is summed after every row-parallel GEMM
// (forward) and after every column-parallel input gradient (backward), and the embedding and
// the cross-entropy are vocabulary-parallel, so full logits are never gathered.
#include "gpt/gpt.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "ptrain/core/error.h"
#include "ptrain/nn/gemm_bf16.h"
#include "ptrain/nn/init.h"
#include "ptrain/nn/layers.h"
#include "ptrain/tensor/cpu_kernels.h"
#include "shared/vocab_parallel.h"

namespace ptrain::nn {
namespace {

constexpr int kParamsPerLayer = 12;
enum LayerParam {
  kLn1W,
  kLn1B,
  kQkvW,
  kQkvB,
  kAttProjW,
  kAttProjB,
  kLn2W,
  kLn2B,
  kFcW,
  kFcB,
  kFcProjW,
  kFcProjB
};

// This rank's widths: Dl = D/t (its heads), NHl = NH/t, Fl = 4D/t, Vl = V/t (t = 1: full).
struct LocalDims {
  explicit LocalDims(const GptConfig& c)
      : t(c.tp_size),
        D(c.dim),
        Dl(c.dim / c.tp_size),
        NHl(c.heads / c.tp_size),
        Fl(4 * c.dim / c.tp_size),
        Vl(c.vocab / c.tp_size),
        v0(c.tp_rank * (c.vocab / c.tp_size)) {}
  int t, D, Dl, NHl, Fl, Vl, v0;
};

// Saved tensors of one block, [N = B*T] rows.
struct LayerActs {
  float* ln1;       // [N,D]
  float* ln1_mean;  // [N]
  float* ln1_rstd;  // [N]
  float* qkv;       // [N,3Dl] q|k|v of this rank's heads
  float* atty;      // [N,Dl]
  float* att_lse;   // [B,NHl,T]
  float* res2;      // [N,D] residual after attention
  float* ln2;       // [N,D]
  float* ln2_mean;  // [N]
  float* ln2_rstd;  // [N]
  float* fch;       // [N,Fl]
  float* fch_gelu;  // [N,Fl]
};

}  // namespace

// Named outside the anonymous namespace: Gpt's private helpers take it.
class GptActivations : public Activations {
 public:
  GptActivations(const GptConfig& cfg, int layers, int B, int T) : B_(B), T_(T) {
    const LocalDims ld(cfg);
    const size_t N = static_cast<size_t>(B) * T, D = cfg.dim, Dl = ld.Dl, NHl = ld.NHl, Fl = ld.Fl,
                 V = ld.Vl;
    size_t per_layer = N * (4 * D + 4 * Dl + 2 * Fl) + N * 4 + N * NHl;
    size_t total = N * D * (layers + 1) + per_layer * layers + N * D /*tmp*/;
    if (cfg.has_head) total += N * D + 2 * N + N * V;
    if (!cfg.has_embedding) total += N * D;
    buf_ = tensor::Tensor::zeros({static_cast<int64_t>(total)}, tensor::DType::kF32, cfg.device);
    ids_ = tensor::Tensor::zeros({static_cast<int64_t>(2 * N)}, tensor::DType::kI32, cfg.device);
    float* cur = buf_.data<float>();
    auto take = [&cur](size_t n) {
      float* p = cur;
      cur += n;
      return p;
    };
    resid = take(N * D * (layers + 1));
    for (int l = 0; l < layers; ++l) {
      LayerActs a;
      a.ln1 = take(N * D);
      a.ln1_mean = take(N);
      a.ln1_rstd = take(N);
      a.qkv = take(3 * N * Dl);
      a.atty = take(N * Dl);
      a.att_lse = take(N * NHl);
      a.res2 = take(N * D);
      a.ln2 = take(N * D);
      a.ln2_mean = take(N);
      a.ln2_rstd = take(N);
      a.fch = take(N * Fl);
      a.fch_gelu = take(N * Fl);
      layer.push_back(a);
    }
    tmp = take(N * D);
    if (cfg.has_head) {
      lnf = take(N * D);
      lnf_mean = take(N);
      lnf_rstd = take(N);
      logits = take(N * V);
      xent = std::make_unique<VocabParallelXent>(cfg.device, int(N));
    }
    if (!cfg.has_embedding) dinput = take(N * D);
    tokens = ids_.data<int32_t>();
    tokens_local = tokens + N;
    has_head = cfg.has_head;
    stride = N * D;
  }

  int batch() const override { return B_; }
  int seq() const override { return T_; }
  const float* output() const override {
    return has_head ? nullptr : resid + stride * layer.size();
  }
  const float* input_grad() const override { return dinput; }

  float* resid = nullptr;  // [L+1, N, D]: block inputs, then the stage output
  size_t stride = 0;       // N*D
  std::vector<LayerActs> layer;
  float* tmp = nullptr;  // [N,D] projection output before the residual add
  float *lnf = nullptr, *lnf_mean = nullptr, *lnf_rstd = nullptr;
  float* logits = nullptr;                  // [N,Vl]
  std::unique_ptr<VocabParallelXent> xent;  // the (vocab-parallel) loss of the head
  float* dinput = nullptr;                  // [N,D]
  int32_t* tokens = nullptr;
  // Tensor parallel: tokens as rows of this rank's wte part (Vl = the zero row when another
  // rank holds them).
  int32_t* tokens_local = nullptr;
  bool has_head = false;
  bool forward_done = false;

 private:
  int B_, T_;
  tensor::Tensor buf_, ids_;
};

struct Gpt::Scratch {
  int N = 0;
  tensor::Tensor buf;
  float* dres = nullptr;     // [N,D] gradient of the residual stream
  float* dsmall = nullptr;   // [N,D]
  float* dbig1 = nullptr;    // [N,4D]
  float* dbig2 = nullptr;    // [N,4D] (also dqkv [N,3Dl])
  float* dlogits = nullptr;  // [N,Vl]
};

// Tensor-parallel embedding buffers: this rank's wte part with a zero row appended, so that
// tokens of other ranks embed to 0 ([Vl+1, D]), and its gradient.
struct Gpt::TpBuffers {
  tensor::Tensor buf;
  float* wte_ext = nullptr;   // [Vl+1, D]
  float* dwte_ext = nullptr;  // [Vl+1, D]
  std::vector<int32_t> ids_host;
};

void validate(const GptConfig& c) {
  auto positive = [](int v, const char* key) {
    if (v <= 0) {
      throw ConfigError(fmt::format("model.{} must be positive, got {}", key, v),
                        fmt::format("set model.{} to a positive integer", key));
    }
  };
  positive(c.layers, "layers");
  positive(c.heads, "heads");
  positive(c.dim, "dim");
  positive(c.seq_len, "seq_len");
  positive(c.vocab, "vocab");
  if (c.dim % c.heads != 0) {
    throw ConfigError(
        fmt::format("model.dim {} is not divisible by model.heads {}", c.dim, c.heads),
        "choose dim as a multiple of heads");
  }
  int end = c.layer_end < 0 ? c.layers : c.layer_end;
  if (c.layer_begin < 0 || c.layer_begin > end || end > c.layers) {
    throw ConfigError(fmt::format("pipeline stage layers [{}, {}) outside the model's {} layers",
                                  c.layer_begin, end, c.layers),
                      "use fewer pipeline stages than layers");
  }
  if (c.precision != "fp32" && c.precision != "bf16")
    throw ConfigError(fmt::format("train.precision '{}' is not fp32 or bf16", c.precision),
                      "set train.precision: fp32 or bf16");
  if (c.precision == "bf16" && c.device == tensor::Device::kCpu && !tensor::cpu_has_bf16())
    throw ConfigError("train.precision bf16 on the CPU: " + tensor::cpu_bf16_missing(),
                      "set train.precision: fp32 on this machine, or run on one with AVX512-BF16 "
                      "or AMX (or nodes.device: cuda)");
  positive(c.tp_size, "tensor");
  if (c.heads % c.tp_size != 0 || c.vocab % c.tp_size != 0) {
    throw ConfigError(fmt::format("model.heads {} and model.vocab {} must be divisible by "
                                  "parallel.tensor {}",
                                  c.heads, c.vocab, c.tp_size),
                      "tensor parallelism splits heads and vocabulary; choose multiples");
  }
  PTRAIN_CHECK(c.tp_rank >= 0 && c.tp_rank < c.tp_size, "tp_rank {} outside [0, {})", c.tp_rank,
               c.tp_size);
}

Gpt::Gpt(const GptConfig& config) : Model(config.device), cfg_(config) {
  validate(cfg_);
  if (cfg_.layer_end < 0) cfg_.layer_end = cfg_.layers;
  num_local_layers_ = cfg_.layer_end - cfg_.layer_begin;
  const int64_t D = cfg_.dim, V = cfg_.vocab, T = cfg_.seq_len;
  const int t = cfg_.tp_size, r = cfg_.tp_rank;
  auto idx = [this] { return static_cast<int>(params_.size()); };
  if (cfg_.has_embedding || cfg_.has_head) {
    wte_ = idx();
    add_split_param("wte.weight", {V, D}, 0, t, r);  // vocab-parallel rows
    // Embedding and head on different pipeline stages: each holds wte, the head's is the copy.
    params_.back().tied = cfg_.has_embedding != cfg_.has_head;
    params_.back().tied_copy = params_.back().tied && !cfg_.has_embedding;
  }
  if (cfg_.has_embedding) {
    wpe_ = idx();
    add_param("wpe.weight", {T, D});
  }
  first_layer_param_ = idx();
  for (int l = cfg_.layer_begin; l < cfg_.layer_end; ++l) {
    std::string h = "h." + std::to_string(l) + ".";
    add_param(h + "ln_1.weight", {D});
    add_param(h + "ln_1.bias", {D});
    // Column-parallel c_attn (q, k and v each split by heads), row-parallel c_proj.
    add_split_param(h + "attn.c_attn.weight", {D, 3 * D}, 1, t, r, 3);
    add_split_param(h + "attn.c_attn.bias", {3 * D}, 0, t, r, 3);
    add_split_param(h + "attn.c_proj.weight", {D, D}, 0, t, r);
    add_param(h + "attn.c_proj.bias", {D});
    add_param(h + "ln_2.weight", {D});
    add_param(h + "ln_2.bias", {D});
    add_split_param(h + "mlp.c_fc.weight", {D, 4 * D}, 1, t, r);
    add_split_param(h + "mlp.c_fc.bias", {4 * D}, 0, t, r);
    add_split_param(h + "mlp.c_proj.weight", {4 * D, D}, 0, t, r);
    add_param(h + "mlp.c_proj.bias", {D});
  }
  if (cfg_.has_head) {
    lnfw_ = idx();
    add_param("ln_f.weight", {D});
    lnfb_ = idx();
    add_param("ln_f.bias", {D});
  }
  allocate_params();
  if (t > 1) {
    tp_ = std::make_unique<TpBuffers>();
    const size_t ext = cfg_.has_embedding ? size_t(V / t + 1) * D : 0;
    tp_->buf = tensor::Tensor::zeros({int64_t(2 * ext + 1)}, tensor::DType::kF32, device_);
    tp_->wte_ext = tp_->buf.data<float>();
    tp_->dwte_ext = tp_->wte_ext + ext;
  }
  if (cfg_.precision == "bf16")
    bf16_ = std::make_unique<Bf16Gemms>(ops(), param_data(), num_params());
}

Gpt::~Gpt() = default;

void Gpt::init(uint64_t seed) {
  const float std_proj = 0.02f / std::sqrt(2.0f * static_cast<float>(cfg_.layers));
  // The full tensor's values, then this rank's part: a split model starts as the unsplit one.
  // An unsplit tensor of a CPU model is written in place; the others go through one host buffer
  // (not cleared first: every element is written below) and are copied.
  size_t staging = 0;
  for (const ParamInfo& info : params_)
    if (device_ != tensor::Device::kCpu || info.is_split())
      staging = std::max(staging, info.full_numel() + (info.is_split() ? info.numel : 0));
  auto host = std::make_unique_for_overwrite<float[]>(std::max<size_t>(staging, 1));
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamInfo& info = params_[i];
    const bool in_place = device_ == tensor::Device::kCpu && !info.is_split();
    float* full = in_place ? param_data() + info.offset : host.get();
    const size_t n = info.full_numel();
    const std::string& name = info.name;
    auto ends_with = [&name](const char* s) { return name.ends_with(s); };
    bool is_ln = name.find("ln_") != std::string::npos;
    if (is_ln && ends_with(".weight")) {
      std::fill_n(full, n, 1.0f);
    } else if (ends_with(".bias")) {
      std::fill_n(full, n, 0.0f);
    } else if (ends_with("c_proj.weight")) {
      fill_normal(full, n, param_key(seed, name), 0.0f, std_proj);
    } else {
      fill_normal(full, n, param_key(seed, name), 0.0f, 0.02f);
    }
    if (in_place) continue;
    const float* src = full;
    if (info.is_split()) {
      float* local = host.get() + n;
      copy_shard_from_full(info, info.split_rank, full, local);
      src = local;
    }
    ops().copy_from_host(param_data() + info.offset, src, info.numel * sizeof(float));
  }
}

std::unique_ptr<Activations> Gpt::make_activations(int B, int T) const {
  if (T <= 0 || T > cfg_.seq_len) {
    throw ConfigError(
        fmt::format("sequence length {} outside [1, model.seq_len = {}]", T, cfg_.seq_len));
  }
  PTRAIN_CHECK(B > 0, "batch {} must be positive", B);
  return std::make_unique<GptActivations>(cfg_, num_local_layers_, B, T);
}

void Gpt::ensure_scratch(int N) {
  if (scratch_ && scratch_->N >= N) return;
  auto s = std::make_unique<Scratch>();
  const size_t n = N, D = cfg_.dim, V = cfg_.vocab / cfg_.tp_size;
  size_t total = 2 * n * D + 8 * n * D + (cfg_.has_head ? n * V : 0);
  s->N = N;
  s->buf = tensor::Tensor::zeros({static_cast<int64_t>(total)}, tensor::DType::kF32, device_);
  float* cur = s->buf.data<float>();
  s->dres = cur;
  s->dsmall = cur + n * D;
  s->dbig1 = cur + 2 * n * D;
  s->dbig2 = cur + 6 * n * D;
  s->dlogits = cfg_.has_head ? cur + 10 * n * D : nullptr;
  scratch_ = std::move(s);
}

void Gpt::tp_allreduce(float* data, size_t count) {
  if (cfg_.tp_size == 1) return;
  tp_comm_->allreduce_sum(data, count);
}

// out [N,OC] = inp [N,IC_local] . weight [IC_local,OC] summed over the tensor group, + bias.
void Gpt::row_parallel_forward(float* out, const float* inp, const float* weight, const float* bias,
                               int N, int IC, int OC) {
  const tensor::Ops& o = ops();
  if (cfg_.tp_size == 1) {
    fc_forward(out, inp, weight, bias, N, IC, OC);
    return;
  }
  fc_forward(out, inp, weight, nullptr, N, IC, OC);
  tp_comm_->allreduce_sum(out, static_cast<size_t>(N) * OC);
  o.bias_add(out, bias, N, OC);  // once, after the sum
}

void Gpt::embed_vocab_parallel(GptActivations& a, const int32_t* tokens, int B, int T) {
  const tensor::Ops& o = ops();
  const LocalDims ld(cfg_);
  const int N = B * T;
  auto& ids = tp_->ids_host;
  ids.resize(N);
  for (int i = 0; i < N; ++i) {
    int local = tokens[i] - ld.v0;
    ids[i] = local >= 0 && local < ld.Vl ? local : ld.Vl;  // the zero row
  }
  o.copy_from_host(a.tokens_local, ids.data(), sizeof(int32_t) * N);
  o.copy(tp_->wte_ext, p(wte_), sizeof(float) * ld.Vl * ld.D);
  // One rank adds the positions, so the sum over the group is wte[token] + wpe[t].
  o.embedding_forward(a.resid, a.tokens_local, tp_->wte_ext, cfg_.tp_rank == 0 ? p(wpe_) : nullptr,
                      B, T, ld.D);
  tp_comm_->allreduce_sum(a.resid, static_cast<size_t>(N) * ld.D);
}

std::vector<int64_t> Gpt::boundary_shape(int B, int T) const {
  return {B, T, cfg_.dim};
}

double Gpt::forward(const Batch& batch, Activations& acts_base) {
  auto& a = dynamic_cast<GptActivations&>(acts_base);
  PTRAIN_CHECK(batch.B == a.batch() && batch.T == a.seq(),
               "batch [{}, {}] does not match activations [{}, {}]", batch.B, batch.T, a.batch(),
               a.seq());
  PTRAIN_CHECK(cfg_.tp_size == 1 || tp_comm_ != nullptr,
               "a tensor-parallel GPT needs set_tensor_parallel_comm before forward");
  const tensor::Ops& o = ops();
  const LocalDims ld(cfg_);
  const int B = batch.B, T = batch.T, N = B * T, D = cfg_.dim, V = cfg_.vocab;
  const int Dl = ld.Dl, NHl = ld.NHl, Fl = ld.Fl;
  const size_t ND = static_cast<size_t>(N) * D;
  if (bf16_) bf16_->refresh();  // the weights may have changed since the last forward

  const int32_t* tokens = batch.i32("tokens");
  const int32_t* targets = batch.i32("targets");
  if (cfg_.has_embedding) {
    PTRAIN_CHECK(tokens != nullptr, "the first stage needs tokens");
    for (int i = 0; i < N; ++i) {
      if (tokens[i] < 0 || tokens[i] >= V) {
        throw ConfigError(
            fmt::format("token id {} at position {} is outside the vocabulary [0, {})", tokens[i],
                        i, V),
            "check the data set against model.vocab");
      }
    }
    o.copy_from_host(a.tokens, tokens, sizeof(int32_t) * N);
    if (ld.t == 1)
      o.embedding_forward(a.resid, a.tokens, p(wte_), p(wpe_), B, T, D);
    else
      embed_vocab_parallel(a, tokens, B, T);
  } else {
    PTRAIN_CHECK(batch.input != nullptr, "a stage without the embedding needs input activations");
    o.copy(a.resid, batch.input, sizeof(float) * ND);
  }

  for (int l = 0; l < num_local_layers_; ++l) {
    const LayerActs& L = a.layer[l];
    const int pi = first_layer_param_ + kParamsPerLayer * l;
    const float* res_in = a.resid + ND * l;
    float* res_out = a.resid + ND * (l + 1);
    o.layernorm_forward(L.ln1, L.ln1_mean, L.ln1_rstd, res_in, p(pi + kLn1W), p(pi + kLn1B), N, D);
    fc_forward(L.qkv, L.ln1, p(pi + kQkvW), p(pi + kQkvB), N, D, 3 * Dl);
    o.attention_forward(L.atty, L.att_lse, L.qkv, B, T, Dl, NHl);
    row_parallel_forward(a.tmp, L.atty, p(pi + kAttProjW), p(pi + kAttProjB), N, Dl, D);
    o.add(L.res2, res_in, a.tmp, ND);
    o.layernorm_forward(L.ln2, L.ln2_mean, L.ln2_rstd, L.res2, p(pi + kLn2W), p(pi + kLn2B), N, D);
    fc_forward(L.fch, L.ln2, p(pi + kFcW), p(pi + kFcB), N, D, Fl);
    o.gelu_forward(L.fch_gelu, L.fch, static_cast<size_t>(N) * Fl);
    row_parallel_forward(a.tmp, L.fch_gelu, p(pi + kFcProjW), p(pi + kFcProjB), N, Fl, D);
    o.add(res_out, L.res2, a.tmp, ND);
  }

  double loss_sum = 0.0;
  if (cfg_.has_head) {
    PTRAIN_CHECK(targets != nullptr, "the last stage needs targets");
    for (int i = 0; i < N; ++i) {
      if (targets[i] >= V) {
        throw ConfigError(fmt::format("target id {} at position {} is outside the vocabulary "
                                      "[0, {})",
                                      targets[i], i, V),
                          "check the data set against model.vocab");
      }
    }
    const float* last = a.resid + ND * num_local_layers_;
    o.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, p(lnfw_), p(lnfb_), N, D);
    head_forward(a.logits, a.lnf, N, ld.Vl);
    // Vocabulary-parallel under tensor parallelism (shared/vocab_parallel.h).
    loss_sum = a.xent->forward(o, ld.t > 1 ? tp_comm_ : nullptr, a.logits, targets, N,
                               VocabPart::of(V, ld.t, cfg_.tp_rank));
  }
  a.forward_done = true;
  return loss_sum;
}

void Gpt::backward(Activations& acts_base, float dloss_scale, const float* doutput) {
  auto& a = dynamic_cast<GptActivations&>(acts_base);
  PTRAIN_CHECK(a.forward_done, "backward without a forward on these activations");
  const tensor::Ops& o = ops();
  const LocalDims ld(cfg_);
  const int B = a.batch(), T = a.seq(), N = B * T, D = cfg_.dim;
  const int Dl = ld.Dl, NHl = ld.NHl, Fl = ld.Fl, Vl = ld.Vl;
  const size_t ND = static_cast<size_t>(N) * D;
  ensure_scratch(N);
  Scratch& s = *scratch_;

  if (cfg_.has_head) {
    a.xent->backward(o, s.dlogits, a.logits, dloss_scale, N, Vl);
    head_backward(s.dsmall, s.dlogits, a.lnf, N, Vl);
    tp_allreduce(s.dsmall, ND);  // the head is column-parallel over the vocabulary
    o.fill(s.dres, 0.0f, ND);
    const float* last = a.resid + ND * num_local_layers_;
    o.layernorm_backward(s.dres, g(lnfw_), g(lnfb_), s.dsmall, last, p(lnfw_), a.lnf_mean,
                         a.lnf_rstd, N, D);
    grad_ready(lnfb_);
    grad_ready(lnfw_);
    if (!cfg_.has_embedding) grad_ready(wte_);
  } else {
    PTRAIN_CHECK(doutput != nullptr, "a stage without the head needs the output gradient");
    o.copy(s.dres, doutput, sizeof(float) * ND);
  }

  const size_t NF = static_cast<size_t>(N) * Fl;
  for (int l = num_local_layers_ - 1; l >= 0; --l) {
    const LayerActs& L = a.layer[l];
    const int pi = first_layer_param_ + kParamsPerLayer * l;
    const float* res_in = a.resid + ND * l;
    // MLP: res3 = res2 + c_proj(gelu(c_fc(ln_2(res2)))); dres holds d res3 = d res2 (residual).
    fc_backward(s.dbig1, g(pi + kFcProjW), g(pi + kFcProjB), s.dres, L.fch_gelu, p(pi + kFcProjW),
                N, Fl, D);
    o.fill(s.dbig2, 0.0f, NF);
    o.gelu_backward(s.dbig2, L.fch, s.dbig1, NF);
    fc_backward(s.dsmall, g(pi + kFcW), g(pi + kFcB), s.dbig2, L.ln2, p(pi + kFcW), N, D, Fl);
    tp_allreduce(s.dsmall, ND);  // c_fc is column-parallel
    o.layernorm_backward(s.dres, g(pi + kLn2W), g(pi + kLn2B), s.dsmall, L.res2, p(pi + kLn2W),
                         L.ln2_mean, L.ln2_rstd, N, D);
    // Attention: res2 = res_in + c_proj(attn(c_attn(ln_1(res_in)))).
    fc_backward(s.dsmall, g(pi + kAttProjW), g(pi + kAttProjB), s.dres, L.atty, p(pi + kAttProjW),
                N, Dl, D);
    float* dqkv = s.dbig2;
    o.fill(dqkv, 0.0f, static_cast<size_t>(N) * 3 * Dl);
    o.attention_backward(dqkv, s.dsmall, L.qkv, L.atty, L.att_lse, B, T, Dl, NHl);
    fc_backward(s.dbig1, g(pi + kQkvW), g(pi + kQkvB), dqkv, L.ln1, p(pi + kQkvW), N, D, 3 * Dl);
    tp_allreduce(s.dbig1, ND);  // c_attn is column-parallel
    o.layernorm_backward(s.dres, g(pi + kLn1W), g(pi + kLn1B), s.dbig1, res_in, p(pi + kLn1W),
                         L.ln1_mean, L.ln1_rstd, N, D);
    for (int k = kParamsPerLayer - 1; k >= 0; --k) grad_ready(pi + k);
  }

  if (cfg_.has_embedding) {
    if (ld.t == 1) {
      o.embedding_backward(g(wte_), g(wpe_), s.dres, a.tokens, B, T, D);
    } else {
      // dres is the same on every rank of the group, so wpe's gradient is too.
      o.fill(tp_->dwte_ext, 0.0f, static_cast<size_t>(Vl + 1) * D);
      o.embedding_backward(tp_->dwte_ext, g(wpe_), s.dres, a.tokens_local, B, T, D);
      o.accumulate(g(wte_), tp_->dwte_ext, static_cast<size_t>(Vl) * D);
    }
    grad_ready(wpe_);
    grad_ready(wte_);
  } else {
    o.copy(a.dinput, s.dres, sizeof(float) * ND);
  }
}

const float* Gpt::logits(const Activations& acts_base) const {
  const auto& a = dynamic_cast<const GptActivations&>(acts_base);
  PTRAIN_CHECK(a.has_head && a.forward_done, "logits need a forward pass on a stage with the head");
  return a.logits;
}

void Gpt::fc_forward(float* out, const float* inp, const float* w, const float* b, int N, int IC,
                     int OC) {
  if (bf16_)
    bf16_->conv1d_forward(out, inp, w, b, N, IC, OC);
  else
    conv1d_forward(ops(), out, inp, w, b, N, IC, OC);
}

void Gpt::fc_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                      const float* w, int N, int IC, int OC) {
  if (bf16_)
    bf16_->conv1d_backward(dinp, dw, db, dout, inp, w, N, IC, OC);
  else
    conv1d_backward(ops(), dinp, dw, db, dout, inp, w, N, IC, OC);
}

void Gpt::head_forward(float* logits, const float* inp, int N, int V) {
  if (bf16_)
    bf16_->linear_forward(logits, inp, p(wte_), N, cfg_.dim, V);
  else
    lm_head_forward(ops(), logits, inp, p(wte_), N, cfg_.dim, V);
}

void Gpt::head_backward(float* dinp, const float* dlogits, const float* inp, int N, int V) {
  if (bf16_)
    bf16_->linear_backward(dinp, g(wte_), dlogits, inp, p(wte_), N, cfg_.dim, V);
  else
    lm_head_backward(ops(), dinp, g(wte_), dlogits, inp, p(wte_), N, cfg_.dim, V);
}

double Gpt::train_flops(int B, int T) const {
  const double D = cfg_.dim, N = static_cast<double>(B) * T;
  double matmul_params = 12.0 * D * D * num_local_layers_;
  if (cfg_.has_head) matmul_params += static_cast<double>(cfg_.vocab) * D;
  // 6 FLOPs per matmul weight per token; attention scores and mixing: 12 * T * D per token.
  // A tensor-parallel rank does 1/t of both.
  return (6.0 * N * matmul_params + 12.0 * N * T * D * num_local_layers_) / cfg_.tp_size;
}

}  // namespace ptrain::nn
