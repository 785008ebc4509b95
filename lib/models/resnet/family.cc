// The `resnet` family: torchvision's ResNet with BasicBlocks (resnet/resnet.h) on IDX
// (MNIST / Fashion-MNIST) or CIFAR-10 images; data parallelism, sync or async, fp32 on CPU.
#include "ptrain/models/family.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ptrain/core/error.h"
#include "ptrain/data/images.h"
#include "ptrain/nn/init.h"
#include "resnet/resnet.h"

namespace ptrain::models {
namespace {

using spec::JobSpec;
using spec::ModelKey;
using spec::ModelSpec;

// The train split's header: channels, size, classes (largest label + 1).
data::ImageHeader train_header(const spec::DataSpec& d) {
  if (d.type == "cifar") return data::peek_cifar(d.path);
  return data::peek_idx(d.path, d.labels);
}

data::ImageHeader eval_header(const spec::DataSpec& d) {
  if (d.type == "cifar") return data::peek_cifar(d.eval_path);
  return data::peek_idx(d.eval_path, d.eval_labels);
}

data::ImageSet load_images(const std::string& type, const std::string& path,
                           const std::string& labels) {
  return type == "cifar" ? data::load_cifar(path) : data::load_idx(path, labels);
}

nn::ResNetConfig config_of(const JobSpec& s, int height, int width) {
  const ModelSpec& m = s.model;
  nn::ResNetConfig c;
  c.in_channels = m.i("in_channels");
  c.classes = m.i("classes");
  c.height = height;
  c.width = width;
  c.widths.clear();
  c.blocks.clear();
  for (int64_t v : m.ints("widths")) c.widths.push_back(int(v));
  for (int64_t v : m.ints("blocks")) c.blocks.push_back(int(v));
  c.imagenet_stem = m.text("stem") == "imagenet";
  c.sync_bn = m.text("batch_norm") == "sync";
  c.label_smoothing = float(s.train.label_smoothing);
  return c;
}

// Images: every rank reads the whole file(s) and takes its share of each global batch.
// Training samples follow data::BatchOrder (file order, or a permutation per epoch with
// shuffle); augmentation draws from (seed, epoch, sample), so a resumed run sees the same
// images. The eval split is read in order, the last batch padded with ignored targets.
class ImageData : public DataSet {
 public:
  explicit ImageData(const JobSpec& s)
      : G_(s.data.batch_size),
        classes_(s.model.i("classes")),
        augment_(s.data.augment),
        key_(nn::param_key(s.train.seed, "resnet.augment")) {
    train_ = load_images(s.data.type, s.data.path, s.data.labels);
    check_labels(train_, s.data.type == "cifar" ? s.data.path : s.data.labels);
    if (!s.data.eval_path.empty()) {
      eval_ = load_images(s.data.type, s.data.eval_path, s.data.eval_labels);
      check_labels(eval_, s.data.type == "cifar" ? s.data.eval_path : s.data.eval_labels);
      if (eval_.C != train_.C || eval_.H != train_.H || eval_.W != train_.W)
        throw ConfigError(
            fmt::format("eval images '{}' are {}x{}x{}, training images '{}' {}x{}x{}",
                        eval_.origin, eval_.C, eval_.H, eval_.W, train_.origin, train_.C, train_.H,
                        train_.W),
            "data.eval_path must be a split of the same data set");
      eval_count_ = eval_.count;
    } else if (s.data.eval_fraction > 0) {
      // The last floor(N * f) samples in file order are held out.
      eval_count_ = int64_t(std::floor(double(train_.count) * s.data.eval_fraction));
      eval_first_ = train_.count - eval_count_;
    }
    train_count_ = train_.count - (s.data.eval_path.empty() ? eval_count_ : 0);
    if (train_count_ < 1)
      throw ConfigError(fmt::format("'{}' leaves no training images", train_.origin),
                        "lower data.eval_fraction");
    data::SamplerOptions o;
    o.batch_size = G_;
    o.shuffle = s.data.shuffle;
    o.seed = s.train.seed;
    order_ = std::make_unique<data::BatchOrder>(train_count_, o, s.data.shuffle);
    const int C = train_.C;
    scale_.assign(size_t(C), 1.0f / 255.0f);
    shift_.assign(size_t(C), 0.0f);
    if (!s.data.normalize.mean.empty()) {
      for (int c = 0; c < C; ++c) {  // (p/255 - mean) / std
        const double sd = s.data.normalize.std[size_t(c)];
        scale_[size_t(c)] = float(1.0 / (255.0 * sd));
        shift_[size_t(c)] = float(-s.data.normalize.mean[size_t(c)] / sd);
      }
    }
  }

