// GPT-2 forward/backward over the op table. One buffer holds a microbatch's activations; the
// backward scratch is the model's (backward passes run one at a time, even under 1F1B).
#include "ptrain/nn/gpt.h"

#include <cmath>
#include <string>

#include "ptrain/core/error.h"
#include "ptrain/nn/init.h"
#include "ptrain/nn/layers.h"

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

// Saved tensors of one block, [N = B*T] rows.
struct LayerActs {
  float* ln1;       // [N,D]
  float* ln1_mean;  // [N]
  float* ln1_rstd;  // [N]
  float* qkv;       // [N,3D]
  float* atty;      // [N,D]
  float* att_lse;   // [B,NH,T]
  float* res2;      // [N,D] residual after attention
  float* ln2;       // [N,D]
  float* ln2_mean;  // [N]
  float* ln2_rstd;  // [N]
  float* fch;       // [N,4D]
  float* fch_gelu;  // [N,4D]
};

class GptActivations : public Activations {
 public:
  GptActivations(const GptConfig& cfg, int layers, int B, int T) : B_(B), T_(T) {
    const size_t N = static_cast<size_t>(B) * T, D = cfg.dim, NH = cfg.heads, V = cfg.vocab;
    size_t per_layer = N * D * 15 + N * 4 + N * NH;
    size_t total = N * D * (layers + 1) + per_layer * layers + N * D /*tmp*/;
    if (cfg.has_head) total += N * D + 2 * N + N * V + 2 * N;
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
      a.qkv = take(3 * N * D);
      a.atty = take(N * D);
      a.att_lse = take(N * NH);
      a.res2 = take(N * D);
      a.ln2 = take(N * D);
      a.ln2_mean = take(N);
      a.ln2_rstd = take(N);
      a.fch = take(4 * N * D);
      a.fch_gelu = take(4 * N * D);
      layer.push_back(a);
    }
    tmp = take(N * D);
    if (cfg.has_head) {
      lnf = take(N * D);
      lnf_mean = take(N);
      lnf_rstd = take(N);
      logits = take(N * V);
      ce_lse = take(N);
      losses = take(N);
      losses_host.resize(N);
    }
    if (!cfg.has_embedding) dinput = take(N * D);
    tokens = ids_.data<int32_t>();
    targets = tokens + N;
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
  float* logits = nullptr;  // [N,V]
  float* ce_lse = nullptr;  // [N]
  float* losses = nullptr;  // [N]
  float* dinput = nullptr;  // [N,D]
  int32_t* tokens = nullptr;
  int32_t* targets = nullptr;
  std::vector<float> losses_host;
  bool has_head = false;
  bool forward_done = false;

 private:
  int B_, T_;
  tensor::Tensor buf_, ids_;
};

}  // namespace

struct Gpt::Scratch {
  int N = 0;
  tensor::Tensor buf;
  float* dres = nullptr;     // [N,D] gradient of the residual stream
  float* dsmall = nullptr;   // [N,D]
  float* dbig1 = nullptr;    // [N,4D]
  float* dbig2 = nullptr;    // [N,4D] (also dqkv [N,3D])
  float* dlogits = nullptr;  // [N,V]
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
  if (c.tp_size != 1) {
    throw ConfigError(
        fmt::format("tensor parallelism (tp_size {}) is not implemented for the GPT model yet",
                    c.tp_size),
        "set parallel.tensor: 1");
  }
}

Gpt::Gpt(const GptConfig& config) : Model(config.device), cfg_(config) {
  validate(cfg_);
  if (cfg_.layer_end < 0) cfg_.layer_end = cfg_.layers;
  num_local_layers_ = cfg_.layer_end - cfg_.layer_begin;
  const int64_t D = cfg_.dim, V = cfg_.vocab, T = cfg_.seq_len;
  auto idx = [this] { return static_cast<int>(params_.size()); };
  if (cfg_.has_embedding || cfg_.has_head) {
    wte_ = idx();
    add_param("wte.weight", {V, D});
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
    add_param(h + "attn.c_attn.weight", {D, 3 * D});
    add_param(h + "attn.c_attn.bias", {3 * D});
    add_param(h + "attn.c_proj.weight", {D, D});
    add_param(h + "attn.c_proj.bias", {D});
    add_param(h + "ln_2.weight", {D});
    add_param(h + "ln_2.bias", {D});
    add_param(h + "mlp.c_fc.weight", {D, 4 * D});
    add_param(h + "mlp.c_fc.bias", {4 * D});
    add_param(h + "mlp.c_proj.weight", {4 * D, D});
    add_param(h + "mlp.c_proj.bias", {D});
  }
  if (cfg_.has_head) {
    lnfw_ = idx();
    add_param("ln_f.weight", {D});
    lnfb_ = idx();
    add_param("ln_f.bias", {D});
  }
  allocate_params();
}

