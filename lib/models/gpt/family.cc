// The `gpt` family: GPT-2 (gpt/gpt.h) trained as a language model on token, text or synthetic
// data; every parallel mode (data, tensor, pipeline, async).
#include "ptrain/models/family.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "gpt/gpt.h"
#include "ptrain/core/error.h"
#include "ptrain/data/token_stream.h"
#include "ptrain/data/tokenizer.h"

namespace ptrain::models {
namespace {

using spec::JobSpec;
using spec::ModelKey;
using spec::ModelSpec;

int64_t gpt_parameters(const ModelSpec& m) {
  const int64_t V = m.integer("vocab"), T = m.integer("seq_len"), D = m.integer("dim"),
                L = m.integer("layers");
  // wte V·D, wpe T·D, per block 12·D² + 13·D, ln_f 2·D; the LM head is tied to wte.
  return V * D + T * D + L * (12 * D * D + 13 * D) + 2 * D;
}

// The parameters one rank of stage `stage` holds. Tensor parallelism splits the attention and
// MLP matrices (column-parallel biases too) and the vocabulary; layer norms, wpe and
// row-parallel biases stay replicated. With a pipeline the last stage keeps its own copy of
// the wte shard for the tied LM head.
int64_t gpt_stage_parameters(const ModelSpec& m, int t, int stage, int stages, int layers) {
  const int64_t V = m.integer("vocab"), T = m.integer("seq_len"), D = m.integer("dim");
  int64_t block = 6 * D + (12 * D * D + 7 * D) / t;
  int64_t n = layers * block;
  if (stage == 0) n += V * D / t + T * D;
  if (stage == stages - 1) {
    n += 2 * D;
    if (stages > 1) n += V * D / t;
  }
  return n;
}

// Layers per stage balanced by parameter count: the partition into `pipeline` contiguous runs
// of at least one layer that minimises the largest stage's parameters (stage 0 holds the
// embeddings, the last stage ln_f and its copy of the tied wte); among those, the one with the
// smallest sum of squared stage sizes (the most even).
std::vector<int> balanced_stages(const ModelSpec& m, int tensor, int pipeline) {
  const int L = m.i("layers"), P = pipeline;
  using Cost = std::pair<int64_t, double>;  // (largest stage, sum of squared stage sizes)
  const Cost kInf{std::numeric_limits<int64_t>::max(), 0};
  // best[s][l]: the cost when stages [0, s) hold layers [0, l).
  std::vector<std::vector<Cost>> best(P + 1, std::vector<Cost>(L + 1, kInf));
  std::vector<std::vector<int>> take(P + 1, std::vector<int>(L + 1, 0));
  best[0][0] = {0, 0};
  for (int st = 1; st <= P; ++st)
    for (int l = st; l <= L - (P - st); ++l)
      for (int n = 1; n <= l - (st - 1); ++n) {
        const Cost& prev = best[st - 1][l - n];
        if (prev.first == kInf.first) continue;
        int64_t size = gpt_stage_parameters(m, tensor, st - 1, P, n);
        Cost cost{std::max(prev.first, size), prev.second + double(size) * double(size)};
        if (cost < best[st][l]) {
          best[st][l] = cost;
          take[st][l] = n;
        }
      }
  std::vector<int> out(static_cast<size_t>(P));
  for (int st = P, l = L; st > 0; --st) {
    out[static_cast<size_t>(st - 1)] = take[st][l];
    l -= take[st][l];
  }
  return out;
}

// Token data for a language model: inputs and next-token targets of `seq_len` windows.
class TokenData : public DataSet {
 public:
  explicit TokenData(const JobSpec& spec) {
    const ModelSpec& m = spec.model;
    const int vocab = m.i("vocab");
    T_ = m.i("seq_len");
    batch_ = spec.data.batch_size;
    data::SamplerOptions opts;
    opts.batch_size = spec.data.batch_size;
    opts.shuffle = spec.data.shuffle;
    opts.seed = spec.train.seed;
    opts.eval_fraction = spec.data.eval_fraction;
    const auto& type = spec.data.type;
    if (type == "tokens") {
      stream_ = data::open_token_file(spec.data.path, vocab);
      if (!spec.data.eval_path.empty())
        eval_stream_ = data::open_token_file(spec.data.eval_path, vocab);
    } else if (type == "text") {
      const std::string tok = spec.data.tokenizer.empty() ? "bytes" : spec.data.tokenizer;
      if (vocab < data::tokenizer_vocab_size(tok))
        throw ConfigError(fmt::format("model.vocab is {} but the {} tokenizer needs {}", vocab, tok,
                                      data::tokenizer_vocab_size(tok)),
                          "raise model.vocab");
      stream_ = data::open_text_file(spec.data.path, tok);
    } else {
      data::SyntheticOptions so;
      so.vocab = vocab;
      so.seed = spec.train.seed;
      so.num_tokens = std::max<int64_t>(1 << 20, int64_t(spec.data.batch_size) * (T_ + 1) * 4);
      stream_ = data::make_synthetic(so);
    }
    train_ = std::make_unique<data::TokenSampler>(*stream_, T_, opts, data::Split::kTrain);
    if (spec.data.eval_fraction > 0)
      eval_ = std::make_unique<data::TokenSampler>(*stream_, T_, opts, data::Split::kEval);
    if (eval_stream_) {  // a separate eval file (`ptrain data prepare --eval-fraction`), in order
      data::SamplerOptions eo = opts;
      eo.shuffle = false;
      eval_ = std::make_unique<data::TokenSampler>(*eval_stream_, T_, eo, data::Split::kTrain);
    }
  }
  int64_t rows(int dp_size, int micro_total) const override {
    return train_->rows(dp_size, micro_total);
  }
  bool has_eval() const override { return eval_ != nullptr; }
  void fill(int64_t step, int dp_rank, int dp_size, int micro, int micro_total, data::Split split,
            HostBatch& out) const override {
    const auto& sampler = split == data::Split::kEval ? *eval_ : *train_;
    sampler.fill(step, dp_rank, dp_size, micro, micro_total, out.i32("tokens"), out.i32("targets"));
  }
  double global_targets(int64_t, data::Split) const override { return double(batch_) * T_; }

