// scripts/bundle.sh makes a bundle that starts with an empty environment and stays small.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

namespace fs = std::filesystem;

struct Result {
  int status;
  std::string output;
};

Result run(const std::string& command) {
  Result r{-1, {}};
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  int status = pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

class Bundle : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dist_ = fs::temp_directory_path() / ("ptrain-bundle-test-" + std::to_string(getpid()));
    fs::create_directories(dist_);
    result_ =
        run("PTRAIN_BUILD_DIR=" PTRAIN_BUILD_DIR " PTRAIN_BUNDLE_NO_BUILD=1 PTRAIN_DIST_DIR=" +
            dist_.string() + " timeout 500 bash " PTRAIN_SOURCE_DIR "/scripts/bundle.sh");
    root_ = dist_ / ("ptrain-" PTRAIN_VERSION_STRING "-linux-x86_64");
  }
  static void TearDownTestSuite() { fs::remove_all(dist_); }

  static inline fs::path dist_, root_;
  static inline Result result_;
};

TEST_F(Bundle, ScriptSucceedsAndWritesFolderAndArchive) {
  ASSERT_EQ(result_.status, 0) << result_.output;
  EXPECT_TRUE(fs::is_regular_file(root_ / "libexec" / "ptrain"));
  EXPECT_TRUE(fs::is_regular_file(root_ / "bin" / "ptrain-env"));
  EXPECT_TRUE(fs::is_regular_file(root_.string() + ".tar.gz"));
}

TEST_F(Bundle, StartsWithAnEmptyEnvironment) {
  ASSERT_EQ(result_.status, 0) << result_.output;
  Result r = run("env -i " + (root_ / "bin" / "ptrain").string() + " --version");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("ptrain " PTRAIN_VERSION_STRING), std::string::npos) << r.output;
}

TEST_F(Bundle, BinaryFindsItsLibrariesThroughTheOriginRpath) {
  ASSERT_EQ(result_.status, 0) << result_.output;
  Result r = run("patchelf --print-rpath " + (root_ / "libexec" / "ptrain").string());
  EXPECT_EQ(r.output, "$ORIGIN/../lib\n");
}

TEST_F(Bundle, TheBinaryLinksNoCudaLibrary) {
  ASSERT_EQ(result_.status, 0) << result_.output;
  Result r = run("ldd " + (root_ / "libexec" / "ptrain").string());
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* lib : {"libcudart", "libcublas", "libnccl", "libcuda."})
    EXPECT_EQ(r.output.find(lib), std::string::npos) << lib << " in:\n" << r.output;
}

TEST_F(Bundle, ShipsTheCudaPluginInLib) {
  if (!PTRAIN_HAVE_CUDA_PLUGIN) GTEST_SKIP() << "built without CUDA";
  ASSERT_EQ(result_.status, 0) << result_.output;
  EXPECT_TRUE(fs::is_regular_file(root_ / "lib" / "libptrain_cuda.so"));
}

TEST_F(Bundle, VersionFindsThePluginBesideTheBinary) {
  if (!PTRAIN_HAVE_CUDA_PLUGIN) GTEST_SKIP() << "built without CUDA";
  ASSERT_EQ(result_.status, 0) << result_.output;
  Result r = run("env -i " + (root_ / "libexec" / "ptrain").string() + " --version");
  EXPECT_EQ(r.status, 0) << r.output;
  std::string expected = "cuda plugin: found (" + (root_ / "lib" / "libptrain_cuda.so").string();
  EXPECT_NE(r.output.find(expected), std::string::npos) << r.output;
}

TEST_F(Bundle,
       ItsArchiveStaysUnderSixtyMiB) {  // scripts/bundle.sh's limit; a device check carries 64
  ASSERT_EQ(result_.status, 0) << result_.output;
  const fs::path archive = root_.string() + ".tar.gz";
  ASSERT_TRUE(fs::is_regular_file(archive)) << result_.output;
  EXPECT_LT(fs::file_size(archive), 60ull << 20);
}

}  // namespace
