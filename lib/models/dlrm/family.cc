// The `dlrm` family: DLRM (dlrm/dlrm.h) on synthetic Criteo-layout data from a planted model;
// data parallelism with every table replicated, fp32, CPU.
#include "ptrain/models/family.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "dlrm/criteo.h"
#include "dlrm/dlrm.h"
#include "dlrm/dlrm_ops.h"
#include "ptrain/core/error.h"
#include "ptrain/nn/init.h"
#include "ptrain/spec/plan.h"

namespace ptrain::models {
namespace {

using spec::JobSpec;
using spec::ModelKey;
using spec::ModelSpec;

std::vector<int64_t> table_rows(const ModelSpec& m) {
  auto t = m.ints("tables");
  if (!t.empty()) return t;
  return std::vector<int64_t>(size_t(m.integer("sparse")), m.integer("table_rows"));
}

std::vector<int> as_ints(const std::vector<int64_t>& v) {
  return std::vector<int>(v.begin(), v.end());
}

nn::DlrmConfig config_of(const ModelSpec& m) {
  nn::DlrmConfig c;
  c.dense = m.i("dense");
  c.tables = table_rows(m);
  c.dim = m.i("embedding_dim");
  c.bottom = as_ints(m.ints("bottom_mlp"));
  c.top = as_ints(m.ints("top_mlp"));
  return c;
}

// Synthetic Criteo: per sample 13 dense counts (already log(1 + x)) and one index per table,
// skewed towards low rows; the label is drawn from a planted logistic model
//   logit = -1 + sum_j a_j (x_j - 1.5) + sum_k s_k[index_k],
// so the best reachable AUC is the planted model's. A pure function of (seed, sample index):
// every rank and world size sees the same samples; eval reads samples past the training ones.
class SyntheticCriteo : public DataSet {
 public:
  explicit SyntheticCriteo(const JobSpec& spec)
      : dense_(spec.model.i("dense")),
        rows_(table_rows(spec.model)),
        batch_(spec.data.batch_size),
        eval_(spec.data.eval_fraction > 0),
        key_(nn::param_key(spec.train.seed, "dlrm.synthetic-criteo")) {}
  int64_t rows(int dp_size, int micro_total) const override {
    const int64_t parts = int64_t(dp_size) * micro_total;
    if (batch_ % parts != 0)
      throw ConfigError(
          fmt::format("data.batch_size {} does not split into {} equal parts", batch_, parts));
    return batch_ / parts;
  }
  bool has_eval() const override { return eval_; }
  void fill(int64_t step, int dp_rank, int dp_size, int micro, int micro_total, data::Split split,
            HostBatch& out) const override {
    const int64_t n = rows(dp_size, micro_total);
    const int64_t base = split == data::Split::kEval ? (int64_t{1} << 40) : 0;
    const int64_t first = base + step * batch_ + (int64_t(dp_rank) * micro_total + micro) * n;
    float* x = out.f32("dense");
    int32_t* s = out.i32("sparse");
    float* y = out.f32("targets");
    for (int64_t i = 0; i < n; ++i)
      y[i] = sample(first + i, x + i * dense_, s + i * int64_t(rows_.size()));
  }
  double global_targets(int64_t, data::Split) const override { return double(batch_); }
  // An evaluation reads kEvalBatches global batches from the start of the eval samples.
  int64_t eval_batches() const override { return kEvalBatches; }
  static constexpr int64_t kEvalBatches = 4;

  // ROC AUC of the planted logit on the samples one evaluation reads: the best any model can
  // reach there.
  double planted_eval_auc() const {
    const int64_t n = kEvalBatches * batch_;
    std::vector<float> x(static_cast<size_t>(dense_)), logits(static_cast<size_t>(n)),
        labels(static_cast<size_t>(n));
    std::vector<int32_t> sp(rows_.size());
    for (int64_t i = 0; i < n; ++i) {
      double logit = 0;
      labels[size_t(i)] = sample((int64_t{1} << 40) + i, x.data(), sp.data(), &logit);
      logits[size_t(i)] = float(logit);
    }
    return nn::dlrm::roc_auc(logits.data(), labels.data(), size_t(n));
  }