Gpt::~Gpt() = default;

void Gpt::init(uint64_t seed) {
  const float std_proj = 0.02f / std::sqrt(2.0f * static_cast<float>(cfg_.layers));
  std::vector<float> host;
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamInfo& info = params_[i];
    host.assign(info.numel, 0.0f);
    const std::string& n = info.name;
    auto ends_with = [&n](const char* s) { return n.ends_with(s); };
    bool is_ln = n.find("ln_") != std::string::npos;
    if (is_ln && ends_with(".weight")) {
      host.assign(info.numel, 1.0f);
    } else if (ends_with(".bias")) {
      // zeros
    } else if (ends_with("c_proj.weight")) {
      fill_normal(host.data(), info.numel, param_key(seed, n), 0.0f, std_proj);
    } else {
      fill_normal(host.data(), info.numel, param_key(seed, n), 0.0f, 0.02f);
    }
    ops().copy_from_host(param_data() + info.offset, host.data(), info.numel * sizeof(float));
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
  const size_t n = N, D = cfg_.dim, V = cfg_.vocab;
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

double Gpt::forward(const Batch& batch, Activations& acts_base) {
  auto& a = dynamic_cast<GptActivations&>(acts_base);
  PTRAIN_CHECK(batch.B == a.batch() && batch.T == a.seq(),
               "batch [{}, {}] does not match activations [{}, {}]", batch.B, batch.T, a.batch(),
               a.seq());
  const tensor::Ops& o = ops();
  const int B = batch.B, T = batch.T, N = B * T, D = cfg_.dim, NH = cfg_.heads, V = cfg_.vocab;
  const size_t ND = static_cast<size_t>(N) * D;

  if (cfg_.has_embedding) {
    PTRAIN_CHECK(batch.tokens != nullptr, "the first stage needs tokens");
    for (int i = 0; i < N; ++i) {
      if (batch.tokens[i] < 0 || batch.tokens[i] >= V) {
        throw ConfigError(
            fmt::format("token id {} at position {} is outside the vocabulary [0, {})",
                        batch.tokens[i], i, V),
            "check the data set against model.vocab");
      }
    }
    o.copy_from_host(a.tokens, batch.tokens, sizeof(int32_t) * N);
    o.embedding_forward(a.resid, a.tokens, p(wte_), p(wpe_), B, T, D);
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
    conv1d_forward(o, L.qkv, L.ln1, p(pi + kQkvW), p(pi + kQkvB), N, D, 3 * D);
    o.attention_forward(L.atty, L.att_lse, L.qkv, B, T, D, NH);
    conv1d_forward(o, a.tmp, L.atty, p(pi + kAttProjW), p(pi + kAttProjB), N, D, D);
    o.add(L.res2, res_in, a.tmp, ND);
    o.layernorm_forward(L.ln2, L.ln2_mean, L.ln2_rstd, L.res2, p(pi + kLn2W), p(pi + kLn2B), N, D);
    conv1d_forward(o, L.fch, L.ln2, p(pi + kFcW), p(pi + kFcB), N, D, 4 * D);
    o.gelu_forward(L.fch_gelu, L.fch, ND * 4);
    conv1d_forward(o, a.tmp, L.fch_gelu, p(pi + kFcProjW), p(pi + kFcProjB), N, 4 * D, D);
    o.add(res_out, L.res2, a.tmp, ND);
  }

  double loss_sum = 0.0;
  if (cfg_.has_head) {
    PTRAIN_CHECK(batch.targets != nullptr, "the last stage needs targets");
    for (int i = 0; i < N; ++i) {
      if (batch.targets[i] >= V) {
        throw ConfigError(fmt::format("target id {} at position {} is outside the vocabulary "
                                      "[0, {})",
                                      batch.targets[i], i, V),
                          "check the data set against model.vocab");
      }
    }
    o.copy_from_host(a.targets, batch.targets, sizeof(int32_t) * N);
    const float* last = a.resid + ND * num_local_layers_;
    o.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, p(lnfw_), p(lnfb_), N, D);
    lm_head_forward(o, a.logits, a.lnf, p(wte_), N, D, V);
    o.crossentropy_forward(a.losses, a.ce_lse, a.logits, a.targets, N, V);
    o.copy_to_host(a.losses_host.data(), a.losses, sizeof(float) * N);
    for (int i = 0; i < N; ++i) loss_sum += a.losses_host[i];
  }
  a.forward_done = true;
  return loss_sum;
}

