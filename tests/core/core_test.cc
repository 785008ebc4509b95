#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ptrain/core/dtype.h"
#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/core/host_memory.h"
#include "ptrain/core/mesh.h"
#include "ptrain/core/private_file.h"
#include "ptrain/core/strings.h"
#include "ptrain/core/time.h"

namespace ptrain {

TEST(HostMemory, LargeBuffersStartOnAHugePageAndKeepWhatIsCopiedIn) {
  std::vector<float> src(3 * (kHugePageBytes / sizeof(float)) + 17);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i) * 0.5f - 3.0f;
  for (int round = 0; round < 3; ++round) {  // freed and mapped again
    HostVector<float> big(src.begin(), src.end());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data()) % kHugePageBytes, 0u);
    EXPECT_EQ(std::vector<float>(big.begin(), big.end()), src);
    big.back() = 42.0f;  // the last, partial huge page is writable
    EXPECT_EQ(big.back(), 42.0f);
  }
  HostVector<float> small(100, 1.5f), none;
  EXPECT_EQ(small[99], 1.5f);
  none.resize(kHugePageBytes / sizeof(float) - 1, 2.0f);  // just below the threshold: malloc
  none.resize(kHugePageBytes / sizeof(float) + 1, 3.0f);  // grows across it: mapped
  EXPECT_EQ(none.front(), 2.0f);
  EXPECT_EQ(none.back(), 3.0f);
  HostVector<float> moved = std::move(none);
  EXPECT_EQ(moved.size(), kHugePageBytes / sizeof(float) + 1);
}

TEST(Check, ThrowsInternalErrorWithFileAndLine) {
  try {
    PTRAIN_CHECK(1 + 1 == 3, "math is {}", "broken");
    FAIL() << "no throw";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("core_test.cc:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("math is broken"), std::string::npos) << e.what();
  }
}

TEST(Syscall, ThrowsIoErrorNamingTheCall) {
  try {
    PTRAIN_SYSCALL(::close(-1));
    FAIL() << "no throw";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("close(-1)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Bad file descriptor"), std::string::npos) << e.what();
  }
}

TEST(Error, ExitCodesFollowTheKind) {
  EXPECT_EQ(ConfigError("x").exit_code(), kExitConfig);
  EXPECT_EQ(TimeoutError("x").exit_code(), kExitTimeout);
  EXPECT_EQ(IoError("x").exit_code(), kExitFailure);
  EXPECT_EQ(ConfigError("bad", "fix it").message(), "bad; fix it");
}

TEST(Env, IntParsesAndRejectsGarbage) {
  ::setenv("PTRAIN_TEST_INT", "42", 1);
  EXPECT_EQ(env_int("PTRAIN_TEST_INT", 7), 42);
  ::setenv("PTRAIN_TEST_INT", "4x", 1);
  EXPECT_THROW(env_int("PTRAIN_TEST_INT", 7), ConfigError);
  ::unsetenv("PTRAIN_TEST_INT");
  EXPECT_EQ(env_int("PTRAIN_TEST_INT", 7), 7);
}

TEST(Deadline, RemainingNeverNegative) {
  Deadline d(Millis(0));
  EXPECT_TRUE(d.expired());
  EXPECT_EQ(d.remaining().count(), 0);
}

TEST(DType, SizesAndNamesCoverEveryType) {
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kI32), 4u);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  EXPECT_EQ(dtype_size(DType::kU8), 1u);
  EXPECT_EQ(dtype_name(DType::kF32), "f32");
  EXPECT_EQ(dtype_name(DType::kBF16), "bf16");
  EXPECT_EQ(dtype_name(DType::kI32), "i32");
  EXPECT_EQ(dtype_name(DType::kI64), "i64");
  EXPECT_EQ(dtype_name(DType::kU8), "u8");
}

TEST(DType, SafetensorsNamesRoundTrip) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kI32, DType::kI64, DType::kU8}) {
    auto parsed = parse_safetensors_dtype(safetensors_dtype_name(d));
    ASSERT_TRUE(parsed.has_value()) << dtype_name(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(safetensors_dtype_name(DType::kBF16), "BF16");
}

TEST(DType, ParseRejectsOtherSpellings) {
  EXPECT_FALSE(parse_safetensors_dtype("f32").has_value());
  EXPECT_FALSE(parse_safetensors_dtype("F8").has_value());
  EXPECT_FALSE(parse_safetensors_dtype("").has_value());
}

TEST(DType, UnknownValueIsAnInternalError) {
  EXPECT_THROW(dtype_size(static_cast<DType>(200)), InternalError);
  EXPECT_EQ(dtype_name(static_cast<DType>(200)), "?");
}

TEST(Mesh, TensorParallelIsInnermostThenDataThenPipeline) {
  const MeshShape shape{.dp = 3, .tp = 2, .pp = 2};
  EXPECT_EQ(shape.world(), 12);
  EXPECT_EQ(shape.size(), 12);
  EXPECT_EQ(coords_of(1, shape), (MeshCoords{.dp = 0, .tp = 1, .pp = 0}));
  EXPECT_EQ(coords_of(2, shape), (MeshCoords{.dp = 1, .tp = 0, .pp = 0}));
  EXPECT_EQ(coords_of(6, shape), (MeshCoords{.dp = 0, .tp = 0, .pp = 1}));
  EXPECT_EQ(coords_of(11, shape), (MeshCoords{.dp = 2, .tp = 1, .pp = 1}));
}

TEST(Mesh, RankOfInvertsCoordsOf) {
  const MeshShape shape{.dp = 3, .tp = 2, .pp = 2};
  for (int r = 0; r < shape.world(); ++r) EXPECT_EQ(rank_of(coords_of(r, shape), shape), r);
}

TEST(JsonQuote, EscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(json_quote("a\"b\\c\n\t\x01"), "\"a\\\"b\\\\c\\n\\t\\u0001\"");
}

TEST(JsonQuote, PassesUtf8AndReplacesBytesThatAreNot) {
  EXPECT_EQ(json_quote("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
  EXPECT_EQ(json_quote("a\xffz"), "\"a\xef\xbf\xbdz\"");
  EXPECT_EQ(json_quote("caf\xe9"), "\"caf\xef\xbf\xbd\"");
}

TEST(PrivateFile, IsWrittenWholeWithMode0600AlsoOverAFileOpenToOthers) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("ptrain-private-file-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "secret").string();
  std::ofstream(path) << "old";
  ::chmod(path.c_str(), 0644);
  write_private_file(path, std::string(100000, 'k'));
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::stringstream text;
  text << std::ifstream(path).rdbuf();
  EXPECT_EQ(text.str(), std::string(100000, 'k'));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  try {
    write_private_file((dir / "missing" / "f").string(), "x");
    ADD_FAILURE() << "a file in a missing folder was written";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("missing/f.tmp"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace ptrain