  // Writes sample g's features and returns its label (and the planted logit when asked).
  float sample(int64_t g, float* x, int32_t* s, double* planted = nullptr) const {
    const uint64_t u = uint64_t(g);
    double logit = -1.0;
    for (int j = 0; j < dense_; ++j) {
      const double count = std::floor(std::exp(4.0 * nn::uniform01(key_ + 1, u * dense_ + j))) - 1;
      x[j] = float(std::log1p(std::max(count, 0.0)));
      logit += (nn::uniform01(key_ + 2, uint64_t(j)) - 0.5) * (x[j] - 1.5);
    }
    const size_t K = rows_.size();
    for (size_t k = 0; k < K; ++k) {
      const double v = nn::uniform01(key_ + 3, u * K + k);
      const int64_t idx = std::min<int64_t>(rows_[k] - 1, int64_t(v * v * double(rows_[k])));
      s[k] = int32_t(idx);
      logit += 0.6 * nn::normal01(key_ + 4 + k, uint64_t(idx));
    }
    if (planted) *planted = logit;
    const double p = 1.0 / (1.0 + std::exp(-logit));
    return nn::uniform01(key_ + 5, u) < p ? 1.f : 0.f;
  }

 private:
  int dense_;
  std::vector<int64_t> rows_;
  int64_t batch_;
  bool eval_;
  uint64_t key_;
};

// A Criteo TSV file in memory: the last eval_fraction of its samples are the eval split; the
// global batch of step s is the training samples from s * batch_size on, wrapping around, and
// data rank r takes its contiguous share, so any world size reads the same samples.
class CriteoFile : public DataSet {
 public:
  explicit CriteoFile(const JobSpec& spec)
      : batch_(spec.data.batch_size),
        samples_(
            criteo::load(spec.data.path, table_rows(spec.model), spec.data.bad_lines == "skip")) {
    const int64_t n = samples_.size();
    eval_ = spec.data.eval_fraction > 0 ? int64_t(double(n) * spec.data.eval_fraction) : 0;
    train_ = n - eval_;
    if (train_ <= 0 || (spec.data.eval_fraction > 0 && eval_ <= 0))
      throw ConfigError(fmt::format("criteo data '{}' has {} usable lines: too few for a training "
                                    "and an eval split",
                                    spec.data.path, n),
                        "use a bigger file or a different data.eval_fraction");
  }
  int64_t rows(int dp_size, int micro_total) const override {
    const int64_t parts = int64_t(dp_size) * micro_total;
    if (batch_ % parts != 0)
      throw ConfigError(
          fmt::format("data.batch_size {} does not split into {} equal parts", batch_, parts));
    return batch_ / parts;
  }
  bool has_eval() const override { return eval_ > 0; }
  void fill(int64_t step, int dp_rank, int dp_size, int micro, int micro_total, data::Split split,
            HostBatch& out) const override {
    const int64_t n = rows(dp_size, micro_total);
    const bool ev = split == data::Split::kEval;
    const int64_t base = ev ? train_ : 0, count = ev ? eval_ : train_;
    const int64_t first = step * batch_ + (int64_t(dp_rank) * micro_total + micro) * n;
    float* x = out.f32("dense");
    int32_t* s = out.i32("sparse");
    float* y = out.f32("targets");
    for (int64_t i = 0; i < n; ++i) {
      const int64_t at = base + (first + i) % count;
      std::copy_n(&samples_.dense[size_t(at) * criteo::kDense], criteo::kDense,
                  x + i * criteo::kDense);
      std::copy_n(&samples_.sparse[size_t(at) * criteo::kSparse], criteo::kSparse,
                  s + i * criteo::kSparse);
      y[i] = samples_.labels[size_t(at)];
    }
  }
  double global_targets(int64_t, data::Split) const override { return double(batch_); }
  // An evaluation covers the eval split's whole global batches (at least one; a last partial
  // batch of fewer than batch_size lines is left out).
  int64_t eval_batches() const override { return std::max<int64_t>(1, eval_ / batch_); }

