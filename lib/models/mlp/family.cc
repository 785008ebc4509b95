// The `mlp` family: a Linear/ReLU classifier (mlp/mlp.h) on CSV rows or synthetic Gaussian
// blobs; data and tensor parallelism (sync or async), fp32.
#include "ptrain/models/family.h"

#include <fmt/format.h>

#include "mlp/mlp.h"
#include "ptrain/core/error.h"
#include "ptrain/data/csv.h"
#include "ptrain/nn/init.h"

namespace ptrain::models {
namespace {

using spec::JobSpec;
using spec::ModelKey;
using spec::ModelSpec;

std::vector<int64_t> widths(const ModelSpec& m) {
  std::vector<int64_t> w{m.integer("input")};
  for (int64_t h : m.ints("hidden")) w.push_back(h);
  w.push_back(m.integer("classes"));
  return w;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// CSV rows: features then an integer label.
class CsvRows : public DataSet {
 public:
  explicit CsvRows(const JobSpec& spec) {
    data::SamplerOptions opts;
    opts.batch_size = spec.data.batch_size;
    opts.shuffle = spec.data.shuffle;
    opts.seed = spec.train.seed;
    opts.eval_fraction = spec.data.eval_fraction;
    batch_ = spec.data.batch_size;
    table_ = std::make_unique<data::CsvData>(data::CsvData::load(
        spec.data.path, data::CsvOptions{spec.model.i("input"), spec.model.i("classes")}));
    train_ = std::make_unique<data::CsvSampler>(*table_, opts, data::Split::kTrain);
    if (spec.data.eval_fraction > 0)
      eval_ = std::make_unique<data::CsvSampler>(*table_, opts, data::Split::kEval);
  }
  int64_t rows(int dp_size, int micro_total) const override {
    return train_->rows(dp_size, micro_total);
  }
  bool has_eval() const override { return eval_ != nullptr; }
  void fill(int64_t step, int dp_rank, int dp_size, int micro, int micro_total, data::Split split,
            HostBatch& out) const override {
    const auto& sampler = split == data::Split::kEval ? *eval_ : *train_;
    sampler.fill(step, dp_rank, dp_size, micro, micro_total, out.f32("features"),
                 out.i32("targets"));
  }
  double global_targets(int64_t, data::Split) const override { return double(batch_); }

 private:
  int64_t batch_ = 0;
  std::unique_ptr<data::CsvData> table_;
  std::unique_ptr<data::CsvSampler> train_, eval_;
};

// Synthetic rows: class c = sample mod classes, features = the class's center (uniform in
// [-1, 1], seeded) plus unit normal noise; a pure function of (seed, sample index), so every
// rank and world size sees the same rows. Evaluation reads samples past the training ones.
class BlobRows : public DataSet {
 public:
  explicit BlobRows(const JobSpec& spec)
      : F_(spec.model.i("input")),
        C_(spec.model.i("classes")),
        batch_(spec.data.batch_size),
        eval_(spec.data.eval_fraction > 0),
        key_(nn::param_key(spec.train.seed, "mlp.synthetic")) {}
  int64_t rows(int dp_size, int micro_total) const override {
    int64_t parts = int64_t(dp_size) * micro_total;
    if (batch_ % parts != 0)
      throw ConfigError(
          fmt::format("data.batch_size {} does not split into {} equal parts", batch_, parts));
    return batch_ / parts;
  }
  bool has_eval() const override { return eval_; }
  void fill(int64_t step, int dp_rank, int dp_size, int micro, int micro_total, data::Split split,
            HostBatch& out) const override {
    const int64_t n = rows(dp_size, micro_total);
    // Eval samples live far past any training step's.
    const int64_t base = split == data::Split::kEval ? (int64_t{1} << 40) : 0;
    const int64_t first = base + step * batch_ + (int64_t(dp_rank) * micro_total + micro) * n;
    float* x = out.f32("features");
    int32_t* y = out.i32("targets");
    for (int64_t i = 0; i < n; ++i) {
      const int64_t g = first + i;
      const int c = int(uint64_t(nn::mix64(key_ ^ uint64_t(g))) % uint64_t(C_));
      y[i] = c;
      for (int j = 0; j < F_; ++j) {
        double center = 2 * nn::uniform01(key_ + 1, uint64_t(c) * F_ + j) - 1;
        x[i * F_ + j] = float(center + nn::normal01(key_ + 2, uint64_t(g) * F_ + j));
      }
    }
  }
  double global_targets(int64_t, data::Split) const override { return double(batch_); }

 private:
  int F_, C_;
  int64_t batch_;
  bool eval_;
  uint64_t key_;
};

class MlpFamily : public Family {
 public:
  std::string type() const override { return "mlp"; }
  std::string summary() const override {
    return "Linear/ReLU classifier with softmax cross-entropy, PyTorch nn.Linear names";
  }
  const std::vector<ModelKey>& keys() const override {
    static const std::vector<ModelKey> k = {
        ModelKey::required_integer("input", 1, 1 << 24, "features per sample"),
        ModelKey::int_list("hidden", {}, 1, 1 << 24, "widths of the hidden layers"),
        ModelKey::required_integer("classes", 2, 1 << 24, "number of classes"),
    };
    return k;
  }
  std::vector<std::string> data_types() const override { return {"csv", "synthetic"}; }

  void check(const JobSpec& s, const spec::SpecChecker& c) const override {
    if (s.train.label_smoothing > 0)
      c.fail_at({"train.label_smoothing"}, "the mlp family's loss has no label smoothing",
                "remove train.label_smoothing (the resnet family uses it)");
    const auto hidden = s.model.ints("hidden");
    for (size_t i = 0; i < hidden.size(); ++i)
      if (hidden[i] % s.parallel.tensor != 0)
        c.fail_at({fmt::format("model.hidden[{}]", i), "model.hidden", "parallel.tensor"},
                  fmt::format("hidden size {} is not divisible by tensor {}", hidden[i],
                              s.parallel.tensor),
                  "tensor parallelism splits each hidden layer; use multiples of tensor");
    if (s.train.precision != "fp32")
      c.fail_at({"train.precision"}, "the mlp family trains in fp32 only",
                "set train.precision: fp32 for the MLP");
  }

  int pipeline_layers(const ModelSpec& m) const override {
    return static_cast<int>(m.ints("hidden").size()) + 1;
  }
  std::string layers_key() const override { return "model.hidden"; }
  std::string layer_word() const override { return "Linear layers"; }
  bool supports_pipeline() const override { return false; }

  int64_t parameters(const ModelSpec& m) const override {
    auto w = widths(m);
    int64_t n = 0;
    for (size_t i = 0; i + 1 < w.size(); ++i) n += w[i] * w[i + 1] + w[i + 1];
    return n;
  }
  spec::StageFigures stage_figures(const JobSpec& s, int, int first, int layers, int64_t b,
                                   int64_t in_flight, int elem) const override {
    auto w = widths(s.model);
    const int t = s.parallel.tensor;
    int64_t n = 0, outs = 0;
    // Tensor parallel (mlp/mlp.h): even layers column-parallel (weight and bias split), odd
    // layers row-parallel (weight split, bias whole), a final even layer whole.
    const int last = static_cast<int>(w.size()) - 2;
    for (int l = first; l < first + layers; ++l) {
      const int64_t ww = w[l] * w[l + 1], bb = w[l + 1];
      if (t == 1 || (l % 2 == 0 && l == last))
        n += ww + bb, outs += bb;
      else if (l % 2 == 0)
        n += ceil_div(ww + bb, t), outs += ceil_div(bb, t);
      else
        n += ceil_div(ww, t) + bb, outs += bb;
    }
    spec::StageFigures f;
    f.parameters = n;
    f.activation_bytes = double(2 * b * outs * elem * in_flight);  // pre- and post-activation
    return f;
  }

  std::vector<TensorSpec> batch_schema(const JobSpec& s, int64_t rows) const override {
    return {{"features", tensor::DType::kF32, {rows, s.model.integer("input")}},
            {"targets", tensor::DType::kI32, {rows}}};
  }
  std::unique_ptr<DataSet> make_data(const JobSpec& s) const override {
    if (s.data.type == "synthetic") return std::make_unique<BlobRows>(s);
    return std::make_unique<CsvRows>(s);
  }
  std::unique_ptr<nn::Model> make_model(const JobSpec& s, const ModelPlace& place) const override {
    nn::MlpConfig cfg;
    cfg.input_dim = s.model.i("input");
    for (int64_t h : s.model.ints("hidden")) cfg.hidden.push_back(int(h));
    cfg.classes = s.model.i("classes");
    cfg.tp_size = place.tp_size;
    cfg.tp_rank = place.tp_rank;
    cfg.device = place.device;
    return std::make_unique<nn::Mlp>(cfg);
  }
};

}  // namespace

std::shared_ptr<const Family> make_mlp_family() {
  return std::make_shared<MlpFamily>();
}

}  // namespace ptrain::models
