// TensorBoard event files: the record framing with masked CRC-32C checked by an independent
// bitwise CRC, and every record decoded by `protoc --decode` against proto/tensorboard_event.proto.
#include "ptrain/launch/tensorboard.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ptrain/core/crc32c.h"
#include "support/ptrain_process.h"

namespace ptrain::launch {
namespace {

namespace fs = std::filesystem;
using ptrain::testing::TempDir;

// Bit-at-a-time CRC-32C: the definition, independent of the table-driven one under test.
uint32_t crc32c_bitwise(const std::string& s) {
  uint32_t c = 0xffffffffu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
  }
  return ~c;
}

uint32_t masked(uint32_t c) {
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

uint64_t le(const std::string& s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}

// The payloads of every record of an events file, each checked for both CRCs.
std::vector<std::string> records(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  std::vector<std::string> out;
  size_t at = 0;
  while (at < bytes.size()) {
    EXPECT_GE(bytes.size() - at, 16u) << "truncated record at " << at;
    if (bytes.size() - at < 16) break;
    uint64_t len = le(bytes, at, 8);
    EXPECT_EQ(le(bytes, at + 8, 4), masked(crc32c_bitwise(bytes.substr(at, 8))));
    std::string data = bytes.substr(at + 12, len);
    EXPECT_EQ(le(bytes, at + 12 + len, 4), masked(crc32c_bitwise(data)));
    out.push_back(data);
    at += 16 + len;
  }
  return out;
}

std::string protoc_decode(const std::string& payload, const TempDir& dir) {
  std::string in = dir.path() + "/record.bin", out = dir.path() + "/decoded.txt";
  std::ofstream(in, std::ios::binary) << payload;
  std::string cmd =
      "protoc --decode=tensorboard.Event --proto_path=" + std::string(PTRAIN_SOURCE_DIR) +
      "/proto tensorboard_event.proto < " + in + " > " + out;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  return ptrain::testing::read_file(out);
}

TEST(Crc32c, KnownValuesAndTheBitwiseDefinitionAgree) {
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  std::string s;
  for (int i = 0; i < 1000; ++i) s += static_cast<char>(i * 7 + 3);
  for (size_t n : {1u, 7u, 8u, 9u, 63u, 1000u})
    EXPECT_EQ(crc32c(s.data(), n), crc32c_bitwise(s.substr(0, n))) << n;
}

TEST(EventWriter, RecordsCarryValidCrcsAndDecodeAsEvents) {
  TempDir dir;
  std::string path;
  {
    EventWriter w(dir.path() + "/tb", 1764620000.5);
    path = w.path();
    w.add_metrics(R"({"step": 3, "total_steps": 10, "loss": 2.5, "lr": 0.001, "note": "x"})",
                  1764620001.0);
    w.add_metrics(R"({"no_step": 1})", 1764620002.0);  // skipped
    w.add_scalar("restarts", 1, 3, 1764620003.0);
  }
  EXPECT_EQ(fs::path(path).filename().string().rfind("events.out.tfevents.1764620000.", 0), 0u);
  auto recs = records(path);
  ASSERT_EQ(recs.size(), 3u);
  std::string first = protoc_decode(recs[0], dir);
  EXPECT_NE(first.find("file_version: \"brain.Event:2\""), std::string::npos) << first;
  std::string second = protoc_decode(recs[1], dir);
  EXPECT_NE(second.find("step: 3"), std::string::npos) << second;
  EXPECT_NE(second.find("tag: \"loss\"\n    simple_value: 2.5"), std::string::npos) << second;
  EXPECT_NE(second.find("tag: \"lr\""), std::string::npos) << second;
  EXPECT_EQ(second.find("total_steps"), std::string::npos) << second;
  EXPECT_EQ(second.find("note"), std::string::npos) << second;
  std::string third = protoc_decode(recs[2], dir);
  EXPECT_NE(third.find("tag: \"restarts\""), std::string::npos) << third;
}

TEST(EventWriter, ARunWritesItsMetricsAsScalars) {
  TempDir dir;
  std::string spec = dir.path() + "/job.yaml";
  std::ofstream(spec) << "name: tb\nlogging: {dir: " << dir.path() << "/runs}\n"
                      << "nodes: {procs_per_node: 1, device: cpu}\n"
                      << "model: {type: gpt, layers: 1, heads: 2, dim: 16, seq_len: 8, vocab: 32}\n"
                      << "train: {steps: 3}\n";
  ptrain::testing::PtrainProcess p({"run", spec});
  ASSERT_EQ(p.finish(Millis(60000)), 0) << p.err;
  std::string events;
  for (const auto& run : fs::directory_iterator(dir.path() + "/runs"))
    for (const auto& f : fs::directory_iterator(run.path() / "tb")) events = f.path().string();
  ASSERT_FALSE(events.empty());
  auto recs = records(events);
  ASSERT_EQ(recs.size(), 4u);  // file_version + 3 logged steps
  std::string last = protoc_decode(recs[3], dir);
  EXPECT_NE(last.find("step: 3"), std::string::npos) << last;
  for (const char* tag : {"loss", "lr", "grad_norm", "tokens_per_s", "step_ms", "mem_mb"})
    EXPECT_NE(last.find(std::string("tag: \"") + tag + "\""), std::string::npos) << tag << last;
}

}  // namespace
}  // namespace ptrain::launch

