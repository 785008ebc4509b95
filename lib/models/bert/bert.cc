// BERT forward/backward on the CPU (bert.h). One buffer holds a microbatch's activations; the
// backward scratch is the model's (backward passes run one at a time, even under 1F1B).
// Tensor parallelism (Megatron-LM): the tensor group is summed after every row-parallel GEMM
// (forward), after every column-parallel input gradient (backward), after the vocabulary-
// parallel embedding lookup and the head's input gradient; the loss is vocabulary-parallel
// (shared/vocab_parallel.h), so full logits are never gathered.
#include "bert/bert.h"

#include <fmt/format.h>

#include <cmath>
#include <string>

#include "bert/bert_layers.h"
#include "ptrain/core/error.h"
#include "ptrain/nn/init.h"
#include "ptrain/nn/layers.h"
#include "shared/vocab_parallel.h"

namespace ptrain::nn {
namespace {

constexpr float kLnEps = 1e-12f;  // HF BertConfig.layer_norm_eps
constexpr int kParamsPerLayer = 16;
enum LayerParam {
  kQW,
  kQB,
  kKW,
  kKB,
  kVW,
  kVB,
  kAttOutW,
  kAttOutB,
  kLn1W,
  kLn1B,
  kInterW,
  kInterB,
  kOutW,
  kOutB,
  kLn2W,
  kLn2B
};

// Saved tensors of one block, N = B*T rows; Dl = D/t (this rank's heads), Fl = 4D/t.
struct LayerActs {
  float *q, *k, *v, *ctx;      // [N,Dl] each
  float* probs;                // [B,NHl,T,T]
  float *h1_pre, *h1;          // [N,D] x + attention, its LayerNorm
  float *ln1_mean, *ln1_rstd;  // [N]
  float *f, *gf;               // [N,Fl] intermediate, its GELU
  float* h2_pre;               // [N,D] h1 + output (its LayerNorm is the block output)
  float *ln2_mean, *ln2_rstd;  // [N]
};

}  // namespace

struct Bert::Dims {
  explicit Dims(const BertConfig& c)
      : t(c.tp_size),
        D(c.dim),
        Dl(c.dim / c.tp_size),
        NHl(c.heads / c.tp_size),
        HD(c.dim / c.heads),
        Fl(4 * c.dim / c.tp_size),
        part(VocabPart::of(c.vocab, c.tp_size, c.tp_rank)) {}
  int t, D, Dl, NHl, HD, Fl;
  VocabPart part;
};

namespace {

class BertActivations : public Activations {
 public:
  BertActivations(const BertConfig& cfg, int layers, int B, int T) : B_(B), T_(T) {
    const size_t N = size_t(B) * T, D = cfg.dim, Dl = cfg.dim / cfg.tp_size,
                 NHl = cfg.heads / cfg.tp_size, Fl = 4 * size_t(cfg.dim) / cfg.tp_size;
    const size_t Vl = size_t(VocabPart::of(cfg.vocab, cfg.tp_size, cfg.tp_rank).size);
    const size_t per_layer = 4 * N * Dl + B * NHl * size_t(T) * T + 3 * N * D + 4 * N + 2 * N * Fl;
    size_t total = N * D * (layers + 1) + per_layer * layers;
    if (cfg.has_embedding) total += N * D + 2 * N;
    if (cfg.has_head) total += 3 * N * D + 2 * N + N * Vl;
    if (!cfg.has_embedding) total += N * D;
    buf_ = tensor::Tensor::zeros({int64_t(total)}, tensor::DType::kF32, tensor::Device::kCpu);
    float* cur = buf_.data<float>();
    auto take = [&cur](size_t n) {
      float* p = cur;
      cur += n;
      return p;
    };
    resid = take(N * D * (layers + 1));
    for (int l = 0; l < layers; ++l) {
      LayerActs a;
      a.q = take(N * Dl);
      a.k = take(N * Dl);
      a.v = take(N * Dl);
      a.ctx = take(N * Dl);
      a.probs = take(B * NHl * size_t(T) * T);
      a.h1_pre = take(N * D);
      a.h1 = take(N * D);
      a.ln1_mean = take(N);
      a.ln1_rstd = take(N);
      a.f = take(N * Fl);
      a.gf = take(N * Fl);
      a.h2_pre = take(N * D);
      a.ln2_mean = take(N);
      a.ln2_rstd = take(N);
      layer.push_back(a);
    }
    if (cfg.has_embedding) {
      emb = take(N * D);
      emb_mean = take(N);
      emb_rstd = take(N);
    }
    if (cfg.has_head) {
      t1 = take(N * D);
      t2 = take(N * D);
      t3 = take(N * D);
      t3_mean = take(N);
      t3_rstd = take(N);
      logits = take(N * Vl);
      xent = std::make_unique<VocabParallelXent>(tensor::Device::kCpu, int(N));
    }
    if (!cfg.has_embedding) dinput = take(N * D);
    has_head = cfg.has_head;
    stride = N * D;
  }

