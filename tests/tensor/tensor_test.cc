// Tensor: allocation, alignment, views, dtypes.
#include "ptrain/tensor/tensor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ptrain/core/error.h"

using namespace ptrain::tensor;

TEST(Tensor, ZerosIsZeroFilledAnd64ByteAligned) {
  Tensor t = Tensor::zeros({3, 5});
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.nbytes(), 60u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(t.data<float>()[i], 0.0f);
}

TEST(Tensor, ZerosIsZeroAndAlignedWhereFreedMemoryIsReused) {
  // Small blocks come from the heap, large ones from the kernel; both may reuse what a freed,
  // written tensor left behind.
  for (int64_t n : {int64_t(1), int64_t(17), int64_t(4096), int64_t(1) << 20, int64_t(1) << 24}) {
    for (int round = 0; round < 3; ++round) {
      Tensor t = Tensor::zeros({n});
      ASSERT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u) << n;
      float* x = t.data<float>();
      int64_t nonzero = 0;
      for (int64_t i = 0; i < n; ++i) nonzero += x[i] != 0.0f;
      ASSERT_EQ(nonzero, 0) << n << " elements, round " << round;
      std::fill(x, x + n, -1.0f);  // freed dirty at the end of the round
    }
  }
}

TEST(Tensor, ViewSharesStorageAtOffset) {
  Tensor t = Tensor::zeros({10});
  Tensor v = t.view(4, {2, 3});
  v.data<float>()[0] = 7.0f;
  EXPECT_EQ(t.data<float>()[4], 7.0f);
  EXPECT_EQ(v.shape_str(), "[2, 3]");
  EXPECT_EQ(v.dim(-1), 3);
}

TEST(Tensor, ViewOutOfRangeThrows) {
  Tensor t = Tensor::zeros({10});
  EXPECT_THROW(t.view(8, {3}), ptrain::InternalError);
  EXPECT_THROW(t.reshape({3, 4}), ptrain::InternalError);
}

TEST(Tensor, DataTypeIsChecked) {
  Tensor t = Tensor::zeros({4}, DType::kI32);
  EXPECT_NE(t.data<int32_t>(), nullptr);
  EXPECT_THROW(t.data<float>(), ptrain::InternalError);
  Tensor h = Tensor::zeros({4}, DType::kBF16);
  EXPECT_EQ(h.nbytes(), 8u);
}

TEST(Tensor, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-2.5f)), -2.5f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))),
            1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
}

TEST(Tensor, HostCopiesRoundTrip) {
  Tensor t = Tensor::zeros({3});
  float in[3] = {1, 2, 3}, out[3] = {};
  t.copy_from_host(in, sizeof(in));
  t.copy_to_host(out, sizeof(out));
  EXPECT_EQ(out[2], 3.0f);
  t.zero();
  EXPECT_EQ(t.data<float>()[1], 0.0f);
}

TEST(Ops, CudaUnavailableIsAConfigError) {
  if (cuda_ops() != nullptr) GTEST_SKIP() << "built with a usable CUDA backend";
  EXPECT_THROW(ops(Device::kCuda), ptrain::ConfigError);
}

TEST(Ops, ThreadCountMustBePositive) {
  EXPECT_THROW(set_cpu_threads(0), ptrain::ConfigError);
  set_cpu_threads(1);
  EXPECT_EQ(cpu_threads(), 1);
}
