// The CUDA backend as a dlopen'ed plugin: found in the build tree, loaded on first use, and a
// missing or foreign plugin turns into "no CUDA" with a reason instead of a failed start.
// Scenarios that need a fresh process (the plugin is loaded once per process) run as death
// tests in the threadsafe style, which re-executes this binary for them.
#include "ptrain/tensor/cuda_plugin.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "ptrain/comm/nccl.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/memory_store.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::tensor {
namespace {

using ::testing::ExitedWithCode;

class CudaPlugin : public ::testing::Test {
 protected:
  void SetUp() override {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    if (!cuda_plugin_built()) GTEST_SKIP() << "built without CUDA: there is no plugin";
  }
};

// Runs in the death-test child: loads nothing before `path` is set, then reports on stderr.
[[noreturn]] void expect_no_cuda_with(const char* path) {
  setenv("PTRAIN_CUDA_PLUGIN", path, 1);
  const bool no_table = cuda_ops() == nullptr;
  std::fprintf(stderr, "reason: %s\n", cuda_unavailable_reason().c_str());
  std::exit(no_table ? 0 : 1);
}

TEST_F(CudaPlugin, IsFoundInTheBuildTree) {
  std::string path = cuda_plugin_path();
  ASSERT_FALSE(path.empty());
  EXPECT_NE(path.find("libptrain_cuda.so"), std::string::npos) << path;
}

TEST_F(CudaPlugin, LoadsAndExportsItsEntryPoints) {
  EXPECT_NE(cuda_plugin_symbol("ptrain_cuda_get_ops"), nullptr) << cuda_plugin_error();
  EXPECT_NE(cuda_plugin_symbol("ptrain_nccl_create"), nullptr) << cuda_plugin_error();
  EXPECT_EQ(cuda_plugin_error(), "");
}

TEST_F(CudaPlugin, WithoutAGpuTheReasonComesFromTheCudaRuntime) {
  if (cuda_ops()) GTEST_SKIP() << "a GPU is usable here";
  std::string reason = cuda_unavailable_reason();
  EXPECT_NE(reason.find("cuda"), std::string::npos) << reason;
  EXPECT_EQ(reason.find("plugin"), std::string::npos) << reason;
}

TEST_F(CudaPlugin, AMissingPluginMeansNoCudaAndSaysWhereItLooked) {
  EXPECT_EXIT(expect_no_cuda_with("/nonexistent/libptrain_cuda.so"), ExitedWithCode(0),
              "reason: the CUDA plugin libptrain_cuda.so was not found \\(looked in: "
              "/nonexistent/libptrain_cuda.so\\)");
}

TEST_F(CudaPlugin, ALibraryThatIsNotOurPluginIsRefused) {
  EXPECT_EXIT(expect_no_cuda_with("/lib/x86_64-linux-gnu/libz.so.1"), ExitedWithCode(0),
              "reason: .*libz.so.1.* is not a ptrain CUDA plugin");
}

TEST_F(CudaPlugin, DeviceCudaWithoutThePluginIsAConfigErrorWithTheReason) {
  EXPECT_EXIT(
      {
        setenv("PTRAIN_CUDA_PLUGIN", "/nonexistent/libptrain_cuda.so", 1);
        try {
          ops(Device::kCuda);
        } catch (const ConfigError& e) {
          std::fprintf(stderr, "%s\n", e.what());
          std::exit(0);
        }
        std::exit(1);
      },
      ExitedWithCode(0), "device cuda is not available: the CUDA plugin .* was not found");
}

TEST_F(CudaPlugin, NcclWithoutThePluginIsAConfigErrorWithTheReason) {
  EXPECT_EXIT(
      {
        setenv("PTRAIN_CUDA_PLUGIN", "/nonexistent/libptrain_cuda.so", 1);
        auto store = std::make_shared<rendezvous::MemoryStore>();
        try {
          comm::create_nccl_communicator({"world", 0, 1}, store, {});
        } catch (const ConfigError& e) {
          std::fprintf(stderr, "%s\n", e.what());
          std::exit(0);
        }
        std::exit(1);
      },
      ExitedWithCode(0), "group 'world': the nccl backend is not available: the CUDA plugin");
}

TEST(CudaPluginNotBuilt, CudaIsUnavailableWithTheReason) {
  if (cuda_plugin_built()) GTEST_SKIP() << "built with CUDA";
  EXPECT_EQ(cuda_ops(), nullptr);
  EXPECT_NE(cuda_unavailable_reason().find("built without CUDA"), std::string::npos);
}

}  // namespace
}  // namespace ptrain::tensor
