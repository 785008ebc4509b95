// The resnet family: torchvision's names and shapes, data read from real IDX/CIFAR files,
// synchronised BatchNorm making 2 workers equal 1 process (losses, weights, running stats),
// bit-exact resume, init_from with and without num_batches_tracked, and every bad input of the
// issue as one line naming the file or key with exit code 2.
#include "resnet/resnet.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "ptrain/core/error.h"
#include "ptrain/data/checkpoint.h"
#include "ptrain/data/images.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/models/registry.h"
#include "ptrain/spec/plan.h"
#include "ptrain/spec/spec.h"
#include "ptrain/train/setup.h"
#include "support/image_data.h"
#include "support/ptrain_process.h"
#include "support/rank_threads.h"

namespace ptrain::models {
namespace {

namespace fs = std::filesystem;
using ptrain::testing::ImageFiles;
using ptrain::testing::TempDir;
using spec::JobSpec;

// 8x8 one-channel images of 4 classes: a training split and a test split of 37 images.
struct Data {
  TempDir dir{"ptrain-resnet"};
  ImageFiles train = ptrain::testing::write_idx(dir.path(), "train", 256, 8, 8, 4, 1);
  ImageFiles test = ptrain::testing::write_idx(dir.path(), "t10k", 37, 8, 8, 4, 2);
};

std::string spec_text(const Data& d, int workers) {
  return fmt::format(
      "name: rn\n"
      "nodes: {{device: cpu, threads_per_proc: 1, procs_per_node: {w}}}\n"
      "parallel: {{data: {w}, bucket_mb: 0.001}}\n"
      "model: {{type: resnet, stem: cifar, widths: [4, 8], blocks: [1, 1], batch_norm: sync}}\n"
      "data: {{type: idx, path: {ti}, labels: {tl}, eval_path: {ei}, eval_labels: {el},\n"
      "        batch_size: 16, shuffle: true, normalize: {{mean: [0.2], std: [0.3]}}}}\n"
      "train: {{steps: 20, seed: 3, eval_every: 10,\n"
      "        optimizer: {{type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}}}}\n"
      "checkpoint: {{resume: never}}\n",
      fmt::arg("w", workers), fmt::arg("ti", d.train.images), fmt::arg("tl", d.train.labels),
      fmt::arg("ei", d.test.images), fmt::arg("el", d.test.labels));
}

JobSpec load(const Data& d, int workers, const std::vector<std::string>& overrides = {}) {
  return spec::load_string(spec_text(d, workers), d.dir.path() + "/job.yaml", overrides,
                           d.dir.path());
}

// Every tensor of two safetensors files within `rtol` of each other, relative to the tensor's
// largest magnitude (or bit-exact when rtol is 0).
void expect_same_tensors(const std::string& a_path, const std::string& b_path, double rtol) {
  auto a = data::SafetensorsFile::open(a_path), b = data::SafetensorsFile::open(b_path);
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (const auto& t : b.tensors()) {
    const auto* other = a.find(t.name);
    ASSERT_NE(other, nullptr) << t.name;
    ASSERT_EQ(other->shape, t.shape) << t.name;
    std::vector<float> x(size_t(t.numel())), y(size_t(t.numel()));
    a.read_f32(t.name, x.data());
    b.read_f32(t.name, y.data());
    double scale = 0;
    for (float v : y) scale = std::max(scale, double(std::abs(v)));
    for (size_t i = 0; i < x.size(); ++i) {
      if (rtol == 0)
        ASSERT_EQ(x[i], y[i]) << t.name << "[" << i << "]";
      else
        ASSERT_LE(std::abs(double(x[i]) - y[i]), rtol * std::max(scale, 1e-6))
            << t.name << "[" << i << "]";
    }
  }
}

std::string latest_model(const std::string& dir) {
  auto p = data::find_latest_complete(dir);
  EXPECT_TRUE(p.has_value()) << dir;
  return p ? p->model_path() : "";
}

TEST(ResNet, NamesAndShapesAreTorchvisionsResNet18) {
  nn::ResNetConfig c;  // the defaults: ResNet-18, 3 channels, imagenet stem
  c.classes = 10;
  nn::ResNet m(c);
  // torchvision.models.resnet18(num_classes=10): 11,181,642 parameters, 122 state_dict entries.
  EXPECT_EQ(m.num_params(), 11181642u);
  EXPECT_EQ(m.params().size() + m.buffers().size(), 122u);
  auto shape_of = [&](const std::string& name) -> std::vector<int64_t> {
    if (int i = m.find_param(name); i >= 0) return m.params()[size_t(i)].shape;
    if (int i = m.find_buffer(name); i >= 0) return m.buffers()[size_t(i)].shape;
    ADD_FAILURE() << name << " is not in the model";
    return {-1};
  };
  EXPECT_EQ(shape_of("conv1.weight"), (std::vector<int64_t>{64, 3, 7, 7}));
  EXPECT_EQ(shape_of("bn1.running_var"), (std::vector<int64_t>{64}));
  EXPECT_EQ(shape_of("bn1.num_batches_tracked"), (std::vector<int64_t>{}));
  EXPECT_EQ(shape_of("layer1.1.conv2.weight"), (std::vector<int64_t>{64, 64, 3, 3}));
  EXPECT_EQ(shape_of("layer2.0.conv1.weight"), (std::vector<int64_t>{128, 64, 3, 3}));
  EXPECT_EQ(shape_of("layer2.0.downsample.0.weight"), (std::vector<int64_t>{128, 64, 1, 1}));
  EXPECT_EQ(shape_of("layer2.0.downsample.1.running_mean"), (std::vector<int64_t>{128}));
  EXPECT_EQ(shape_of("layer4.1.bn2.bias"), (std::vector<int64_t>{512}));
  EXPECT_EQ(shape_of("fc.weight"), (std::vector<int64_t>{10, 512}));
  EXPECT_EQ(shape_of("fc.bias"), (std::vector<int64_t>{10}));
  EXPECT_EQ(m.find_param("layer1.0.downsample.0.weight"), -1);  // no width or stride change
  // Registration order is the state_dict's: the first and last parameters, decay on >= 2-D.
  EXPECT_EQ(m.params().front().name, "conv1.weight");
  EXPECT_EQ(m.params()[1].name, "bn1.weight");
  EXPECT_EQ(m.params()[3].name, "layer1.0.conv1.weight");
  EXPECT_EQ(m.params().back().name, "fc.bias");
  for (const auto& p : m.params()) EXPECT_EQ(p.decay, p.shape.size() >= 2) << p.name;
  for (const auto& b : m.buffers())
    EXPECT_EQ(b.optional, b.name.find("num_batches_tracked") != std::string::npos) << b.name;
}

TEST(ResNet, FamilyCountsTheModelsParameters) {
  Data d;
  for (auto stem : {"cifar", "imagenet"}) {
    JobSpec s = load(
        d, 1, {fmt::format("model.stem={}", stem), "model.widths=[4, 8]", "model.blocks=[2, 1]"});
    auto model = models::make_model(s, tensor::Device::kCpu, 0, 0);
    EXPECT_EQ(family_of(s).parameters(s.model), int64_t(model->num_params())) << stem;
    auto plan = spec::make_plan(s);
    EXPECT_EQ(plan.parameters, int64_t(model->num_params()));
  }
}

TEST(ResNet, ChannelsAndClassesComeFromTheData) {
  Data d;
  JobSpec s = load(d, 1);
  EXPECT_EQ(s.model.integer("in_channels"), 1);
  EXPECT_EQ(s.model.integer("classes"), 4);
  // Resolved values are the spec's own: they survive the YAML round trip (job.yaml).
  EXPECT_EQ(spec::load_string(spec::to_yaml(s), d.dir.path() + "/back.yaml"), s);
  // CIFAR-10: three channels, ten classes.
  std::string bin = ptrain::testing::write_cifar(d.dir.path() + "/data_batch_1.bin", 12, 4);
  JobSpec c = spec::load_string(
      fmt::format("model: {{type: resnet, stem: cifar, widths: [4], blocks: [1]}}\n"
                  "data: {{type: cifar, path: {}, batch_size: 4}}\n"
                  "nodes: {{device: cpu}}\n",
                  d.dir.path()),
      "cifar.yaml");
  EXPECT_EQ(c.model.integer("in_channels"), 3);
  EXPECT_EQ(c.model.integer("classes"), 10);
  auto set = data::load_cifar(d.dir.path());
  EXPECT_EQ(set.count, 12);
  EXPECT_EQ(set.C, 3);
}

TEST(ResNet, EvaluationCoversTheTestSplitOncePaddingTheLastBatch) {
  Data d;
  JobSpec s = load(d, 1);
  auto set = family_of(s).make_data(s);
  EXPECT_TRUE(set->has_eval());
  EXPECT_EQ(set->eval_batches(), 3);  // 37 images in batches of 16
  EXPECT_EQ(set->global_targets(0, data::Split::kEval), 16);
  EXPECT_EQ(set->global_targets(2, data::Split::kEval), 5);
  HostBatch b(family_of(s).batch_schema(s, 16), 16, 1);
  set->fill(2, 0, 1, 0, 1, data::Split::kEval, b);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(b.i32("targets")[i] < 0, i >= 5) << i;
  // Two workers see 37 too: the data-parallel shares add up to the split.
  auto two = load(d, 2);
  auto runs = ptrain::testing::run_ranks(two);
  const auto& m = runs[0].result.history[9].eval_metrics;
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].first, "eval_accuracy");
  EXPECT_NE(runs[0].reports[9].find("\"eval_accuracy\""), std::string::npos);
}

