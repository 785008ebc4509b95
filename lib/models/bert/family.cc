// The `bert` family: BERT (bert/bert.h) pretrained as a masked language model on token, text
// or synthetic data (bert/masking.h); data, tensor and pipeline parallelism, fp32 on the CPU.
#include "ptrain/models/family.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "bert/bert.h"
#include "bert/masking.h"
#include "ptrain/core/error.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/data/token_stream.h"
#include "shared/vocab_parallel.h"

namespace ptrain::models {
namespace {

using spec::JobSpec;
using spec::ModelKey;
using spec::ModelSpec;

constexpr const char* kPositionTable = "bert.embeddings.position_embeddings.weight";

int mask_token_of(const ModelSpec& m) {
  const int64_t t = m.integer("mask_token");
  return int(t < 0 ? m.integer("vocab") - 1 : t);
}

// Rows of the position table: an init_from file's (HF checkpoints have 512), else seq_len.
int position_rows(const ModelSpec& m) {
  if (!m.init_from.empty() && std::filesystem::exists(m.init_from)) {
    auto file = data::SafetensorsFile::open(m.init_from);
    if (const auto* t = file.find(kPositionTable); t && t->shape.size() == 2)
      return int(t->shape[0]);
  }
  return m.i("seq_len");
}

std::unique_ptr<data::TokenStream> open_stream(const JobSpec& s) {
  const ModelSpec& m = s.model;
  if (s.data.type == "tokens") return data::open_token_file(s.data.path, m.i("vocab"));
  if (s.data.type == "text") return data::open_text_file(s.data.path);
  data::SyntheticOptions so;
  so.vocab = mask_token_of(m);  // ids below the mask token
  so.seed = s.train.seed;
  so.num_tokens = std::max<int64_t>(1 << 20, int64_t(s.data.batch_size) * m.i("seq_len") * 4);
  return data::make_synthetic(so);
}

// The first id at or above the mask token: (offset, id), or offset -1.
std::pair<int64_t, int32_t> first_id_not_below(const data::TokenStream& stream, int mask_token) {
  std::vector<int32_t> chunk(1 << 16);
  for (int64_t at = 0; at < stream.size(); at += int64_t(chunk.size())) {
    const int64_t n = std::min<int64_t>(int64_t(chunk.size()), stream.size() - at);
    stream.read(at, n, chunk.data());
    for (int64_t i = 0; i < n; ++i)
      if (chunk[size_t(i)] >= mask_token) return {at + i, chunk[size_t(i)]};
  }
  return {-1, 0};
}

std::string id_error(const JobSpec& s, std::pair<int64_t, int32_t> bad, int mask_token) {
  return fmt::format("'{}' has token id {} at offset {}, not below model.mask_token {}",
                     s.data.path, bad.second, bad.first, mask_token);
}
constexpr const char* kIdHint =
    "data ids must be below the mask token: raise model.vocab (the mask token is vocab - 1) or "
    "set model.mask_token";

// Masked-LM samples: window w of seq_len tokens of the split, masked by bert::MlmMasking; the
// order of windows (and the epoch e) is the sampler's (data/sampler.h, without the shift by
// one token of a GPT's targets).
class MlmData : public DataSet {
 public:
  explicit MlmData(const JobSpec& spec) {
    const ModelSpec& m = spec.model;
    T_ = m.i("seq_len");
    mask_.seed = spec.train.seed;
    mask_.mask_prob = spec.data.mask_prob;
    mask_.seq_len = T_;
    mask_.vocab = m.i("vocab");
    mask_.mask_token = mask_token_of(m);
    stream_ = open_stream(spec);
    if (auto bad = first_id_not_below(*stream_, mask_.mask_token); bad.first >= 0)
      throw ConfigError(id_error(spec, bad, mask_.mask_token), kIdHint);
    data::SamplerOptions opts;
    opts.batch_size = spec.data.batch_size;
    opts.shuffle = spec.data.shuffle;
    opts.seed = spec.train.seed;
    const int64_t total = stream_->size();
    const int64_t eval = int64_t(std::floor(double(total) * spec.data.eval_fraction));
    train_ = make_split(0, total - eval, opts, opts.shuffle, "train");
    if (spec.data.eval_fraction > 0) {
      eval_ = make_split(total - eval, eval, opts, false, "eval");
      has_eval_ = true;
    }
  }
  int64_t rows(int dp_size, int micro_total) const override {
    return train_.order.rows(dp_size, micro_total);
  }
  bool has_eval() const override { return has_eval_; }
  void fill(int64_t step, int dp_rank, int dp_size, int micro, int micro_total, data::Split split,
            HostBatch& out) const override {
    const Split& sp = split == data::Split::kEval ? eval_ : train_;
    const int64_t n = sp.order.rows(dp_size, micro_total);
    const int64_t first = sp.order.first(dp_rank, dp_size, micro, micro_total);
    int32_t* tokens = out.i32("tokens");
    int32_t* targets = out.i32("targets");
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = first + i, w = sp.order.item(step, j), e = epoch(sp, step, j);
      int32_t* row = tokens + i * T_;
      stream_->read(sp.begin + w * T_, T_, row);
      for (int t = 0; t < T_; ++t) row[t] = mask_.apply(e, w, t, row[t], targets + i * T_ + t);
    }
  }
  // The masked positions of the whole global batch (at least 1): a function of the masking
  // alone, so every data-parallel split divides by the same number.
  double global_targets(int64_t step, data::Split split) const override {
    const Split& sp = split == data::Split::kEval ? eval_ : train_;
    int64_t count = 0;
    for (int64_t j = 0; j < sp.order.batch_size(); ++j) {
      const int64_t w = sp.order.item(step, j), e = epoch(sp, step, j);
      for (int t = 0; t < T_; ++t) count += mask_.masked(e, w, t) ? 1 : 0;
    }
    return double(std::max<int64_t>(count, 1));
  }