 private:
  int64_t batch_;
  criteo::Samples samples_;
  int64_t train_ = 0, eval_ = 0;
};

// Bytes each data-parallel worker holds for the tables: parameters and gradients (4 bytes
// each per element), Adagrad's accumulator per row, under parallel.embeddings.
std::vector<double> table_bytes_per_worker(const JobSpec& s) {
  const auto rows = table_rows(s.model);
  const double D = double(s.model.integer("embedding_dim"));
  const int dp = std::max(1, s.parallel.data);
  const auto place = nn::dlrm::parse_placement(s.parallel.embeddings);
  const bool adagrad =
      place != nn::dlrm::Placement::kReplicated && s.train.optimizer.embeddings.type == "adagrad";
  // The dense optimizer's state per element under replicated (adamw 2, sgd momentum 1).
  const auto& o = s.train.optimizer;
  const double dense_state = o.type == "adamw" ? 2 : (o.momentum > 0 ? 1 : 0);
  std::vector<double> per(size_t(dp), 0.0);
  if (place == nn::dlrm::Placement::kReplicated) {
    for (int64_t r : rows) per.assign(size_t(dp), per[0] + double(r) * D * 4 * (2 + dense_state));
    return per;
  }
  const auto splits = nn::dlrm::place_tables(rows, place, dp);
  for (size_t k = 0; k < rows.size(); ++k)
    for (int r = 0; r < dp; ++r) {
      const double n = double(splits[k][size_t(r) + 1] - splits[k][size_t(r)]);
      per[size_t(r)] += n * D * 8 + (adagrad ? n * 4 : 0);
    }
  return per;
}

// What one worker may use: this host's physical memory over the workers it runs.
double worker_memory_limit(const JobSpec& s) {
  const double ram = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGE_SIZE));
  return ram / std::max(1, s.nodes.procs_per_node);
}

class DlrmFamily : public Family {
 public:
  std::string type() const override { return "dlrm"; }
  std::string summary() const override {
    return "DLRM recommender: bottom MLP, embedding tables, dot interaction, top MLP, BCE "
           "(facebookresearch/dlrm names)";
  }
  const std::vector<ModelKey>& keys() const override {
    static const std::vector<ModelKey> k = {
        ModelKey::integer("dense", 13, 1, 1 << 16, "dense features per sample"),
        ModelKey::integer("sparse", 26, 1, 1024, "categorical features (K equal tables)"),
        ModelKey::integer("table_rows", 1000, 1, int64_t{1} << 31,
                          "rows of each table when `tables` is not given"),
        ModelKey::int_list("tables", {}, 1, INT32_MAX,
                           "rows of each table, one per categorical feature (overrides sparse)"),
        ModelKey::integer("embedding_dim", 16, 1, 4096, "width of every embedding"),
        ModelKey::int_list("bottom_mlp", {64, 16}, 1, 1 << 20,
                           "bottom MLP widths; the last must equal embedding_dim"),
        ModelKey::int_list("top_mlp", {64, 1}, 1, 1 << 20,
                           "top MLP widths after the interaction; the last must be 1"),
    };
    return k;
  }
  std::vector<std::string> data_types() const override { return {"synthetic-criteo", "criteo"}; }