TEST(ResNet, AugmentationIsAPureFunctionOfSeedEpochAndSample) {
  Data d;
  JobSpec plain = load(d, 1, {"data.shuffle=false"});
  JobSpec aug = load(d, 1, {"data.shuffle=false", "data.augment={crop_padding: 2, hflip: true}"});
  auto a = family_of(aug).make_data(aug), p = family_of(plain).make_data(plain);
  auto schema = family_of(aug).batch_schema(aug, 16);
  HostBatch x(schema, 16, 1), y(schema, 16, 1), z(schema, 16, 1), q(schema, 16, 1);
  a->fill(3, 0, 1, 0, 1, data::Split::kTrain, x);
  a->fill(3, 0, 1, 0, 1, data::Split::kTrain, y);
  p->fill(3, 0, 1, 0, 1, data::Split::kTrain, q);
  a->fill(3 + 16, 0, 1, 0, 1, data::Split::kTrain, z);  // the same samples one epoch later
  const size_t n = 16 * 64;
  EXPECT_TRUE(std::equal(x.f32("images"), x.f32("images") + n, y.f32("images")));
  EXPECT_FALSE(std::equal(x.f32("images"), x.f32("images") + n, q.f32("images")));
  EXPECT_FALSE(std::equal(x.f32("images"), x.f32("images") + n, z.f32("images")));
  EXPECT_TRUE(std::equal(x.i32("targets"), x.i32("targets") + 16, q.i32("targets")));
  EXPECT_TRUE(std::equal(x.i32("targets"), x.i32("targets") + 16, z.i32("targets")));
  // shuffle: false reads samples in file order.
  auto set = data::load_idx(d.train.images, d.train.labels);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(q.i32("targets")[i], set.labels[size_t(48 + i)]);
  // Normalisation: (pixel / 255 - 0.2) / 0.3.
  EXPECT_NEAR(q.f32("images")[0], (set.pixels[48 * 64] / 255.0 - 0.2) / 0.3, 1e-5);
}

