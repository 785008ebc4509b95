// Every backend fills every entry of the op table: a new Ops entry that a backend does not fill
// fails here (PTRAIN_OPS_KERNELS, which this check walks, cannot miss an entry: ops.h checks it
// at compile time). The CUDA case skips without a usable device.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "ptrain/tensor/cuda_plugin.h"
#include "ptrain/tensor/ops.h"
#include "tensor/ops_table_check.h"

namespace ptrain::tensor {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST(OpsTable, CpuTableFillsEveryEntry) {
  const Ops& cpu = cpu_ops();
  EXPECT_THAT(testing::null_entries(cpu), IsEmpty());
  EXPECT_EQ(cpu.device, Device::kCpu);
  EXPECT_STREQ(cpu.name, "cpu");
}

TEST(OpsTable, CudaTableFillsEveryEntry) {
  const Ops* cuda = cuda_ops();
  if (cuda == nullptr) GTEST_SKIP() << "no usable CUDA device: " << cuda_unavailable_reason();
  EXPECT_THAT(testing::null_entries(*cuda), IsEmpty());
  EXPECT_EQ(cuda->device, Device::kCuda);
  EXPECT_STREQ(cuda->name, "cuda");
}

TEST(OpsTable, CheckNamesANullEntry) {
  Ops partial = cpu_ops();
  partial.gemm_bf16 = nullptr;
  partial.alloc = nullptr;
  EXPECT_THAT(testing::null_entries(partial), ElementsAre("alloc", "gemm_bf16"));
}

}  // namespace
}  // namespace ptrain::tensor