  int batch() const override { return B_; }
  int seq() const override { return T_; }
  const float* output() const override {
    return has_head ? nullptr : resid + stride * layer.size();
  }
  const float* input_grad() const override { return dinput; }

  float* resid = nullptr;  // [L+1,N,D]: the stage input (embedding output), block outputs
  size_t stride = 0;       // N*D
  std::vector<LayerActs> layer;
  float *emb = nullptr, *emb_mean = nullptr, *emb_rstd = nullptr;  // word + position + type
  float *t1 = nullptr, *t2 = nullptr, *t3 = nullptr;               // head: dense, GELU, LN
  float *t3_mean = nullptr, *t3_rstd = nullptr;
  float* logits = nullptr;      // [N,Vl] this rank's vocabulary columns
  float* dinput = nullptr;      // [N,D]
  std::vector<int32_t> tokens;  // [N] host, for the embedding backward
  std::unique_ptr<VocabParallelXent> xent;
  double eval_correct = 0, eval_count = 0;
  bool has_head = false;
  bool forward_done = false;

 private:
  int B_, T_;
  tensor::Tensor buf_;
};

}  // namespace

struct Bert::Scratch {
  int N = 0;
  tensor::Tensor buf;
  float *dres, *a, *b, *c;     // [N,D]
  float *dg, *df;              // [N,Fl]
  float *dq, *dk, *dv, *dctx;  // [N,Dl]
  float* att;                  // [T*T] per head
  float* dlogits;              // [N,Vl]
};

void validate(const BertConfig& c) {
  auto positive = [](int v, const char* key) {
    if (v <= 0)
      throw ConfigError(fmt::format("model.{} must be positive, got {}", key, v),
                        fmt::format("set model.{} to a positive integer", key));
  };
  positive(c.layers, "layers");
  positive(c.heads, "heads");
  positive(c.dim, "dim");
  positive(c.seq_len, "seq_len");
  positive(c.vocab, "vocab");
  positive(c.tp_size, "tensor");
  if (c.dim % c.heads != 0)
    throw ConfigError(
        fmt::format("model.dim {} is not divisible by model.heads {}", c.dim, c.heads),
        "choose dim as a multiple of heads");
  if (c.heads % c.tp_size != 0)
    throw ConfigError(
        fmt::format("model.heads {} is not divisible by parallel.tensor {}", c.heads, c.tp_size),
        "tensor parallelism splits the heads; make heads a multiple of tensor");
  if (VocabPart::of(c.vocab, c.tp_size, c.tp_size - 1).size <= 0)
    throw ConfigError(
        fmt::format("model.vocab {} is too small for parallel.tensor {}", c.vocab, c.tp_size),
        "every tensor rank needs a part of the vocabulary");
  if (c.positions != 0 && c.positions < c.seq_len)
    throw ConfigError(fmt::format("model.seq_len {} is larger than the position table's {} rows",
                                  c.seq_len, c.positions),
                      "lower model.seq_len");
  const int end = c.layer_end < 0 ? c.layers : c.layer_end;
  if (c.layer_begin < 0 || c.layer_begin > end || end > c.layers)
    throw ConfigError(fmt::format("pipeline stage layers [{}, {}) outside the model's {} layers",
                                  c.layer_begin, end, c.layers),
                      "use fewer pipeline stages than layers");
  PTRAIN_CHECK(c.tp_rank >= 0 && c.tp_rank < c.tp_size, "tp_rank {} outside [0, {})", c.tp_rank,
               c.tp_size);
}

Bert::Bert(const BertConfig& config) : Model(tensor::Device::kCpu), cfg_(config) {
  validate(cfg_);
  if (cfg_.layer_end < 0) cfg_.layer_end = cfg_.layers;
  if (cfg_.positions == 0) cfg_.positions = cfg_.seq_len;
  num_local_layers_ = cfg_.layer_end - cfg_.layer_begin;
  const Dims d(cfg_);
  const int64_t D = cfg_.dim, V = cfg_.vocab, F = 4 * D;
  const int t = cfg_.tp_size, r = cfg_.tp_rank;
  auto idx = [this] { return static_cast<int>(params_.size()); };
  // Vocabulary-parallel tensors: ceil(V/t) rows per rank, the last rank's tail padding.
  auto add_vocab_param = [&](const std::string& name, std::vector<int64_t> full) {
    std::vector<int64_t> local = full;
    local[0] = d.part.rows;
    add_param(name, local);
    ParamInfo& info = params_.back();
    info.full_shape = std::move(full);
    info.decay = info.full_shape.size() >= 2;
    if (t > 1) info.split_dim = 0, info.split_parts = t, info.split_rank = r;
  };
  if (cfg_.has_embedding || cfg_.has_head) {
    word_ = idx();
    add_vocab_param("bert.embeddings.word_embeddings.weight", {V, D});
    // Embedding and decoder on different stages: each holds the table, the head's is the copy.
    params_.back().tied = cfg_.has_embedding != cfg_.has_head;
    params_.back().tied_copy = params_.back().tied && !cfg_.has_embedding;
  }
  if (cfg_.has_embedding) {
    pos_ = idx();
    add_param("bert.embeddings.position_embeddings.weight", {cfg_.positions, D});
    type_ = idx();
    add_param("bert.embeddings.token_type_embeddings.weight", {2, D});
    emb_lnw_ = idx();
    add_param("bert.embeddings.LayerNorm.weight", {D});
    emb_lnb_ = idx();
    add_param("bert.embeddings.LayerNorm.bias", {D});
  }
  first_layer_param_ = idx();
  for (int l = cfg_.layer_begin; l < cfg_.layer_end; ++l) {
    const std::string h = "bert.encoder.layer." + std::to_string(l) + ".";
    for (const char* qkv : {"query", "key", "value"}) {  // column-parallel by heads
      add_split_param(h + "attention.self." + qkv + ".weight", {D, D}, 0, t, r);
      add_split_param(h + "attention.self." + qkv + ".bias", {D}, 0, t, r);
    }
    add_split_param(h + "attention.output.dense.weight", {D, D}, 1, t, r);  // row-parallel
    add_param(h + "attention.output.dense.bias", {D});
    add_param(h + "attention.output.LayerNorm.weight", {D});
    add_param(h + "attention.output.LayerNorm.bias", {D});
    add_split_param(h + "intermediate.dense.weight", {F, D}, 0, t, r);  // column-parallel
    add_split_param(h + "intermediate.dense.bias", {F}, 0, t, r);
    add_split_param(h + "output.dense.weight", {D, F}, 1, t, r);  // row-parallel
    add_param(h + "output.dense.bias", {D});
    add_param(h + "output.LayerNorm.weight", {D});
    add_param(h + "output.LayerNorm.bias", {D});
  }
  if (cfg_.has_head) {
    head_dense_w_ = idx();
    add_param("cls.predictions.transform.dense.weight", {D, D});
    head_dense_b_ = idx();
    add_param("cls.predictions.transform.dense.bias", {D});
    head_lnw_ = idx();
    add_param("cls.predictions.transform.LayerNorm.weight", {D});
    head_lnb_ = idx();
    add_param("cls.predictions.transform.LayerNorm.bias", {D});
    head_bias_ = idx();
    add_vocab_param("cls.predictions.bias", {V});
  }
  allocate_params();
}

Bert::~Bert() = default;

void Bert::init(uint64_t seed) {
  // HF BertPreTrainedModel._init_weights: normal(0, 0.02) weights and embeddings, zero biases,
  // LayerNorm weight 1 and bias 0. Drawn for the full tensor, then this rank's part.
  std::vector<float> host, local;
  for (const ParamInfo& info : params_) {
    host.assign(info.full_numel(), 0.0f);
    const std::string& n = info.name;
    if (n.find("LayerNorm.weight") != std::string::npos)
      host.assign(host.size(), 1.0f);
    else if (!n.ends_with("bias"))
      fill_normal(host.data(), host.size(), param_key(seed, n), 0.0f, 0.02f);
    const float* src = host.data();
    if (info.is_split() || info.numel != info.full_numel()) {
      local.assign(info.numel, 0.0f);
      copy_shard_from_full(info, info.split_rank, host.data(), local.data());
      src = local.data();
    }
    ops().copy_from_host(param_data() + info.offset, src, info.numel * sizeof(float));
  }
}

std::unique_ptr<Activations> Bert::make_activations(int B, int T) const {
  if (T <= 0 || T > cfg_.seq_len)
    throw ConfigError(
        fmt::format("sequence length {} outside [1, model.seq_len = {}]", T, cfg_.seq_len));
  PTRAIN_CHECK(B > 0, "batch {} must be positive", B);
  return std::make_unique<BertActivations>(cfg_, num_local_layers_, B, T);
}

Bert::Scratch& Bert::scratch(int N) {
  if (scratch_ && scratch_->N >= N) return *scratch_;
  const Dims d(cfg_);
  auto s = std::make_unique<Scratch>();
  const size_t n = N, D = d.D, T = cfg_.seq_len;
  const size_t total = 4 * n * D + 2 * n * d.Fl + 4 * n * d.Dl + T * T + n * d.part.size;
  s->N = N;
  s->buf = tensor::Tensor::zeros({int64_t(total)}, tensor::DType::kF32, device_);
  float* cur = s->buf.data<float>();
  auto take = [&cur](size_t k) {
    float* p = cur;
    cur += k;
    return p;
  };
  s->dres = take(n * D);
  s->a = take(n * D);
  s->b = take(n * D);
  s->c = take(n * D);
  s->dg = take(n * d.Fl);
  s->df = take(n * d.Fl);
  s->dq = take(n * d.Dl);
  s->dk = take(n * d.Dl);
  s->dv = take(n * d.Dl);
  s->dctx = take(n * d.Dl);
  s->att = take(T * T);
  s->dlogits = take(n * d.part.size);
  scratch_ = std::move(s);
  return *scratch_;
}

void Bert::tp_allreduce(float* data, size_t count) {
  if (cfg_.tp_size > 1) tp_comm_->allreduce_sum(data, count);
}

void Bert::row_parallel(float* out, const float* inp, const float* w, const float* bias, int N,
                        int IC, int OC) {
  linear_forward(ops(), out, inp, w, nullptr, N, IC, OC);
  tp_allreduce(out, size_t(N) * OC);
  ops().bias_add(out, bias, N, OC);  // once, after the sum
}

std::vector<int64_t> Bert::boundary_shape(int B, int T) const {
  return {B, T, cfg_.dim};
}

double Bert::forward(const Batch& batch, Activations& acts_base) {
  auto& a = dynamic_cast<BertActivations&>(acts_base);
  PTRAIN_CHECK(batch.B == a.batch() && batch.T == a.seq(),
               "batch [{}, {}] does not match activations [{}, {}]", batch.B, batch.T, a.batch(),
               a.seq());
  PTRAIN_CHECK(cfg_.tp_size == 1 || tp_comm_ != nullptr,
               "a tensor-parallel BERT needs set_tensor_parallel_comm before forward");
  const tensor::Ops& o = ops();
  const Dims d(cfg_);
  const int B = batch.B, T = batch.T, N = B * T, D = d.D, V = cfg_.vocab;
  const size_t ND = size_t(N) * D;

  if (cfg_.has_embedding) {
    const int32_t* tokens = batch.i32("tokens");
    PTRAIN_CHECK(tokens != nullptr, "the first stage needs tokens");
    a.tokens.assign(tokens, tokens + N);
    const float* word = p(word_);
    const float* pos = p(pos_);
    const float* type0 = p(type_);  // token type 0 for every position (single segments)
    for (int n = 0; n < N; ++n) {
      if (tokens[n] < 0 || tokens[n] >= V)
        throw ConfigError(
            fmt::format("token id {} at position {} is outside the vocabulary [0, {})", tokens[n],
                        n, V),
            "check the data set against model.vocab");
      float* e = a.emb + size_t(n) * D;
      const int local = tokens[n] - d.part.begin;
      const bool here = local >= 0 && local < d.part.size;
      const float* row = here ? word + size_t(local) * D : nullptr;
      // One rank adds positions and types, so the sum over the group is the full embedding.
      const bool add_rest = cfg_.tp_rank == 0;
      const float* pr = pos + size_t(n % T) * D;
      for (int c = 0; c < D; ++c)
        e[c] = (row ? row[c] : 0.0f) + (add_rest ? pr[c] + type0[c] : 0.0f);
    }
    tp_allreduce(a.emb, ND);
    bert::layernorm_forward(a.resid, a.emb_mean, a.emb_rstd, a.emb, p(emb_lnw_), p(emb_lnb_), N, D,
                            kLnEps);
  } else {
    PTRAIN_CHECK(batch.input != nullptr, "a stage without the embedding needs input activations");
    o.copy(a.resid, batch.input, sizeof(float) * ND);
  }

  const bert::AttentionShape as{B, T, d.NHl, d.HD};
  for (int l = 0; l < num_local_layers_; ++l) {
    const LayerActs& L = a.layer[size_t(l)];
    const int pi = first_layer_param_ + kParamsPerLayer * l;
    const float* x = a.resid + ND * l;
    float* out = a.resid + ND * (l + 1);
    float* tmp = out;  // the projection output, before the residual and the LayerNorm
    linear_forward(o, L.q, x, p(pi + kQW), p(pi + kQB), N, D, d.Dl);
    linear_forward(o, L.k, x, p(pi + kKW), p(pi + kKB), N, D, d.Dl);
    linear_forward(o, L.v, x, p(pi + kVW), p(pi + kVB), N, D, d.Dl);
    bert::attention_forward(o, L.ctx, L.probs, L.q, L.k, L.v, as);
    row_parallel(tmp, L.ctx, p(pi + kAttOutW), p(pi + kAttOutB), N, d.Dl, D);
    o.add(L.h1_pre, x, tmp, ND);
    bert::layernorm_forward(L.h1, L.ln1_mean, L.ln1_rstd, L.h1_pre, p(pi + kLn1W), p(pi + kLn1B), N,
                            D, kLnEps);
    linear_forward(o, L.f, L.h1, p(pi + kInterW), p(pi + kInterB), N, D, d.Fl);
    bert::gelu_erf_forward(L.gf, L.f, size_t(N) * d.Fl);
    row_parallel(tmp, L.gf, p(pi + kOutW), p(pi + kOutB), N, d.Fl, D);
    o.add(L.h2_pre, L.h1, tmp, ND);
    bert::layernorm_forward(out, L.ln2_mean, L.ln2_rstd, L.h2_pre, p(pi + kLn2W), p(pi + kLn2B), N,
                            D, kLnEps);
  }

  double loss_sum = 0;
  if (cfg_.has_head) {
    const int32_t* targets = batch.i32("targets");
    PTRAIN_CHECK(targets != nullptr, "the last stage needs targets");
    for (int n = 0; n < N; ++n)
      if (targets[n] >= V)
        throw ConfigError(
            fmt::format("target id {} at position {} is outside the vocabulary [0, {})", targets[n],
                        n, V),
            "check the data set against model.vocab");
    const float* x = a.resid + ND * num_local_layers_;
    linear_forward(o, a.t1, x, p(head_dense_w_), p(head_dense_b_), N, D, D);
    bert::gelu_erf_forward(a.t2, a.t1, ND);
    bert::layernorm_forward(a.t3, a.t3_mean, a.t3_rstd, a.t2, p(head_lnw_), p(head_lnb_), N, D,
                            kLnEps);
    // The decoder: this rank's vocabulary rows of word_embeddings, and of the bias.
    linear_forward(o, a.logits, a.t3, p(word_), p(head_bias_), N, D, d.part.size);
    GroupComm* tp = cfg_.tp_size > 1 ? tp_comm_ : nullptr;
    loss_sum = a.xent->forward(o, tp, a.logits, targets, N, d.part);
    a.eval_correct = a.eval_count = 0;
    if (!training())
      a.xent->count_correct(o, tp, a.logits, N, d.part.size, &a.eval_correct, &a.eval_count);
  }
  a.forward_done = true;
  return loss_sum;
}

void Bert::eval_sums(const Activations& acts_base, EvalSums& sums) const {
  const auto& a = dynamic_cast<const BertActivations&>(acts_base);
  if (!a.has_head) return;
  sums["mlm_correct"] += a.eval_correct;
  sums["mlm_count"] += a.eval_count;
}

void Bert::backward(Activations& acts_base, float dloss_scale, const float* doutput) {
  auto& a = dynamic_cast<BertActivations&>(acts_base);
  PTRAIN_CHECK(a.forward_done, "backward without a forward on these activations");
  const tensor::Ops& o = ops();
  const Dims d(cfg_);
  const int B = a.batch(), T = a.seq(), N = B * T, D = d.D;
  const size_t ND = size_t(N) * D, NF = size_t(N) * d.Fl, NDl = size_t(N) * d.Dl;
  Scratch& s = scratch(N);

  if (cfg_.has_head) {
    const float* x = a.resid + ND * num_local_layers_;
    a.xent->backward(o, s.dlogits, a.logits, dloss_scale, N, d.part.size);
    linear_backward(o, s.a, g(word_), g(head_bias_), s.dlogits, a.t3, p(word_), N, D, d.part.size);
    tp_allreduce(s.a, ND);  // the decoder is column-parallel over the vocabulary
    o.fill(s.b, 0.0f, ND);
    bert::layernorm_backward(s.b, g(head_lnw_), g(head_lnb_), s.a, a.t2, p(head_lnw_), a.t3_mean,
                             a.t3_rstd, N, D);
    o.fill(s.c, 0.0f, ND);
    bert::gelu_erf_backward(s.c, a.t1, s.b, ND);
    linear_backward(o, s.dres, g(head_dense_w_), g(head_dense_b_), s.c, x, p(head_dense_w_), N, D,
                    D);
    for (int i : {head_bias_, head_lnb_, head_lnw_, head_dense_b_, head_dense_w_})
      grad_ready(size_t(i));
    if (!cfg_.has_embedding) grad_ready(size_t(word_));
  } else {
    PTRAIN_CHECK(doutput != nullptr, "a stage without the head needs the output gradient");
    o.copy(s.dres, doutput, sizeof(float) * ND);
  }

  const bert::AttentionShape as{B, T, d.NHl, d.HD};
  for (int l = num_local_layers_ - 1; l >= 0; --l) {
    const LayerActs& L = a.layer[size_t(l)];
    const int pi = first_layer_param_ + kParamsPerLayer * l;
    const float* x = a.resid + ND * l;
    // out = LN2(h1 + Out(GELU(Inter(h1)))): s.a = d h2_pre.
    o.fill(s.a, 0.0f, ND);
    bert::layernorm_backward(s.a, g(pi + kLn2W), g(pi + kLn2B), s.dres, L.h2_pre, p(pi + kLn2W),
                             L.ln2_mean, L.ln2_rstd, N, D);
    linear_backward(o, s.dg, g(pi + kOutW), g(pi + kOutB), s.a, L.gf, p(pi + kOutW), N, d.Fl, D);
    o.fill(s.df, 0.0f, NF);
    bert::gelu_erf_backward(s.df, L.f, s.dg, NF);
    linear_backward(o, s.b, g(pi + kInterW), g(pi + kInterB), s.df, L.h1, p(pi + kInterW), N, D,
                    d.Fl);
    tp_allreduce(s.b, ND);       // intermediate is column-parallel
    o.accumulate(s.b, s.a, ND);  // s.b = d h1 (the residual adds d h2_pre)
    // h1 = LN1(x + AttOut(Attn(q, k, v))): s.c = d h1_pre.
    o.fill(s.c, 0.0f, ND);
    bert::layernorm_backward(s.c, g(pi + kLn1W), g(pi + kLn1B), s.b, L.h1_pre, p(pi + kLn1W),
                             L.ln1_mean, L.ln1_rstd, N, D);
    linear_backward(o, s.dctx, g(pi + kAttOutW), g(pi + kAttOutB), s.c, L.ctx, p(pi + kAttOutW), N,
                    d.Dl, D);
    o.fill(s.dq, 0.0f, NDl);
    o.fill(s.dk, 0.0f, NDl);
    o.fill(s.dv, 0.0f, NDl);
    bert::attention_backward(o, s.dq, s.dk, s.dv, s.att, s.dctx, L.probs, L.q, L.k, L.v, as);
    linear_backward(o, s.a, g(pi + kQW), g(pi + kQB), s.dq, x, p(pi + kQW), N, D, d.Dl);
    linear_backward(o, s.b, g(pi + kKW), g(pi + kKB), s.dk, x, p(pi + kKW), N, D, d.Dl);
    o.accumulate(s.a, s.b, ND);
    linear_backward(o, s.b, g(pi + kVW), g(pi + kVB), s.dv, x, p(pi + kVW), N, D, d.Dl);
    o.accumulate(s.a, s.b, ND);
    tp_allreduce(s.a, ND);        // query, key and value are column-parallel
    o.add(s.dres, s.c, s.a, ND);  // d x: the residual plus the attention's input gradient
    for (int k = kParamsPerLayer - 1; k >= 0; --k) grad_ready(size_t(pi + k));
  }

  if (cfg_.has_embedding) {
    o.fill(s.a, 0.0f, ND);
    bert::layernorm_backward(s.a, g(emb_lnw_), g(emb_lnb_), s.dres, a.emb, p(emb_lnw_), a.emb_mean,
                             a.emb_rstd, N, D);
    // s.a is the same on every rank of the tensor group, so the position and type gradients
    // (replicated parameters) are too; each rank adds its own vocabulary rows.
    float *dword = g(word_), *dpos = g(pos_), *dtype0 = g(type_);
    for (int n = 0; n < N; ++n) {
      const float* de = s.a + size_t(n) * D;
      const int local = a.tokens[size_t(n)] - d.part.begin;
      float* dp = dpos + size_t(n % T) * D;
      for (int c = 0; c < D; ++c) dp[c] += de[c], dtype0[c] += de[c];
      if (local >= 0 && local < d.part.size) {
        float* dw = dword + size_t(local) * D;
        for (int c = 0; c < D; ++c) dw[c] += de[c];
      }
    }
    for (int i : {emb_lnb_, emb_lnw_, type_, pos_, word_}) grad_ready(size_t(i));
  } else {
    o.copy(a.dinput, s.dres, sizeof(float) * ND);
  }
}

double Bert::train_flops(int B, int T) const {
  const double D = cfg_.dim, N = double(B) * T;
  double matmul_params = 12.0 * D * D * num_local_layers_;
  if (cfg_.has_head) matmul_params += D * D + double(cfg_.vocab) * D;
  // 6 FLOPs per matmul weight per token; attention scores and mixing over all T keys: 12·T·D
  // per token and block. A tensor-parallel rank does 1/t of both.
  return (6.0 * N * matmul_params + 12.0 * N * T * D * num_local_layers_) / cfg_.tp_size;
}

}  // namespace ptrain::nn