  int64_t rows(int dp_size, int micro_total) const override {
    return order_->rows(dp_size, micro_total);
  }
  bool has_eval() const override { return eval_count_ > 0; }
  int64_t eval_batches() const override { return (eval_count_ + G_ - 1) / G_; }

  void fill(int64_t step, int dp_rank, int dp_size, int micro, int micro_total, data::Split split,
            HostBatch& out) const override {
    const int64_t n = rows(dp_size, micro_total);
    const int64_t first = order_->first(dp_rank, dp_size, micro, micro_total);
    float* x = out.f32("images");
    int32_t* y = out.i32("targets");
    const int64_t size = train_.image_size();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = first + i;
      float* img = x + i * size;
      if (split == data::Split::kEval) {
        const int64_t e = step * G_ + j;
        if (e >= eval_count_) {  // padding past the end of the split
          std::fill(img, img + size, 0.0f);
          y[i] = -1;
          continue;
        }
        const data::ImageSet& set = eval_first_ >= 0 ? train_ : eval_;
        const int64_t k = eval_first_ >= 0 ? eval_first_ + e : e;
        convert(set, k, img, nullptr);
        y[i] = set.labels[size_t(k)];
        continue;
      }
      const int64_t k = order_->item(step, j);
      const int64_t g = step * G_ + j;  // the sample's position in the whole stream
      const uint64_t draw = nn::mix64(key_ ^ nn::mix64(uint64_t(g / train_count_) + 1) ^
                                      nn::mix64(uint64_t(k) + 0x9E3779B97F4A7C15ull));
      convert(train_, k, img, augment_.enabled() ? &draw : nullptr);
      y[i] = train_.labels[size_t(k)];
    }
  }

  double global_targets(int64_t step, data::Split split) const override {
    if (split == data::Split::kTrain) return double(G_);
    return double(std::clamp<int64_t>(eval_count_ - step * G_, 0, G_));
  }

 private:
  void check_labels(const data::ImageSet& set, const std::string& file) const {
    for (size_t i = 0; i < set.labels.size(); ++i)
      if (set.labels[i] >= classes_)
        throw ConfigError(fmt::format("labels '{}': label {} of sample {} is not below "
                                      "model.classes = {}",
                                      file, set.labels[i], i, classes_),
                          "raise model.classes (or leave it unset to take it from the data)");
  }

  // Sample k of `set` as normalised floats; with `draw`, the random crop and flip of
  // data.augment (zero padding, as torchvision's RandomCrop, before normalisation).
  void convert(const data::ImageSet& set, int64_t k, float* img, const uint64_t* draw) const {
    const int C = set.C, H = set.H, W = set.W;
    const uint8_t* p = set.pixels.data() + k * set.image_size();
    int dy = 0, dx = 0;
    bool flip = false;
    if (draw) {
      const int pad = augment_.crop_padding;
      if (pad > 0) {
        dy = int(nn::uniform01(*draw, 0) * (2 * pad + 1) - 1e-9) - pad;
        dx = int(nn::uniform01(*draw, 1) * (2 * pad + 1) - 1e-9) - pad;
        dy = std::clamp(dy, -pad, pad);
        dx = std::clamp(dx, -pad, pad);
      }
      flip = augment_.hflip && nn::uniform01(*draw, 2) <= 0.5;
    }
    for (int c = 0; c < C; ++c) {
      const float a = scale_[size_t(c)], b = shift_[size_t(c)];
      for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w) {
          const int sh = h + dy, sw = (flip ? W - 1 - w : w) + dx;
          const float v = sh >= 0 && sh < H && sw >= 0 && sw < W
                              ? float(p[(int64_t(c) * H + sh) * W + sw])
                              : 0.0f;
          img[(int64_t(c) * H + h) * W + w] = v * a + b;
        }
    }
  }

  int64_t G_;
  int classes_;
  spec::AugmentSpec augment_;
  uint64_t key_;
  data::ImageSet train_, eval_;
  int64_t train_count_ = 0, eval_count_ = 0;
  int64_t eval_first_ = -1;  // eval_fraction: the held-out tail of train_
  std::unique_ptr<data::BatchOrder> order_;
  std::vector<float> scale_, shift_;
};

