#include "ptrain/data/checkpoint.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "ptrain/core/error.h"
#include "test_util.h"

namespace ptrain::data {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

// A small model and optimizer state whose values depend on the step.
struct Fixture {
  explicit Fixture(int64_t step, size_t n = 6) : wte(n), m(n) {
    for (size_t i = 0; i < n; ++i) {
      wte[i] = static_cast<float>(step) + 0.25f * static_cast<float>(i);
      m[i] = -static_cast<float>(i);
    }
    data.step = step;
    data.model.push_back({"wte.weight", DType::kF32, {static_cast<int64_t>(n) / 2, 2}, wte.data()});
    data.optim.push_back({"exp_avg", DType::kF32, {static_cast<int64_t>(n)}, m.data()});
    data.metadata = {{"rng", "state-" + std::to_string(step)}, {"data_step", std::to_string(step)}};
  }
  std::vector<float> wte, m;
  CheckpointData data;
};

// Captures spdlog warnings for the lifetime of the object.
class LogCapture {
 public:
  LogCapture() : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64)) {
    spdlog::default_logger()->sinks().push_back(sink_);
  }
  ~LogCapture() { spdlog::default_logger()->sinks().pop_back(); }
  std::string text() const {
    std::string s;
    for (const auto& line : sink_->last_formatted()) s += line;
    return s;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
};

TEST(Checkpoint, SaveThenFindRoundTripsModelOptimizerAndMetadata) {
  TempDir dir;
  Fixture f(100);
  CheckpointManifest saved = save_checkpoint(dir.file("ckpt"), f.data);
  EXPECT_TRUE(fs::exists(dir.file("ckpt/step-100.safetensors")));
  EXPECT_TRUE(fs::exists(dir.file("ckpt/step-100.optim.safetensors")));
  EXPECT_TRUE(fs::exists(dir.file("ckpt/step-100.json")));

  auto found = find_latest_complete(dir.file("ckpt"));
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->step, 100);
  EXPECT_EQ(found->metadata.at("rng"), "state-100");
  ASSERT_EQ(found->files.size(), 2u);
  EXPECT_EQ(found->files[0].checksum, saved.files[0].checksum);
  EXPECT_EQ(found->files[0].bytes, fs::file_size(found->model_path()));

  SafetensorsFile model = SafetensorsFile::open(found->model_path());
  EXPECT_EQ(model.metadata().at("format"), "pt");
  std::vector<float> w(6);
  model.read_f32("wte.weight", w.data());
  EXPECT_EQ(w, f.wte);
  std::vector<float> m(6);
  SafetensorsFile::open(found->optim_path()).read_f32("exp_avg", m.data());
  EXPECT_EQ(m, f.m);
}

TEST(Checkpoint, NoTempFilesRemainAfterASave) {
  TempDir dir;
  Fixture f(1);
  save_checkpoint(dir.path(), f.data);
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_NE(e.path().filename().string().front(), '.') << e.path();
  }
}

TEST(Checkpoint, KeepsOnlyTheNewestKeep) {
  TempDir dir;
  for (int64_t step : {10, 20, 30, 40}) {
    Fixture f(step);
    save_checkpoint(dir.path(), f.data, {.keep = 2});
  }
  EXPECT_EQ(list_checkpoints(dir.path()), (std::vector<int64_t>{40, 30}));
  EXPECT_FALSE(fs::exists(dir.file("step-20.safetensors")));
  EXPECT_FALSE(fs::exists(dir.file("step-10.optim.safetensors")));
}

TEST(Checkpoint, FallsBackToAnOlderOneWhenTheNewestIsCorrupt) {
  TempDir dir;
  for (int64_t step : {1, 2}) {
    Fixture f(step);
    save_checkpoint(dir.path(), f.data, {.keep = 5});
  }
  std::string bytes = testing::read_bytes(dir.file("step-2.safetensors"));
  bytes[bytes.size() - 1] ^= 0x55;  // same size, different content
  testing::write_bytes(dir.file("step-2.safetensors"), bytes);
  LogCapture log;
  auto found = find_latest_complete(dir.path());
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->step, 1);
  EXPECT_NE(log.text().find("step-2.safetensors' has checksum"), std::string::npos) << log.text();
}

TEST(Checkpoint, FilesWithoutAManifestDoNotCount) {
  TempDir dir;
  Fixture f1(1), f2(2);
  save_checkpoint(dir.path(), f1.data, {.keep = 5});
  save_checkpoint(dir.path(), f2.data, {.keep = 5});
  fs::remove(dir.file("step-2.json"));  // as if the process died before the manifest
  EXPECT_EQ(find_latest_complete(dir.path())->step, 1);
}

TEST(Checkpoint, MissingOrTruncatedFileIsNamed) {
  TempDir dir;
  Fixture f(3);
  save_checkpoint(dir.path(), f.data);
  fs::resize_file(dir.file("step-3.optim.safetensors"), 10);
  EXPECT_THROW_MSG(validate_checkpoint(dir.file("step-3.json")), ConfigError,
                   "step-3.optim.safetensors' is 10 bytes, its manifest says");
  fs::remove(dir.file("step-3.safetensors"));
  EXPECT_THROW_MSG(validate_checkpoint(dir.file("step-3.json")), ConfigError,
                   "step-3.safetensors' (listed in");
  EXPECT_FALSE(find_latest_complete(dir.path()).has_value());
}