 private:
  int T_ = 1;
  int64_t batch_ = 0;
  std::unique_ptr<data::TokenStream> stream_, eval_stream_;
  std::unique_ptr<data::TokenSampler> train_, eval_;
};

class GptFamily : public TokenSequenceFamily {
 public:
  std::string type() const override { return "gpt"; }
  std::string summary() const override {
    return "GPT-2 decoder (learned positions, pre-LayerNorm, tied LM head), Hugging Face names";
  }
  const std::vector<ModelKey>& keys() const override {
    static const std::vector<ModelKey> k = {
        ModelKey::integer("layers", 2, 1, 4096, "transformer blocks"),
        ModelKey::integer("heads", 2, 1, 4096, "attention heads"),
        ModelKey::integer("dim", 64, 1, 1 << 20, "model width"),
        ModelKey::integer("seq_len", 64, 1, 1 << 24, "tokens per sequence (rows of wpe)"),
        ModelKey::integer("vocab", 256, 1, 1 << 24, "vocabulary size"),
    };
    return k;
  }
  std::vector<std::string> data_types() const override { return {"tokens", "text", "synthetic"}; }

  void check(const JobSpec& s, const spec::SpecChecker& c) const override {
    if (s.train.label_smoothing > 0)
      c.fail_at({"train.label_smoothing"}, "the gpt family's loss has no label smoothing",
                "remove train.label_smoothing (the resnet family uses it)");
    const auto& p = s.parallel;
    const ModelSpec& m = s.model;
    const int64_t dim = m.integer("dim"), heads = m.integer("heads"), vocab = m.integer("vocab");
    if (dim % heads != 0)
      c.fail_at({"model.dim", "model.heads"},
                fmt::format("dim {} is not divisible by heads {}", dim, heads),
                "each head gets dim / heads channels; pick dim as a multiple of heads");
    if (heads % p.tensor != 0)
      c.fail_at({"model.heads", "parallel.tensor"},
                fmt::format("heads {} is not divisible by tensor {}", heads, p.tensor),
                "tensor parallelism splits the heads; make heads a multiple of tensor");
    if (vocab % p.tensor != 0)
      c.fail_at({"model.vocab", "parallel.tensor"},
                fmt::format("vocab {} is not divisible by tensor {}", vocab, p.tensor),
                "pad the vocabulary up to a multiple of tensor (GPT-2 uses 50304 for 50257)");
    if (s.data.type == "text" && s.data.tokenizer != "gpt2" && vocab < 256)
      c.fail_at({"model.vocab"}, fmt::format("text data is byte-level, but vocab is {}", vocab),
                "use vocab: 256 or more for data.type: text");
    if (s.data.tokenizer == "gpt2" && vocab < data::tokenizer_vocab_size("gpt2"))
      c.fail_at({"model.vocab", "data.tokenizer"},
                fmt::format("the gpt2 tokenizer has {} ids, but vocab is {}",
                            data::tokenizer_vocab_size("gpt2"), vocab),
                "use vocab: 50257, or 50304 (a multiple of 64, as GPT-2 training often does)");
    if (s.data.type == "tokens" && vocab > 65536)
      c.fail_at({"model.vocab"}, fmt::format("token files hold uint16 ids, but vocab is {}", vocab),
                "use vocab 65536 or less");
  }