int64_t sum(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

class ResNetFamily : public Family {
 public:
  std::string type() const override { return "resnet"; }
  std::string summary() const override {
    return "torchvision ResNet (BasicBlocks) image classifier with BatchNorm, torchvision names";
  }
  const std::vector<ModelKey>& keys() const override {
    static const std::vector<ModelKey> k = {
        ModelKey::integer("in_channels", 0, 0, 4096,
                          "image channels; 0 = from the data (IDX 1, CIFAR-10 3)"),
        ModelKey::integer("classes", 0, 0, 1 << 20,
                          "classes; 0 = from the data (largest label + 1; CIFAR-10 10)"),
        ModelKey::int_list("widths", {64, 128, 256, 512}, 1, 65536,
                           "channels of each stage (layer1, layer2, ...); the stem has widths[0]"),
        ModelKey::int_list("blocks", {2, 2, 2, 2}, 1, 4096,
                           "BasicBlocks per stage ([2,2,2,2] is ResNet-18, [3,4,6,3] ResNet-34)"),
        ModelKey::choice("stem", "imagenet", {"imagenet", "cifar"},
                         "imagenet: 7x7/2 conv + 3x3/2 max-pool; cifar: 3x3/1 conv, no pool"),
        ModelKey::choice("batch_norm", "local", {"local", "sync"},
                         "BatchNorm statistics per worker (local) or over the data group (sync)"),
    };
    return k;
  }
  std::vector<std::string> data_types() const override { return {"idx", "cifar"}; }

  void resolve(JobSpec& s, const spec::SpecChecker& c) const override {
    ModelSpec& m = s.model;
    const bool need = m.integer("in_channels") == 0 || m.integer("classes") == 0;
    if (!need || (s.data.type != "idx" && s.data.type != "cifar")) return;
    if (s.data.type == "idx" && s.data.labels.empty())
      c.fail_at({"data.labels", "data.path"}, "IDX images need a labels file",
                "set data.labels (e.g. train-labels-idx1-ubyte.gz)");
    data::ImageHeader h;
    try {
      h = train_header(s.data);
    } catch (const ConfigError& e) {
      c.fail_at(
          {"data.path"},
          fmt::format("{} (model.in_channels and model.classes come from the data)", e.message()),
          e.hint().empty() ? "set model.in_channels and model.classes" : e.hint());
    }
    if (m.integer("in_channels") == 0) m.set("in_channels", int64_t(h.C));
    if (m.integer("classes") == 0) m.set("classes", int64_t(std::max(h.classes, 2)));
  }

  void check(const JobSpec& s, const spec::SpecChecker& c) const override {
    const ModelSpec& m = s.model;
    const auto widths = m.ints("widths"), blocks = m.ints("blocks");
    if (widths.size() != blocks.size())
      c.fail_at({"model.blocks", "model.widths"},
                fmt::format("model.widths has {} stages but model.blocks has {}", widths.size(),
                            blocks.size()),
                "give one width and one block count per stage");
    if (s.parallel.tensor > 1)
      c.fail_at({"parallel.tensor"},
                "the resnet family has no tensor-parallel split: its convolutions and "
                "BatchNorms are kept whole on every rank",
                "set parallel.tensor: 1 and scale with parallel.data");
    if (s.parallel.pipeline > 1)
      c.fail_at({"parallel.pipeline"},
                "the resnet family cannot be split into pipeline stages (its residual blocks "
                "are not cut into stages)",
                "set parallel.pipeline: 1 and scale with parallel.data");
    if (s.train.precision != "fp32")
      c.fail_at({"train.precision"}, "the resnet family trains in fp32 only",
                "set train.precision: fp32");
    if (s.nodes.device == "cuda")
      c.fail_at({"nodes.device"},
                "the resnet family has CPU kernels only (conv2d, batch norm and pooling have no "
                "CUDA version yet)",
                "set nodes.device: cpu");
    if (m.text("batch_norm") == "sync" && s.parallel.data_mode == "async")
      c.fail_at({"model.batch_norm", "parallel.data_mode"},
                "batch_norm: sync needs data_mode: sync (async workers are not at the same step "
                "to share batch statistics)",
                "use batch_norm: local with async, or data_mode: sync");
    const auto& d = s.data;
    if (d.type == "idx") {
      if (d.labels.empty())
        c.fail_at({"data.labels", "data.path"}, "IDX images need a labels file",
                  "set data.labels (e.g. train-labels-idx1-ubyte.gz)");
      if (!d.eval_path.empty() && d.eval_labels.empty())
        c.fail_at({"data.eval_labels", "data.eval_path"}, "IDX eval images need a labels file",
                  "set data.eval_labels (e.g. t10k-labels-idx1-ubyte.gz)");
    } else {
      if (!d.labels.empty() || !d.eval_labels.empty())
        c.fail_at({"data.labels", "data.eval_labels"},
                  "CIFAR-10 records carry their labels; data.labels is for IDX data",
                  "remove data.labels / data.eval_labels");
    }
    if (d.eval_labels.size() && d.eval_path.empty())
      c.fail_at({"data.eval_labels"}, "data.eval_labels without data.eval_path",
                "set data.eval_path to the eval images");
    const int C = m.i("in_channels"), classes = m.i("classes");
    if (C < 1)
      c.fail_at({"model.in_channels"}, "in_channels 0 (from the data) could not be resolved",
                "set model.in_channels");
    if (classes < 2)
      c.fail_at({"model.classes"},
                fmt::format("a classifier needs at least 2 classes, got {}", classes),
                "set model.classes");
    if (!d.normalize.mean.empty() && int(d.normalize.mean.size()) != C)
      c.fail_at({"data.normalize.mean", "data.normalize"},
                fmt::format("{} normalize means for {} image channels", d.normalize.mean.size(), C),
                "give one mean and one std per channel");
    // The data's headers: what the model must match. Unreadable data fails here already.
    data::ImageHeader h;
    try {
      h = train_header(d);
    } catch (const ConfigError& e) {
      c.fail_at(
          {d.type == "idx" && e.message().find(d.labels) != std::string::npos && !d.labels.empty()
               ? "data.labels"
               : "data.path"},
          e.message(), e.hint().empty() ? "check data.path" : e.hint());
    }
    if (h.C != C)
      c.fail_at({"model.in_channels"},
                fmt::format("the model takes {} channels but '{}' has {}", C, d.path, h.C),
                "leave model.in_channels unset to take it from the data");
    if (h.classes > classes)
      c.fail_at({"model.classes", "data.labels"},
                fmt::format("labels '{}' go up to {}, not below model.classes = {}",
                            d.type == "idx" ? d.labels : d.path, h.classes - 1, classes),
                "raise model.classes, or leave it unset to take it from the data");
    if (!d.eval_path.empty()) {
      data::ImageHeader e;
      try {
        e = eval_header(d);
      } catch (const ConfigError& err) {
        c.fail_at({err.message().find(d.eval_labels) != std::string::npos && !d.eval_labels.empty()
                       ? "data.eval_labels"
                       : "data.eval_path"},
                  err.message(), err.hint().empty() ? "check data.eval_path" : err.hint());
      }
      if (e.C != h.C || e.H != h.H || e.W != h.W)
        c.fail_at({"data.eval_path"},
                  fmt::format("eval images are {}x{}x{}, training images {}x{}x{}", e.C, e.H, e.W,
                              h.C, h.H, h.W),
                  "data.eval_path must be a split of the same data set");
      if (e.classes > classes)
        c.fail_at(
            {"data.eval_labels", "data.eval_path", "model.classes"},
            fmt::format("eval labels '{}' go up to {}, not below model.classes = {}",
                        d.type == "idx" ? d.eval_labels : d.eval_path, e.classes - 1, classes),
            "raise model.classes");
    }
    try {
      nn::validate(config_of(s, h.H, h.W));
    } catch (const ConfigError& e) {
      c.fail_at({"model.stem", "model.widths", "model.blocks"}, e.message(), e.hint());
    }
    if (s.train.label_smoothing >= 1)
      c.fail_at({"train.label_smoothing"}, "label_smoothing must be below 1", "use e.g. 0.1");
  }

  int pipeline_layers(const ModelSpec& m) const override { return int(sum(m.ints("blocks"))); }
  std::string layers_key() const override { return "model.blocks"; }
  std::string layer_word() const override { return "BasicBlocks"; }
  bool supports_pipeline() const override { return false; }
  std::string sample_word() const override { return "images"; }
  std::string target_word() const override { return "images"; }

  int64_t parameters(const ModelSpec& m) const override {
    const auto widths = m.ints("widths"), blocks = m.ints("blocks");
    const int64_t k = m.text("stem") == "imagenet" ? 7 : 3;
    int64_t C = widths.at(0);
    int64_t n = C * m.integer("in_channels") * k * k + 2 * C;
    for (size_t s = 0; s < widths.size() && s < blocks.size(); ++s) {
      const int64_t w = widths[s];
      for (int64_t b = 0; b < blocks[s]; ++b) {
        n += C * w * 9 + 2 * w + w * w * 9 + 2 * w;
        if ((b == 0 && s > 0) || C != w) n += C * w + 2 * w;
        C = w;
      }
    }
    return n + C * m.integer("classes") + m.integer("classes");
  }

  spec::StageFigures stage_figures(const JobSpec& s, int, int, int, int64_t b, int64_t in_flight,
                                   int elem) const override {
    spec::StageFigures f;
    f.parameters = parameters(s.model);
    const auto widths = s.model.ints("widths"), blocks = s.model.ints("blocks");
    int64_t bn = widths.at(0);  // BatchNorm channels: stem, 2 per block, 1 per downsample
    int64_t C = widths.at(0);
    for (size_t i = 0; i < widths.size() && i < blocks.size(); ++i)
      for (int64_t k = 0; k < blocks[i]; ++k) {
        bn += 2 * widths[i] + (((k == 0 && i > 0) || C != widths[i]) ? widths[i] : 0);
        C = widths[i];
      }
    int64_t norms = 1;
    C = widths.at(0);
    for (size_t i = 0; i < widths.size() && i < blocks.size(); ++i)
      for (int64_t k = 0; k < blocks[i]; ++k) {
        norms += 2 + (((k == 0 && i > 0) || C != widths[i]) ? 1 : 0);
        C = widths[i];
      }
    f.buffers = 2 * bn + norms;  // running mean and var, and one counter per BatchNorm
    try {                        // activations kept for backward: ~5 maps per block, 3 for the stem
      data::ImageHeader h = train_header(s.data);
      auto sizes = nn::resnet_feature_sizes(config_of(s, h.H, h.W));
      const bool imagenet = s.model.text("stem") == "imagenet";
      const int64_t stem_hw =
          imagenet ? int64_t((h.H + 1) / 2) * ((h.W + 1) / 2) : int64_t(h.H) * h.W;
      double per_image =
          double(widths[0]) * stem_hw * 2 + double(sizes[0].first) * sizes[0].second * widths[0];
      for (size_t i = 0; i < widths.size() && i < blocks.size(); ++i)
        per_image += 5.0 * double(blocks[i]) * widths[i] * sizes[i + 1].first * sizes[i + 1].second;
      f.activation_bytes = per_image * double(b) * double(elem) * double(in_flight);
    } catch (const Error&) {
    }
    return f;
  }

  std::vector<TensorSpec> batch_schema(const JobSpec& s, int64_t rows) const override {
    data::ImageHeader h = train_header(s.data);
    return {{"images", tensor::DType::kF32, {rows, s.model.integer("in_channels"), h.H, h.W}},
            {"targets", tensor::DType::kI32, {rows}}};
  }
  std::unique_ptr<DataSet> make_data(const JobSpec& s) const override {
    return std::make_unique<ImageData>(s);
  }
  std::unique_ptr<nn::Model> make_model(const JobSpec& s, const ModelPlace& place) const override {
    data::ImageHeader h = train_header(s.data);
    nn::ResNetConfig cfg = config_of(s, h.H, h.W);
    cfg.device = place.device;
    return std::make_unique<nn::ResNet>(cfg);
  }
  std::vector<std::string> eval_sum_names() const override { return {"correct", "count"}; }
  std::vector<std::pair<std::string, double>> eval_metrics(const nn::EvalSums& s) const override {
    auto count = s.count("count") ? s.at("count") : 0.0;
    auto correct = s.count("correct") ? s.at("correct") : 0.0;
    return {{"eval_accuracy", count > 0 ? correct / count : 0.0}};
  }
};

}  // namespace

std::shared_ptr<const Family> make_resnet_family() {
  return std::make_shared<ResNetFamily>();
}

}  // namespace ptrain::models