TEST(Checkpoint, EmptyOrMissingFolderHasNoCheckpoint) {
  TempDir dir;
  EXPECT_FALSE(find_latest_complete(dir.path()).has_value());
  EXPECT_FALSE(find_latest_complete(dir.file("absent")).has_value());
}

TEST(Checkpoint, RefusesNonFiniteWeightsNamingTheTensor) {
  TempDir dir;
  Fixture f(7);
  f.wte[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW_MSG(save_checkpoint(dir.path(), f.data), Error,
                   "model tensor 'wte.weight' holds nan at flat index 3");
  f.wte[3] = std::numeric_limits<float>::infinity();
  EXPECT_THROW_MSG(save_checkpoint(dir.path(), f.data), Error, "holds inf");
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(Checkpoint, SavingAStepAgainReplacesIt) {
  TempDir dir;
  Fixture a(5), b(5);
  b.wte[0] = 123.0f;
  save_checkpoint(dir.path(), a.data);
  save_checkpoint(dir.path(), b.data);
  auto found = find_latest_complete(dir.path());
  ASSERT_TRUE(found.has_value());
  std::vector<float> w(6);
  SafetensorsFile::open(found->model_path()).read_f32("wte.weight", w.data());
  EXPECT_EQ(w[0], 123.0f);
}

// A full disk mid-save: the new checkpoint fails with IoError and leaves no trace; the previous
// one still validates. Needs root to mount a tiny tmpfs.
TEST(Checkpoint, FailedWriteLeavesThePreviousCheckpointIntact) {
  TempDir dir;
  std::string mnt = dir.file("mnt");
  fs::create_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=256k") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root): " << std::strerror(errno);
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};

  Fixture small(1, 1024);  // ~4 KB + ~4 KB
  save_checkpoint(mnt, small.data);
  Fixture big(2, 128 * 1024);  // 512 KB model: does not fit
  EXPECT_THROW_MSG(save_checkpoint(mnt, big.data), IoError, "No space left on device");

  auto found = find_latest_complete(mnt);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->step, 1);
  for (const auto& e : fs::directory_iterator(mnt)) {
    std::string name = e.path().filename().string();
    EXPECT_TRUE(name.starts_with("step-1.")) << "left behind: " << name;
  }
}

TEST(Checkpoint, ManifestsWithTheOlderFnvChecksumStillValidate) {
  TempDir dir;
  Fixture f(3);
  auto saved = save_checkpoint(dir.path(), f.data);
  // Rewrite the manifest as an earlier version wrote it: FNV-1a 64 instead of XXH3-64.
  std::string manifest = testing::read_bytes(saved.manifest_path());
  for (const auto& file : saved.files) {
    const std::string bytes = testing::read_bytes(dir.file(file.name));
    const std::string xxh = fmt::format("\"xxh3_64\": \"{:016x}\"", file.checksum);
    const auto at = manifest.find(xxh);
    ASSERT_NE(at, std::string::npos) << manifest;
    manifest.replace(at, xxh.size(),
                     fmt::format("\"fnv1a64\": \"{:016x}\"", fnv1a64(bytes.data(), bytes.size())));
  }
  testing::write_bytes(saved.manifest_path(), manifest);
  auto old = validate_checkpoint(saved.manifest_path());
  EXPECT_EQ(old.files[0].checksum_kind, "fnv1a64");
  // And a corrupt file is still caught under the old checksum.
  std::string model = testing::read_bytes(saved.model_path());
  model[model.size() - 1] ^= 0x11;
  testing::write_bytes(saved.model_path(), model);
  EXPECT_THROW_MSG(validate_checkpoint(saved.manifest_path()), ConfigError, "fnv1a64");
}

TEST(Checkpoint, LargeAndSmallTensorsRoundTripThroughTheBufferedWriter) {
  TempDir dir;
  std::vector<float> big(700 * 1024), small(7);  // 2.8 MB goes straight; 28 B is gathered
  for (size_t i = 0; i < big.size(); ++i) big[i] = float(i % 9973) * 0.5f;
  for (size_t i = 0; i < small.size(); ++i) small[i] = float(i) + 0.125f;
  CheckpointData data;
  data.step = 4;
  data.model.push_back({"a", DType::kF32, {7}, small.data()});
  data.model.push_back({"b", DType::kF32, {700, 1024}, big.data()});
  data.model.push_back({"c", DType::kF32, {7}, small.data()});
  data.optim.push_back({"m", DType::kF32, {7}, small.data()});
  auto saved = save_checkpoint(dir.path(), data);
  validate_checkpoint(saved.manifest_path());
  auto file = SafetensorsFile::open(saved.model_path());
  std::vector<float> got_big(big.size()), got_small(small.size());
  file.read_f32("b", got_big.data());
  file.read_f32("c", got_small.data());
  EXPECT_EQ(got_big, big);
  EXPECT_EQ(got_small, small);
}

}  // namespace
}  // namespace ptrain::data