  void check(const JobSpec& s, const spec::SpecChecker& c) const override {
    if (s.train.label_smoothing > 0)
      c.fail_at({"train.label_smoothing"}, "the dlrm family's loss has no label smoothing",
                "remove train.label_smoothing (the resnet family uses it)");
    const auto bottom = s.model.ints("bottom_mlp");
    if (bottom.empty() || bottom.back() != s.model.integer("embedding_dim"))
      c.fail_at({"model.bottom_mlp", "model.embedding_dim"},
                fmt::format("bottom_mlp must end at embedding_dim {} (it ends at {})",
                            s.model.integer("embedding_dim"),
                            bottom.empty() ? s.model.integer("dense") : bottom.back()),
                "the dot interaction needs the bottom output as wide as an embedding");
    const auto top = s.model.ints("top_mlp");
    if (top.empty() || top.back() != 1)
      c.fail_at({"model.top_mlp"}, "top_mlp must end at 1 (one logit)", "end top_mlp with 1");
    if (s.data.type == "criteo" &&
        (s.model.integer("dense") != criteo::kDense || table_rows(s.model).size() != 26))
      c.fail_at({"model.dense", "model.sparse", "model.tables", "data.type"},
                "criteo data has 13 dense and 26 categorical features per line",
                "set model.dense: 13 and model.sparse: 26");
    if (s.nodes.device == "cuda")
      c.fail_at({"nodes.device"}, "the dlrm family runs on CPU only (its kernels are host code)",
                "set nodes.device: cpu");
    if (s.parallel.tensor > 1)
      c.fail_at({"parallel.tensor"}, "the dlrm family has no tensor parallelism",
                "set parallel.tensor: 1");
    if (s.train.precision != "fp32")
      c.fail_at({"train.precision"}, "the dlrm family trains in fp32 only",
                "set train.precision: fp32");
    if (s.parallel.data_mode == "async")
      c.fail_at({"parallel.data_mode"}, "the dlrm family trains synchronously only",
                "set parallel.data_mode: sync");
    // The tables of the fullest worker (with gradients and optimizer state) must fit in its
    // share of this host's memory.
    const auto per = table_bytes_per_worker(s);
    const double most = *std::max_element(per.begin(), per.end());
    const double limit = worker_memory_limit(s);
    const bool replicated = s.parallel.embeddings == "replicated";
    if (most > limit)
      c.fail_at({"model.table_rows", "model.tables", "parallel.embeddings"},
                fmt::format("the embedding tables take {:.1f} GiB on the fullest worker "
                            "(parameters, gradients, optimizer state) under parallel.embeddings: "
                            "{}, more than the {:.1f} GiB a worker has ({} per host)",
                            most / (1ull << 30), s.parallel.embeddings, limit / (1ull << 30),
                            s.nodes.procs_per_node),
                replicated ? "set parallel.embeddings: table or row to split the tables over the "
                             "data-parallel workers, or use fewer or smaller tables"
                           : "use more data-parallel workers (parallel.embeddings: row splits "
                             "one big table), or fewer or smaller tables");
    if (s.parallel.embeddings != "replicated" && s.parallel.pipeline > 1)
      c.fail_at({"parallel.embeddings", "parallel.pipeline"},
                "sharded embedding tables need parallel.pipeline: 1", "set parallel.pipeline: 1");
  }

  std::vector<std::string> plan_notes(const JobSpec& s) const override {
    std::vector<std::string> out;
    const auto rows = table_rows(s.model);
    const int dp = s.parallel.data;
    const auto per = table_bytes_per_worker(s);
    const auto place = nn::dlrm::parse_placement(s.parallel.embeddings);
    if (place == nn::dlrm::Placement::kReplicated) {
      out.push_back(
          fmt::format("embeddings replicated: all {} tables on every worker, {} each "
                      "(parameters, gradients, optimizer state)",
                      rows.size(), spec::format_bytes(int64_t(per[0]))));
    } else {
      const auto splits = nn::dlrm::place_tables(rows, place, dp);
      out.push_back(fmt::format("embeddings {}: {} tables over {} data-parallel worker{}",
                                s.parallel.embeddings, rows.size(), dp, dp == 1 ? "" : "s"));
      for (int r = 0; r < dp; ++r) {
        std::vector<std::string> held;
        int64_t n = 0;
        for (size_t k = 0; k < rows.size(); ++k) {
          const int64_t lo = splits[k][size_t(r)], hi = splits[k][size_t(r) + 1];
          if (hi <= lo) continue;
          n += hi - lo;
          held.push_back(place == nn::dlrm::Placement::kTable
                             ? fmt::format("{}", k)
                             : fmt::format("{}[{}:{}]", k, lo, hi));
        }
        std::string list = fmt::format("{}", fmt::join(held, " "));
        if (list.size() > 100) list = list.substr(0, 97) + "...";
        out.push_back(fmt::format("  dp {:>3}  {} rows, {}  tables {}", r, n,
                                  spec::format_bytes(int64_t(per[size_t(r)])),
                                  held.empty() ? "-" : list));
      }
    }
    double max_rows = 0;
    for (int64_t r : rows) max_rows = std::max(max_rows, double(r));
    const double limit = worker_memory_limit(s);
    if (s.data.type == "synthetic-criteo" && s.data.eval_fraction > 0)
      out.push_back(fmt::format("eval       the planted model's AUC on the eval samples: {:.4f}",
                                SyntheticCriteo(s).planted_eval_auc()));
    if (place == nn::dlrm::Placement::kReplicated && dp > 1 && per[0] > limit / 4)
      out.push_back(
          "hint       the tables take over a quarter of a worker's memory: "
          "parallel.embeddings: table (or row) holds each row on one worker only");
    return out;
  }