namespace ptrain::launch {
namespace {

TEST(Mlflow, ARunLandsInTheFileStoreLayout) {
  TempDir dir;
  std::string spec = dir.path() + "/job.yaml";
  std::ofstream(spec) << "name: mlf\nlogging: {dir: " << dir.path() << "/runs, mlflow: store}\n"
                      << "nodes: {procs_per_node: 1, device: cpu}\n"
                      << "model: {type: gpt, layers: 1, heads: 2, dim: 16, seq_len: 8, vocab: 32}\n"
                      << "train: {steps: 3, optimizer: {lr: 0.002}}\n";
  ptrain::testing::PtrainProcess p({"run", spec});
  ASSERT_EQ(p.finish(Millis(60000)), 0) << p.err;
  const std::string store = dir.path() + "/store";
  ASSERT_TRUE(fs::exists(store + "/0/meta.yaml"));  // the Default experiment MLflow expects
  std::string exp, run;
  for (const auto& e : fs::directory_iterator(store))
    if (e.is_directory() && e.path().filename() != "0" && e.path().filename() != ".trash")
      exp = e.path().string();
  ASSERT_FALSE(exp.empty());
  EXPECT_NE(ptrain::testing::read_file(exp + "/meta.yaml").find("name: \"mlf\""),
            std::string::npos);
  for (const auto& e : fs::directory_iterator(exp))
    if (e.is_directory()) run = e.path().string();
  ASSERT_FALSE(run.empty());
  std::string meta = ptrain::testing::read_file(run + "/meta.yaml");
  EXPECT_NE(meta.find("status: 3\n"), std::string::npos) << meta;  // FINISHED
  EXPECT_EQ(meta.find("end_time: null"), std::string::npos) << meta;
  EXPECT_EQ(ptrain::testing::read_file(run + "/params/train.optimizer.lr"), "0.002");
  EXPECT_EQ(ptrain::testing::read_file(run + "/params/model.layers"), "1");
  EXPECT_EQ(ptrain::testing::read_file(run + "/tags/mlflow.source.name"), "ptrain");
  // metrics/<key>: "<unix ms> <value> <step>", one line per logged step.
  std::ifstream loss(run + "/metrics/loss");
  std::vector<int64_t> steps;
  int64_t ms, step;
  double value;
  while (loss >> ms >> value >> step) {
    EXPECT_GT(ms, int64_t{1700000000000});
    EXPECT_GT(value, 0);
    steps.push_back(step);
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_TRUE(fs::exists(run + "/metrics/tokens_per_s"));
  EXPECT_FALSE(fs::exists(run + "/metrics/total_steps"));
}

}  // namespace
}  // namespace ptrain::launch
