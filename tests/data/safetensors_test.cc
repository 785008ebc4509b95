#include "ptrain/data/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>

#include "ptrain/core/error.h"
#include "test_util.h"

namespace ptrain::data {
namespace {

using testing::TempDir;

std::string u64le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}

// A file image with the given header text (padded to 8) and `data_bytes` zero bytes of data.
std::string image(std::string header, size_t data_bytes) {
  while (header.size() % 8 != 0) header += ' ';
  return u64le(header.size()) + header + std::string(data_bytes, '\0');
}

TEST(Safetensors, WriterOutputIsByteExact) {
  const float a[2] = {1.0f, 2.0f};
  const uint8_t b[3] = {7, 8, 9};
  SafetensorsWriter w;
  w.add("a", a, {2});
  w.add(TensorRef{"b", DType::kU8, {1, 3}, b});
  w.set_metadata("k", "v");
  std::string header =
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"U8","shape":[1,3],"data_offsets":[8,11]}}  )";
  ASSERT_EQ(header.size(), 136u);
  std::string expected = std::string("\x88\0\0\0\0\0\0\0", 8) + header +
                         std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8) + "\x07\x08\x09";
  EXPECT_EQ(w.serialize(), expected);
}

TEST(Safetensors, RoundTripsThroughAFile) {
  TempDir dir;
  const float w1[6] = {1, 2, 3, 4, 5, 6};
  const int64_t steps[1] = {42};
  const uint16_t bf[2] = {0x3f80, 0xc000};  // 1.0, -2.0 in bf16
  SafetensorsWriter w;
  w.add("h.0.attn.c_attn.weight", w1, {2, 3});
  w.add(TensorRef{"step", DType::kI64, {1}, steps});
  w.add(TensorRef{"half", DType::kBF16, {2}, bf});
  w.add(TensorRef{"empty", DType::kF32, {0, 4}, nullptr});
  w.set_metadata("format", "pt");
  std::string path = dir.file("m.safetensors");
  testing::write_bytes(path, w.serialize());

  SafetensorsFile f = SafetensorsFile::open(path);
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const TensorInfo* t = f.find("h.0.attn.c_attn.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
  float out[6];
  f.read_f32("h.0.attn.c_attn.weight", out);
  EXPECT_EQ(std::memcmp(out, w1, sizeof(w1)), 0);
  int64_t s;
  std::memcpy(&s, f.bytes(*f.find("step")), 8);
  EXPECT_EQ(s, 42);
  float h[2];
  f.read_f32("half", h);
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.0f);
  EXPECT_EQ(f.find("empty")->numel(), 0);
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_THROW_MSG(f.read_f32("nope", out), ConfigError, "has no tensor 'nope'");
  EXPECT_THROW_MSG(f.read_f32("step", out), ConfigError, "is I64, expected F32");
}

TEST(Safetensors, WriterRejectsDuplicateNames) {
  const float a[1] = {0};
  SafetensorsWriter w;
  w.add("x", a, {1});
  EXPECT_THROW_MSG(w.add("x", a, {1}), ConfigError, "duplicate tensor name 'x'");
  EXPECT_THROW_MSG(w.add("__metadata__", a, {1}), ConfigError, "invalid tensor name");
}

struct Malformed {
  const char* what;
  std::string bytes;
  const char* message;
};

std::vector<Malformed> corpus() {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::string good = image("{" + ok_entry + "}", 8);
  return {
      {"empty file", "", "too short for the 8-byte header length"},
      {"truncated length", std::string("\x10\0\0", 3), "too short"},
      {"huge header length", u64le(uint64_t{1} << 62) + "{}", "exceeds the"},
      {"header past end", u64le(64) + "{}", "runs past the end of the file"},
      {"truncated file", good.substr(0, good.size() - 3), "run past the data section"},
      {"bad JSON", image(R"({"a":{"dtype":"F32",)", 0), "invalid JSON"},
      {"not an object", image("[1,2]", 0), "not a JSON object"},
      {"trailing garbage", u64le(8) + "{}  x   ", "invalid JSON"},
      {"duplicate names", image("{" + ok_entry + "," + ok_entry + "}", 8), "duplicate key \"a\""},
      {"overlapping",
       image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
             12),
       "overlap"},
      {"out of range", image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
       "run past the data section"},
      {"negative offset", image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
       "not non-negative integers"},
      {"negative dim", image(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       "is not a non-negative integer"},
      {"fractional dim", image(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
       "is not a non-negative integer"},
      {"wrong size", image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 12),
       "needs 12 bytes but data_offsets [0, 8] span 8"},
      {"reversed offsets", image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
       "end before they begin"},
      {"shape overflow",
       image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
       "too large"},
      {"unknown dtype", image(R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", 2),
       "unsupported dtype 'F8'"},
      {"missing field", image(R"({"a":{"dtype":"F32","shape":[2]}})", 8),
       "needs dtype, shape and data_offsets"},
      {"unknown field", image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8),
       "unknown field 'x'"},
      {"three offsets", image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", 9),
       "array of two integers"},
      {"metadata not strings", image(R"({"__metadata__":{"k":1}})", 0), "is not a string"},
      {"entry not object", image(R"({"a":3})", 0), "entry is not an object"},
  };
}

TEST(Safetensors, RejectsEveryMalformedFileWithAClearError) {
  for (const auto& m : corpus()) {
    SCOPED_TRACE(m.what);
    EXPECT_THROW_MSG(SafetensorsFile::parse(m.bytes, "bad.safetensors"), ConfigError,
                     "safetensors file 'bad.safetensors");
    EXPECT_THROW_MSG(SafetensorsFile::parse(m.bytes, "bad.safetensors"), ConfigError, m.message);
  }
}

TEST(Safetensors, RejectsEveryTruncationOfAValidFile) {
  const float a[3] = {1, 2, 3};
  SafetensorsWriter w;
  w.add("a", a, {3});
  std::string full = w.serialize();
  for (size_t n = 0; n < full.size(); ++n) {
    EXPECT_THROW(SafetensorsFile::parse(full.substr(0, n), "t"), ConfigError) << n;
  }
  EXPECT_NO_THROW(SafetensorsFile::parse(full, "t"));
}

TEST(Safetensors, OpenNamesAMissingFileOrADirectory) {
  TempDir dir;
  EXPECT_THROW_MSG(SafetensorsFile::open(dir.file("none.safetensors")), ConfigError,
                   "none.safetensors' does not exist");
  EXPECT_THROW_MSG(SafetensorsFile::open(dir.path()), ConfigError, "is a directory");
}

TEST(Safetensors, Fnv1aMatchesReferenceVectors) {
  EXPECT_EQ(fnv1a64("", 0), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar", 6), 0x85944171f73967e8ull);
}

}  // namespace
}  // namespace ptrain::data