  int pipeline_layers(const ModelSpec&) const override { return 1; }
  std::string layers_key() const override { return "model.top_mlp"; }
  std::string layer_word() const override { return "models"; }
  bool supports_pipeline() const override { return false; }
  bool supports_sharded_embeddings() const override { return true; }

  int64_t parameters(const ModelSpec& m) const override {
    const auto cfg = config_of(m);
    int64_t n = 0;
    for (int64_t r : cfg.tables) n += r * cfg.dim;
    int64_t in = cfg.dense;
    for (int w : cfg.bottom) n += in * w + w, in = w;
    in = nn::dlrm::interaction_width(int(cfg.tables.size()) + 1, cfg.dim);
    for (int w : cfg.top) n += in * w + w, in = w;
    return n;
  }
  spec::StageFigures stage_figures(const JobSpec& s, int, int, int, int64_t b, int64_t in_flight,
                                   int elem) const override {
    const auto cfg = config_of(s.model);
    spec::StageFigures f;
    f.parameters = parameters(s.model);
    const auto place = nn::dlrm::parse_placement(s.parallel.embeddings);
    if (place != nn::dlrm::Placement::kReplicated) {
      // This worker's share of the tables: the fullest data rank's rows.
      int64_t all = 0, most = 0;
      for (int64_t r : cfg.tables) all += r;
      const auto splits = nn::dlrm::place_tables(cfg.tables, place, s.parallel.data);
      for (int r = 0; r < s.parallel.data; ++r) {
        int64_t held = 0;
        for (const auto& sp : splits) held += sp[size_t(r) + 1] - sp[size_t(r)];
        most = std::max(most, held);
      }
      f.parameters -= (all - most) * cfg.dim;
    }
    int64_t outs = 0;
    for (int w : cfg.bottom) outs += 2 * w;
    for (int w : cfg.top) outs += 2 * w;
    const int64_t F = int64_t(cfg.tables.size()) + 1;
    outs += F * cfg.dim + nn::dlrm::interaction_width(int(F), cfg.dim);
    f.activation_bytes = double(b * outs * elem * in_flight);
    return f;
  }

  std::vector<TensorSpec> batch_schema(const JobSpec& s, int64_t rows) const override {
    return {{"dense", tensor::DType::kF32, {rows, s.model.integer("dense")}},
            {"sparse", tensor::DType::kI32, {rows, int64_t(table_rows(s.model).size())}},
            {"targets", tensor::DType::kF32, {rows}}};
  }
  std::unique_ptr<DataSet> make_data(const JobSpec& s) const override {
    if (s.data.type == "criteo") return std::make_unique<CriteoFile>(s);
    return std::make_unique<SyntheticCriteo>(s);
  }
  std::unique_ptr<nn::Model> make_model(const JobSpec& s, const ModelPlace& place) const override {
    nn::DlrmConfig c = config_of(s.model);
    c.placement = nn::dlrm::parse_placement(s.parallel.embeddings);
    c.dp_rank = place.dp_rank;
    c.dp_size = place.dp_size;
    return std::make_unique<nn::Dlrm>(c);
  }

  // Exact ROC AUC over every eval sample of every data rank (ties as average ranks).
  std::vector<std::pair<std::string, double>> eval_score_metrics(
      const nn::EvalScores& s) const override {
    return {{"eval_auc", nn::dlrm::roc_auc(s.scores.data(), s.labels.data(), s.scores.size())}};
  }
};

}  // namespace

std::shared_ptr<const Family> make_dlrm_family() {
  return std::make_shared<DlrmFamily>();
}

}  // namespace ptrain::models