class SyncBatchNorm : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(SyncBatchNorm, TwoWorkersEqualOneProcessIncludingRunningStatistics) {
  Data d;
  TempDir one_dir, two_dir;
  auto overrides = GetParam();
  auto with_dir = [&](const std::string& dir) {
    auto o = overrides;
    o.push_back("checkpoint.dir=" + dir);
    return o;
  };
  auto one = ptrain::testing::run_ranks(load(d, 1, with_dir(one_dir.path())));
  auto two = ptrain::testing::run_ranks(load(d, 2, with_dir(two_dir.path())));
  const auto& a = one[0].result.history;
  const auto& b = two[0].result.history;
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(b[i].loss, a[i].loss, 1e-5 * std::abs(a[i].loss)) << "step " << i + 1;
  EXPECT_LT(a.back().loss, a.front().loss);
  ASSERT_EQ(a[19].eval_metrics.size(), 1u);
  EXPECT_NEAR(b[19].eval_loss, a[19].eval_loss, 1e-5 * a[19].eval_loss);
  EXPECT_EQ(b[19].eval_metrics[0].second, a[19].eval_metrics[0].second);
  // Final weights and buffers (running_mean, running_var, num_batches_tracked).
  expect_same_tensors(latest_model(two_dir.path()), latest_model(one_dir.path()), 1e-5);
  auto f = data::SafetensorsFile::open(latest_model(two_dir.path()));
  float count = 0;
  f.read_f32("layer2.0.downsample.1.num_batches_tracked", &count);
  EXPECT_EQ(count, 20.0f);
  // The statistics' allreduces are reported beside the gradients'.
  EXPECT_NE(two[0].reports.back().find("\"dp_stat_allreduces\""), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Reducers, SyncBatchNorm,
                         ::testing::Values(std::vector<std::string>{},  // buckets, overlapped
                                           std::vector<std::string>{"parallel.zero=1"},
                                           std::vector<std::string>{
                                               "train.optimizer={type: adamw, lr: 0.003}",
                                               "train.label_smoothing=0.1"}),
                         [](const auto& info) { return "v" + std::to_string(info.index); });

TEST(LocalBatchNorm, TwoWorkersNormaliseTheirOwnHalves) {
  Data d;
  auto one = ptrain::testing::run_ranks(load(d, 1, {"model.batch_norm=local"}));
  auto two = ptrain::testing::run_ranks(load(d, 2, {"model.batch_norm=local"}));
  // Step 1 sees the same weights, but per-worker statistics give another loss.
  EXPECT_GT(std::abs(two[0].result.history[0].loss - one[0].result.history[0].loss), 1e-6);
  EXPECT_LT(two[0].result.history.back().loss, two[0].result.history.front().loss);
}

TEST(ResNet, CheckpointResumesBitExactly) {
  Data d;
  TempDir full, part;
  // Constant learning rate, so a 10-step run is the first half of a 20-step one.
  std::vector<std::string> o = {"data.augment={crop_padding: 1, hflip: true}",
                                "model.batch_norm=local", "checkpoint.resume=auto"};
  auto with = [&](const std::string& dir, int steps) {
    auto v = o;
    v.push_back("checkpoint.dir=" + dir);
    v.push_back(fmt::format("train.steps={}", steps));
    return v;
  };
  auto a = ptrain::testing::run_ranks(load(d, 2, with(full.path(), 20)));
  ptrain::testing::run_ranks(load(d, 2, with(part.path(), 10)));
  auto b = ptrain::testing::run_ranks(load(d, 2, with(part.path(), 20)));
  EXPECT_EQ(b[0].result.first_step, 10);
  ASSERT_EQ(b[0].result.history.size(), 10u);
  for (size_t i = 0; i < 10; ++i)
    EXPECT_EQ(b[0].result.history[i].loss, a[0].result.history[10 + i].loss) << "step " << 11 + i;
  expect_same_tensors(latest_model(part.path()), latest_model(full.path()), 0);
}

// A model's parameters and buffers as a safetensors file, optionally leaving tensors out or
// writing num_batches_tracked as I64 (as PyTorch does).
std::string write_weights(const std::string& path, const nn::Model& m,
                          const std::vector<std::string>& drop, bool i64_counts,
                          const std::string& reshape = "") {
  data::SafetensorsWriter w;
  std::vector<std::vector<int64_t>> counts;
  counts.reserve(m.buffers().size());
  for (const auto& p : m.params()) {
    if (std::find(drop.begin(), drop.end(), p.name) != drop.end()) continue;
    auto shape = p.shape;
    if (p.name == reshape) shape = {int64_t(p.numel)};
    w.add(p.name, m.param_data() + p.offset, shape);
  }
  for (const auto& b : m.buffers()) {
    if (std::find(drop.begin(), drop.end(), b.name) != drop.end()) continue;
    const float* v = m.buffer_data() + b.offset;
    if (i64_counts && b.optional) {
      counts.push_back({int64_t(v[0])});
      w.add({b.name, DType::kI64, b.shape, counts.back().data()});
    } else {
      auto shape = b.shape;
      if (b.name == reshape) shape = {int64_t(b.numel), 1};
      w.add(b.name, v, shape);
    }
  }
  std::ofstream(path, std::ios::binary) << w.serialize();
  return path;
}

TEST(ResNet, InitFromTakesTorchvisionStyleFilesAndNamesWhatIsWrong) {
  Data d;
  JobSpec s = load(d, 1);
  auto trained = models::make_model(s, tensor::Device::kCpu, 0, 0);
  trained->init(99);
  for (size_t i = 0; i < trained->num_buffer_elems(); ++i) trained->buffer_data()[i] += 0.5f;
  for (const auto& b : trained->buffers())
    if (b.optional) trained->buffer_data()[b.offset] = 7.0f;  // num_batches_tracked
  const std::string counts = "bn1.num_batches_tracked";
  // I64 counters load; files without them (older torchvision) load too.
  for (bool i64 : {true, false}) {
    auto path =
        write_weights(d.dir.path() + "/w.safetensors", *trained,
                      i64 ? std::vector<std::string>{} : std::vector<std::string>{counts}, i64);
    auto m = models::make_model(s, tensor::Device::kCpu, 0, 0);
    m->init(1);
    train::load_weights(*m, path);
    EXPECT_TRUE(
        std::equal(m->param_data(), m->param_data() + m->num_params(), trained->param_data()));
    const int c = m->find_buffer(counts);
    EXPECT_EQ(m->buffer_data()[m->buffers()[size_t(c)].offset], i64 ? 7.0f : 0.0f);
    const int rv = m->find_buffer("layer1.0.bn1.running_var");
    EXPECT_EQ(m->buffer_data()[m->buffers()[size_t(rv)].offset], 1.5f);
  }
  auto error_of = [&](const std::string& path) {
    auto m = models::make_model(s, tensor::Device::kCpu, 0, 0);
    try {
      train::load_weights(*m, path);
    } catch (const ConfigError& e) {
      EXPECT_EQ(e.exit_code(), 2);
      EXPECT_EQ(e.message().find('\n'), std::string::npos);
      EXPECT_NE(e.message().find(path), std::string::npos) << e.message();
      return e.message();
    }
    ADD_FAILURE() << "no error for " << path;
    return std::string();
  };
  auto missing = write_weights(d.dir.path() + "/missing.safetensors", *trained,
                               {"layer1.0.bn1.running_var"}, true);
  EXPECT_NE(error_of(missing).find("layer1.0.bn1.running_var is missing"), std::string::npos);
  auto shape = write_weights(d.dir.path() + "/shape.safetensors", *trained, {}, true,
                             "layer2.0.bn2.running_mean");
  EXPECT_NE(error_of(shape).find("layer2.0.bn2.running_mean has shape [8,1] in the file but [8]"),
            std::string::npos)
      << error_of(shape);
}

// --- torchvision interop (needs python3 with torch and torchvision; skipped without) ---

// Debian's python3-torch installs for /usr/bin/python3, which another python3 on PATH may hide.
std::string torchvision_python() {
  for (const char* py : {"/usr/bin/python3", "python3"})
    if (std::system(
            fmt::format("{} -c 'import torch, torchvision, numpy' > /dev/null 2>&1", py).c_str()) ==
        0)
      return py;
  return "";
}

std::vector<float> read_floats(const std::string& path) {
  std::string bytes = ptrain::testing::read_file(path);
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

// Eval-mode logits of `m` on the 4 images of `in`.
std::vector<float> our_logits(nn::Model& m, const std::vector<float>& in) {
  m.set_training(false);
  auto acts = m.make_activations(4, 1);
  std::vector<int32_t> targets(4, 0);
  nn::Batch b;
  b.B = 4;
  b.add("images", tensor::DType::kF32, {4, 3, 32, 32}, in.data());
  b.add("targets", tensor::DType::kI32, {4}, targets.data());
  m.forward(b, *acts);
  return dynamic_cast<nn::ResNet&>(m).logits(*acts);
}

TEST(TorchvisionInterop, StateDictsLoadBothWays) {
  const std::string python = torchvision_python();
  if (python.empty()) GTEST_SKIP() << "python3 with torch and torchvision is not installed";
  TempDir dir;
  const std::string py = std::string(PTRAIN_SOURCE_DIR) + "/tests/models/torchvision_interop.py";
  const std::string tv = dir.path() + "/tv.safetensors", in = dir.path() + "/in.bin",
                    tv_logits = dir.path() + "/tv_logits.bin";
  ASSERT_EQ(
      std::system(fmt::format("{} {} export {} {} {}", python, py, tv, in, tv_logits).c_str()), 0);
  // ResNet-18 with 10 classes on 32x32 CIFAR-10 images: torchvision's resnet18(num_classes=10).
  ptrain::testing::write_cifar(dir.path() + "/data_batch_1.bin", 8, 3);
  JobSpec s = spec::load_string(
      fmt::format("nodes: {{device: cpu, threads_per_proc: 1}}\n"
                  "model: {{type: resnet}}\n"
                  "data: {{type: cifar, path: {}, batch_size: 4}}\n"
                  "train: {{steps: 2, optimizer: {{type: sgd, lr: 0.01, momentum: 0.9}}}}\n"
                  "checkpoint: {{dir: {}/ckpt, resume: never}}\n",
                  dir.path(), dir.path()),
      "tv.yaml");
  const auto x = read_floats(in);
  // torchvision -> ptrain: init_from a torchvision state_dict (I64 num_batches_tracked).
  {
    JobSpec t = s;
    t.model.init_from = tv;
    auto m = train::make_model(t, tensor::Device::kCpu, 0, 0);
    auto ours = our_logits(*m, x), theirs = read_floats(tv_logits);
    ASSERT_EQ(ours.size(), theirs.size());
    for (size_t i = 0; i < ours.size(); ++i)
      EXPECT_NEAR(ours[i], theirs[i], 1e-4 * (1 + std::abs(theirs[i]))) << i;
  }
  // ptrain -> torchvision: a checkpoint of two training steps (running statistics moved)
  // loads with strict=True and gives our logits.
  ptrain::testing::run_ranks(s);
  const std::string ckpt = latest_model(dir.path() + "/ckpt"), ck_logits = dir.path() + "/ck.bin";
  ASSERT_EQ(
      std::system(fmt::format("{} {} import {} {} {}", python, py, ckpt, in, ck_logits).c_str()),
      0);
  JobSpec t = s;
  t.model.init_from = ckpt;
  auto m = train::make_model(t, tensor::Device::kCpu, 0, 0);
  auto ours = our_logits(*m, x), theirs = read_floats(ck_logits);
  ASSERT_EQ(ours.size(), theirs.size());
  for (size_t i = 0; i < ours.size(); ++i)
    EXPECT_NEAR(ours[i], theirs[i], 1e-4 * (1 + std::abs(theirs[i]))) << i;
}

// --- bad input: one line naming the file or the key, exit code 2 ---

std::string load_error(const std::string& yaml, const std::string& base,
                       const std::vector<std::string>& overrides = {}) {
  try {
    spec::load_string(yaml, base + "/job.yaml", overrides, base);
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_FALSE(e.hint().empty()) << e.message();
    EXPECT_EQ(e.message().find('\n'), std::string::npos) << e.message();
    return e.message();
  }
  ADD_FAILURE() << "loaded without an error";
  return {};
}

TEST(ResNetBadInput, EachIsOneLineNamingTheFileOrKey) {
  Data d;
  const std::string base = d.dir.path(), text = spec_text(d, 1);
  auto expect = [&](const std::vector<std::string>& overrides,
                    const std::vector<std::string>& has) {
    std::string msg = load_error(text, base, overrides);
    for (const auto& h : has) EXPECT_NE(msg.find(h), std::string::npos) << msg << "\n want: " << h;
  };
  // IDX with a wrong magic: the labels file given as images.
  expect({"data.path=" + d.train.labels}, {d.train.labels, "magic 0x00000801", "data.path"});
  // A truncated file, compressed and not.
  for (bool gz : {true, false}) {
    auto f = ptrain::testing::write_idx(base, gz ? "cut" : "cutraw", 64, 8, 8, 4, 5, gz);
    fs::resize_file(f.images, fs::file_size(f.images) / 2);
    expect({"data.path=" + f.images, "data.labels=" + f.labels},
           {f.images, "truncated", "data.path"});
  }
  // Labels count != images count.
  auto fewer = ptrain::testing::write_idx(base, "fewer", 255, 8, 8, 4, 1);
  expect({"data.labels=" + fewer.labels},
         {fewer.labels, "has 255 labels", d.train.images, "has 256 images", "data.labels"});
  // A label >= classes.
  expect({"model.classes=3"}, {d.train.labels, "go up to 3", "model.classes"});
  expect({"model.classes=3", "data.eval_path=" + d.test.images},
         {"model.classes"});  // eval labels too (the train check fires first)
  // An image too small for the stem's downsampling.
  expect({"model.stem=imagenet", "model.widths=[4, 8, 8]", "model.blocks=[1, 1, 1]"},
         {"model.stem", "too small", "8x8"});
  // widths / blocks length mismatch.
  expect({"model.blocks=[1]"}, {"model.blocks", "2 stages", "model.blocks has 1"});
  // What the family refuses with its reason.
  expect({"parallel.tensor=2", "nodes.procs_per_node=2"}, {"parallel.tensor", "tensor-parallel"});
  expect({"parallel.pipeline=2", "nodes.procs_per_node=2"}, {"parallel.pipeline", "pipeline"});
  expect({"nodes.device=cuda"}, {"nodes.device", "CPU kernels only"});
  expect({"parallel.data_mode=async", "parallel.data=2", "nodes.procs_per_node=2"},
         {"model.batch_norm", "data_mode: sync"});
  expect({"data.normalize={mean: [0.1, 0.2], std: [1, 1]}"}, {"data.normalize", "2 normalize"});
  expect({"data.labels="}, {"data.labels"});
  expect({"train.precision=bf16"}, {"train.precision"});
  expect({"data.eval_fraction=0.1"}, {"data.eval_fraction", "eval_path"});
}

TEST(ResNetBadInput, ValidateExitsTwoWithOneLine) {
  Data d;
  std::string path = d.dir.path() + "/bad.yaml";
  std::string text = spec_text(d, 1);
  const std::string from = "path: " + d.train.images;
  text.replace(text.find(from), from.size(), "path: " + d.train.labels);
  std::ofstream(path) << text;
  ptrain::testing::PtrainProcess p({"validate", path});
  EXPECT_EQ(p.finish(), 2) << p.err;
  EXPECT_EQ(ptrain::testing::count(p.err, "\n"), 1u) << p.err;
  EXPECT_NE(p.err.find(d.train.labels), std::string::npos) << p.err;
  EXPECT_NE(p.err.find("data.path"), std::string::npos) << p.err;
}

TEST(ResNetBadInput, ReadersNameTheFile) {
  Data d;
  auto f = ptrain::testing::write_idx(d.dir.path(), "short", 16, 8, 8, 4, 7, false);
  fs::resize_file(f.images, fs::file_size(f.images) - 5);
  try {
    data::load_idx(f.images, f.labels);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(e.message().find(f.images), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("truncated"), std::string::npos) << e.message();
  }
  std::string bin = d.dir.path() + "/data_batch_9.bin";
  ptrain::testing::write_cifar(bin, 3, 1);
  fs::resize_file(bin, fs::file_size(bin) - 1);
  try {
    data::load_cifar(bin);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(e.message().find(bin), std::string::npos) << e.message();
  }
}

}  // namespace
}  // namespace ptrain::models