 private:
  struct Split {
    int64_t begin = 0;
    data::BatchOrder order{1, {}, false};
  };
  Split make_split(int64_t begin, int64_t size, const data::SamplerOptions& opts, bool shuffle,
                   const char* name) const {
    if (size / T_ < 1)
      throw ConfigError(fmt::format("{}: the {} split has {} tokens, fewer than one window of "
                                    "model.seq_len {}",
                                    stream_->describe(), name, size, T_),
                        "use a larger data set or a smaller seq_len / eval_fraction");
    return {begin, data::BatchOrder(size / T_, opts, shuffle)};
  }
  static int64_t epoch(const Split& sp, int64_t step, int64_t j) {
    return (step * sp.order.batch_size() + j) / sp.order.items();
  }

  int T_ = 1;
  bert::MlmMasking mask_;
  std::unique_ptr<data::TokenStream> stream_;
  Split train_, eval_;
  bool has_eval_ = false;
};

class BertFamily : public TokenSequenceFamily {
 public:
  std::string type() const override { return "bert"; }
  std::string summary() const override {
    return "BERT encoder pretrained as a masked LM (post-LayerNorm, bidirectional attention, "
           "tied decoder), Hugging Face BertForMaskedLM names";
  }
  const std::vector<ModelKey>& keys() const override {
    static const std::vector<ModelKey> k = {
        ModelKey::integer("layers", 2, 1, 4096, "encoder blocks"),
        ModelKey::integer("heads", 2, 1, 4096, "attention heads"),
        ModelKey::integer("dim", 64, 1, 1 << 20, "model width"),
        ModelKey::integer("seq_len", 64, 1, 1 << 20, "tokens per sequence"),
        ModelKey::integer("vocab", 257, 2, 1 << 24, "vocabulary size, the mask token included"),
        ModelKey::integer("mask_token", -1, -1, 1 << 24, "id of [MASK]; -1 = vocab - 1"),
    };
    return k;
  }
  std::vector<std::string> data_types() const override { return {"tokens", "text", "synthetic"}; }

  void check(const JobSpec& s, const spec::SpecChecker& c) const override {
    if (s.train.label_smoothing > 0)
      c.fail_at({"train.label_smoothing"}, "the bert family's loss has no label smoothing",
                "remove train.label_smoothing (the resnet family uses it)");
    const auto& p = s.parallel;
    const ModelSpec& m = s.model;
    const int64_t dim = m.integer("dim"), heads = m.integer("heads"), vocab = m.integer("vocab");
    if (s.nodes.device == "cuda")
      c.fail_at({"nodes.device"}, "bert trains on the CPU only (its attention is CPU code)",
                "set nodes.device: cpu");
    if (s.train.precision != "fp32")
      c.fail_at({"train.precision"}, "bert trains in fp32 only", "set train.precision: fp32");
    if (dim % heads != 0)
      c.fail_at({"model.dim", "model.heads"},
                fmt::format("dim {} is not divisible by heads {}", dim, heads),
                "each head gets dim / heads channels; pick dim as a multiple of heads");
    if (heads % p.tensor != 0)
      c.fail_at({"model.heads", "parallel.tensor"},
                fmt::format("heads {} is not divisible by tensor {}", heads, p.tensor),
                "tensor parallelism splits the heads; make heads a multiple of tensor");
    if (nn::VocabPart::of(int(vocab), p.tensor, p.tensor - 1).size <= 0)
      c.fail_at({"model.vocab", "parallel.tensor"},
                fmt::format("vocab {} leaves the last of {} tensor ranks no ids", vocab, p.tensor),
                "use fewer tensor ranks or a larger vocabulary");
    const int64_t mask = m.integer("mask_token");
    if (mask >= vocab)
      c.fail_at({"model.mask_token"},
                fmt::format("mask_token {} is not below vocab {}", mask, vocab),
                "the mask token is an id of the vocabulary; -1 picks vocab - 1");
    if (s.data.type == "text" && s.data.tokenizer == "gpt2")
      c.fail_at({"data.tokenizer"}, "the bert family reads text as bytes, not gpt2 tokens",
                "remove data.tokenizer, or prepare token files with ptrain data prepare");
    const int mask_token = mask_token_of(m);
    if (s.data.type == "text" && mask_token < 256)
      c.fail_at(
          {"model.mask_token", "model.vocab"},
          fmt::format("text data holds byte ids up to 255, but the mask token is {}", mask_token),
          "use vocab: 257 (the mask token is then 256)");
    if (s.data.type == "tokens" && vocab > 65537)
      c.fail_at({"model.vocab"}, fmt::format("token files hold uint16 ids, but vocab is {}", vocab),
                "use vocab 65537 or less");
    if (!m.init_from.empty() && std::filesystem::exists(m.init_from)) {
      const int rows = position_rows(m);
      if (m.integer("seq_len") > rows)
        c.fail_at({"model.seq_len"},
                  fmt::format("seq_len {} is larger than the {} rows of {} in '{}'",
                              m.integer("seq_len"), rows, kPositionTable, m.init_from),
                  fmt::format("use seq_len {} or less", rows));
    }
    if ((s.data.type == "tokens" || s.data.type == "text") &&
        std::filesystem::exists(s.data.path)) {
      auto stream = open_stream(s);
      if (auto bad = first_id_not_below(*stream, mask_token); bad.first >= 0)
        c.fail_at({"data.path"}, id_error(s, bad, mask_token), kIdHint);
    }
  }

