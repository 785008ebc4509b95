// The shm backend's reduction kernels: every instruction-set path equals the element-by-element
// reference bit for bit, for every op, group size and length (vector tails included), with NaNs
// and signed zeros, in place and with a second output.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "shm/reduce.h"

namespace ptrain::comm::shm {
namespace {

std::vector<std::vector<float>> inputs(int n, size_t len, uint32_t seed, bool specials) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1000.f, 1000.f);
  std::vector<std::vector<float>> src(n, std::vector<float>(len));
  for (auto& s : src)
    for (auto& x : s) x = u(rng);
  if (specials && len > 8)
    for (int k = 0; k < n; ++k) {
      src[k][1] = k % 2 ? 0.f : -0.f;
      src[k][2] = k == n - 1 ? std::numeric_limits<float>::quiet_NaN() : 1.f;
      src[k][3] = k == 0 ? std::numeric_limits<float>::quiet_NaN() : 2.f;
      src[k][5] = k % 2 ? std::numeric_limits<float>::infinity() : -1.f;
    }
  return src;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<ReduceIsa> isas() {
  std::vector<ReduceIsa> out;
  for (auto isa : {ReduceIsa::kScalar, ReduceIsa::kAvx2, ReduceIsa::kAvx512})
    if (reduce_isa_supported(isa)) out.push_back(isa);
  return out;
}

TEST(ShmReduce, TheReferenceSumsInRankOrder) {
  // 1e8 + 1 - 1e8 is 0 in float when summed left to right, 1 in another order.
  std::vector<float> a{1e8f}, b{1.f}, c{-1e8f}, out(1);
  const float* src[] = {a.data(), b.data(), c.data()};
  reduce_f32_reference(out.data(), src, 3, 1, ReduceOp::kSum);
  EXPECT_EQ(out[0], 0.f);
  const float* other[] = {a.data(), c.data(), b.data()};
  reduce_f32_reference(out.data(), other, 3, 1, ReduceOp::kSum);
  EXPECT_EQ(out[0], 1.f);
  reduce_f32_reference(out.data(), src, 3, 1, ReduceOp::kAvg);
  EXPECT_EQ(out[0], 0.f);
  reduce_f32_reference(out.data(), src, 3, 1, ReduceOp::kMax);
  EXPECT_EQ(out[0], 1e8f);
}

TEST(ShmReduce, EveryPathEqualsTheReferenceBitForBit) {
  ASSERT_TRUE(reduce_isa_supported(best_reduce_isa()));
  for (ReduceIsa isa : isas())
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax})
      for (int n = 1; n <= 8; ++n)
        for (size_t len : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(15), size_t(16),
                           size_t(17), size_t(31), size_t(33), size_t(1000), size_t(4099)}) {
          SCOPED_TRACE(testing::Message() << reduce_isa_name(isa) << " " << to_string(op) << " n "
                                          << n << " len " << len);
          auto src = inputs(n, len, uint32_t(n * 1000 + len), true);
          std::vector<const float*> ptr;
          for (auto& s : src) ptr.push_back(s.data());
          std::vector<float> want(len), out(len, 7.f), out2(len, 9.f), guard(len + 1, 3.f);
          reduce_f32_reference(want.data(), ptr.data(), n, len, op);
          reduce_f32_isa(isa, out.data(), out2.data(), ptr.data(), n, len, op);
          EXPECT_TRUE(same_bits(out, want));
          EXPECT_TRUE(same_bits(out2, want));
          // Without a second output; nothing past len is touched (masked or scalar tails).
          reduce_f32_isa(isa, guard.data(), nullptr, ptr.data(), n, len, op);
          EXPECT_TRUE(same_bits(std::vector<float>(guard.begin(), guard.begin() + len), want));
          EXPECT_EQ(guard[len], 3.f);
        }
}

TEST(ShmReduce, InPlaceIntoOneOfTheSources) {
  for (ReduceIsa isa : isas())
    for (int into : {0, 2}) {
      const int n = 3;
      const size_t len = 1037;
      auto src = inputs(n, len, 42, false);
      std::vector<const float*> ptr;
      for (auto& s : src) ptr.push_back(s.data());
      std::vector<float> want(len);
      reduce_f32_reference(want.data(), ptr.data(), n, len, ReduceOp::kSum);
      // Both outputs are sources: element i of each is read before it is written.
      reduce_f32_isa(isa, src[into].data(), src[1].data(), ptr.data(), n, len, ReduceOp::kSum);
      EXPECT_TRUE(same_bits(src[into], want)) << reduce_isa_name(isa) << " into " << into;
      EXPECT_TRUE(same_bits(src[1], want)) << reduce_isa_name(isa);
    }
}

TEST(ShmReduce, ThePathChosenIsTheBestTheCpuHas) {
  const ReduceIsa best = best_reduce_isa();
  for (auto isa : isas()) EXPECT_LE(int(isa), int(best)) << reduce_isa_name(isa);
  EXPECT_TRUE(reduce_isa_supported(ReduceIsa::kScalar));
}

}  // namespace
}  // namespace ptrain::comm::shm