  int pipeline_layers(const ModelSpec& m) const override { return m.i("layers"); }
  std::string layers_key() const override { return "model.layers"; }
  std::string layer_word() const override { return "blocks"; }
  std::vector<int> default_stages(const JobSpec& s) const override {
    const auto& p = s.parallel;
    if (p.pipeline > 1 && s.model.i("layers") >= p.pipeline)
      return balanced_stages(s.model, p.tensor, p.pipeline);
    return Family::default_stages(s);
  }

  int64_t parameters(const ModelSpec& m) const override { return gpt_parameters(m); }
  spec::StageFigures stage_figures(const JobSpec& s, int stage, int, int layers, int64_t b,
                                   int64_t in_flight, int elem) const override {
    const auto& p = s.parallel;
    const ModelSpec& m = s.model;
    spec::StageFigures f;
    f.parameters = gpt_stage_parameters(m, p.tensor, stage, p.pipeline, layers);
    // Per block, per microbatch (Korthikanti et al. 2022, no recomputation), in 16-bit bytes:
    // seq·b·dim·(10 + 24/t + 5·heads·seq/(dim·t)); scaled to the element size.
    const double S = double(m.integer("seq_len")), D = double(m.integer("dim")),
                 A = double(m.integer("heads")), tp = p.tensor;
    double per_block = S * double(b) * D * (10 + 24 / tp + 5 * A * S / (D * tp)) * (elem / 2.0);
    f.activation_bytes = per_block * layers * double(in_flight);
    if (stage == p.pipeline - 1)
      f.activation_bytes += 2.0 * S * double(b) * double(m.integer("vocab")) / tp * 4;
    return f;
  }
  std::unique_ptr<DataSet> make_data(const JobSpec& s) const override {
    return std::make_unique<TokenData>(s);
  }
  std::unique_ptr<nn::Model> make_model(const JobSpec& s, const ModelPlace& place) const override {
    const ModelSpec& m = s.model;
    nn::GptConfig cfg;
    cfg.layers = m.i("layers");
    cfg.heads = m.i("heads");
    cfg.dim = m.i("dim");
    cfg.seq_len = m.i("seq_len");
    cfg.vocab = m.i("vocab");
    cfg.device = place.device;
    cfg.precision = s.train.precision;
    cfg.tp_size = place.tp_size;
    cfg.tp_rank = place.tp_rank;
    cfg.layer_begin = place.layers.first;
    cfg.layer_end = place.layers.second;
    cfg.has_embedding = place.stage == 0;
    cfg.has_head = place.stage == place.stages - 1;
    return std::make_unique<nn::Gpt>(cfg);
  }
};

}  // namespace

std::shared_ptr<const Family> make_gpt_family() {
  return std::make_shared<GptFamily>();
}

}  // namespace ptrain::models