  int pipeline_layers(const ModelSpec& m) const override { return m.i("layers"); }
  std::string layers_key() const override { return "model.layers"; }
  std::string layer_word() const override { return "blocks"; }

  int64_t parameters(const ModelSpec& m) const override {
    const int64_t V = m.integer("vocab"), P = position_rows(m), D = m.integer("dim"),
                  L = m.integer("layers");
    // Embeddings (word, position, 2 token types, LayerNorm), blocks of 12·D² + 13·D, the head
    // (dense, LayerNorm, bias); the decoder is tied to the word embeddings.
    return V * D + P * D + 2 * D + 2 * D + L * (12 * D * D + 13 * D) + (D * D + 3 * D + V);
  }
  spec::StageFigures stage_figures(const JobSpec& s, int stage, int, int layers, int64_t b,
                                   int64_t in_flight, int elem) const override {
    const auto& p = s.parallel;
    const ModelSpec& m = s.model;
    const int64_t t = p.tensor, D = m.integer("dim"), T = m.integer("seq_len"),
                  H = m.integer("heads");
    const int64_t Vr = nn::VocabPart::of(m.i("vocab"), int(t), 0).rows;
    spec::StageFigures f;
    f.parameters = layers * (6 * D + (12 * D * D + 7 * D) / t);
    if (stage == 0) f.parameters += Vr * D + position_rows(m) * D + 4 * D;
    if (stage == p.pipeline - 1) {
      f.parameters += D * D + 3 * D + Vr;
      if (p.pipeline > 1) f.parameters += Vr * D;
    }
    // Saved per block and microbatch: q, k, v, context [N, D/t], the probabilities
    // [b, H/t, T, T], three [N, D] tensors and two [N, 4D/t] (N = b·T).
    const double N = double(b) * T;
    const double per_block = 4 * N * D / t + double(b) * H / t * T * T + 3 * N * D + 8 * N * D / t;
    f.activation_bytes = per_block * layers * double(in_flight) * elem;
    if (stage == p.pipeline - 1) f.activation_bytes += (3 * N * D + N * Vr) * elem;
    return f;
  }
  std::unique_ptr<DataSet> make_data(const JobSpec& s) const override {
    return std::make_unique<MlmData>(s);
  }
  std::unique_ptr<nn::Model> make_model(const JobSpec& s, const ModelPlace& place) const override {
    if (place.device != tensor::Device::kCpu)
      throw ConfigError("bert trains on the CPU only (its attention is CPU code)",
                        "set nodes.device: cpu");
    const ModelSpec& m = s.model;
    nn::BertConfig cfg;
    cfg.layers = m.i("layers");
    cfg.heads = m.i("heads");
    cfg.dim = m.i("dim");
    cfg.seq_len = m.i("seq_len");
    cfg.positions = position_rows(m);
    cfg.vocab = m.i("vocab");
    cfg.tp_size = place.tp_size;
    cfg.tp_rank = place.tp_rank;
    cfg.layer_begin = place.layers.first;
    cfg.layer_end = place.layers.second;
    cfg.has_embedding = place.stage == 0;
    cfg.has_head = place.stage == place.stages - 1;
    return std::make_unique<nn::Bert>(cfg);
  }
  std::vector<std::string> eval_sum_names() const override { return {"mlm_correct", "mlm_count"}; }
  std::vector<std::pair<std::string, double>> eval_metrics(const nn::EvalSums& s) const override {
    const double count = s.count("mlm_count") ? s.at("mlm_count") : 0;
    const double correct = s.count("mlm_correct") ? s.at("mlm_correct") : 0;
    return {{"eval_mlm_accuracy", count > 0 ? correct / count : 0.0}};
  }
};

}  // namespace

std::shared_ptr<const Family> make_bert_family() {
  return std::make_shared<BertFamily>();
}

}  // namespace ptrain::models