void Gpt::backward(Activations& acts_base, float dloss_scale, const float* doutput) {
  auto& a = dynamic_cast<GptActivations&>(acts_base);
  PTRAIN_CHECK(a.forward_done, "backward without a forward on these activations");
  const tensor::Ops& o = ops();
  const int B = a.batch(), T = a.seq(), N = B * T, D = cfg_.dim, NH = cfg_.heads, V = cfg_.vocab;
  const size_t ND = static_cast<size_t>(N) * D;
  ensure_scratch(N);
  Scratch& s = *scratch_;

  if (cfg_.has_head) {
    o.crossentropy_backward(s.dlogits, a.logits, a.ce_lse, a.targets, dloss_scale, N, V);
    lm_head_backward(o, s.dsmall, g(wte_), s.dlogits, a.lnf, p(wte_), N, D, V);
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

  for (int l = num_local_layers_ - 1; l >= 0; --l) {
    const LayerActs& L = a.layer[l];
    const int pi = first_layer_param_ + kParamsPerLayer * l;
    const float* res_in = a.resid + ND * l;
    // MLP: res3 = res2 + c_proj(gelu(c_fc(ln_2(res2)))); dres holds d res3 = d res2 (residual).
    conv1d_backward(o, s.dbig1, g(pi + kFcProjW), g(pi + kFcProjB), s.dres, L.fch_gelu,
                    p(pi + kFcProjW), N, 4 * D, D);
    o.fill(s.dbig2, 0.0f, ND * 4);
    o.gelu_backward(s.dbig2, L.fch, s.dbig1, ND * 4);
    conv1d_backward(o, s.dsmall, g(pi + kFcW), g(pi + kFcB), s.dbig2, L.ln2, p(pi + kFcW), N, D,
                    4 * D);
    o.layernorm_backward(s.dres, g(pi + kLn2W), g(pi + kLn2B), s.dsmall, L.res2, p(pi + kLn2W),
                         L.ln2_mean, L.ln2_rstd, N, D);
    // Attention: res2 = res_in + c_proj(attn(c_attn(ln_1(res_in)))).
    conv1d_backward(o, s.dsmall, g(pi + kAttProjW), g(pi + kAttProjB), s.dres, L.atty,
                    p(pi + kAttProjW), N, D, D);
    float* dqkv = s.dbig2;
    o.fill(dqkv, 0.0f, ND * 3);
    o.attention_backward(dqkv, s.dsmall, L.qkv, L.atty, L.att_lse, B, T, D, NH);
    conv1d_backward(o, s.dbig1, g(pi + kQkvW), g(pi + kQkvB), dqkv, L.ln1, p(pi + kQkvW), N, D,
                    3 * D);
    o.layernorm_backward(s.dres, g(pi + kLn1W), g(pi + kLn1B), s.dbig1, res_in, p(pi + kLn1W),
                         L.ln1_mean, L.ln1_rstd, N, D);
    for (int k = kParamsPerLayer - 1; k >= 0; --k) grad_ready(pi + k);
  }

  if (cfg_.has_embedding) {
    o.embedding_backward(g(wte_), g(wpe_), s.dres, a.tokens, B, T, D);
    grad_ready(wpe_);
    grad_ready(wte_);
  } else {
    o.copy(a.dinput, s.dres, sizeof(float) * ND);
  }
}

double Gpt::train_flops(int B, int T) const {
  const double D = cfg_.dim, N = static_cast<double>(B) * T;
  double matmul_params = 12.0 * D * D * num_local_layers_;
  if (cfg_.has_head) matmul_params += static_cast<double>(cfg_.vocab) * D;
  // 6 FLOPs per matmul weight per token; attention scores and mixing: 12 * T * D per token.
  return 6.0 * N * matmul_params + 12.0 * N * T * D * num_local_layers_;
}

}  // namespace ptrain::nn
