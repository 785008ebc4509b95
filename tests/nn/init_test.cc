// The host init fills: threaded and vectorised, yet bit for bit the naive references.
#include "ptrain/nn/init.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "init_fast.h"

using namespace ptrain::nn;

namespace {

// Bit patterns, so that -0 against +0 and NaN payloads count as differences.
size_t count_bit_differences(const std::vector<float>& a, const std::vector<float>& b) {
  size_t d = 0;
  for (size_t i = 0; i < a.size(); ++i) d += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return d;
}

uint64_t fnv1a(const std::vector<float>& x) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (float v : x) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    for (int k = 0; k < 4; ++k) h = (h ^ ((bits >> (8 * k)) & 0xff)) * 0x100000001b3ull;
  }
  return h;
}

struct NormalCase {
  float mean, stddev;
};
// GPT-2's 0.02 and 0.02 / sqrt(2 L), a shifted and a wide one, a negative and a zero stddev,
// one whose results are subnormal, and one near the top of the float range.
const NormalCase kNormalCases[] = {{0.0f, 0.02f},  {0.0f, 0.0040824829f}, {1.0f, 1e-3f},
                                   {-3.0f, 5.0f},  {0.5f, -0.25f},        {2.0f, 0.0f},
                                   {0.0f, 1e-40f}, {1e37f, 3e37f}};
const uint64_t kKeys[] = {0, 1, 0x9E3779B97F4A7C15ull, ~0ull};

// Parts that are no multiple of the vector width: 3 threads over n, at least 1 element each.
FillOptions split_options(int threads, bool vectorised) {
  FillOptions o;
  o.threads = threads;
  o.min_per_thread = 1;
  o.vectorised = vectorised;
  return o;
}

TEST(InitFill, NormalEqualsReferenceBitForBit) {
  size_t total = 0;
  for (uint64_t key : kKeys) {
    for (const auto& c : kNormalCases) {
      for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(9), size_t(1000003)}) {
        std::vector<float> ref(n, 7.0f), fast(n, 9.0f);
        fill_normal_reference(ref.data(), n, key, c.mean, c.stddev);
        fill_normal(fast.data(), n, key, c.mean, c.stddev, split_options(3, true));
        ASSERT_EQ(count_bit_differences(ref, fast), 0u)
            << "key " << key << " mean " << c.mean << " stddev " << c.stddev << " n " << n;
        total += n;
      }
    }
  }
  EXPECT_GT(total, size_t(30'000'000));
}

TEST(InitFill, NormalOfOneLargeTensorEqualsReferenceOnDefaultOptions) {
  // GPT-2 124M's c_fc.weight: 768 x 3072, the split the trainer gets.
  const size_t n = 768 * 3072;
  const uint64_t key = param_key(1337, "h.0.mlp.c_fc.weight");
  std::vector<float> ref(n), fast(n);
  fill_normal_reference(ref.data(), n, key, 0.0f, 0.02f);
  for (int threads : {0, 1, 2, 5}) {
    FillOptions o;
    o.threads = threads;
    std::fill(fast.begin(), fast.end(), 0.0f);
    fill_normal(fast.data(), n, key, 0.0f, 0.02f, o);
    EXPECT_EQ(count_bit_differences(ref, fast), 0u) << threads << " threads";
  }
}

TEST(InitFill, ScalarThreadedPathEqualsReference) {
  for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(100003)}) {
    std::vector<float> ref(n), fast(n);
    fill_normal_reference(ref.data(), n, 42, 0.0f, 0.02f);
    fill_normal(fast.data(), n, 42, 0.0f, 0.02f, split_options(4, false));
    EXPECT_EQ(count_bit_differences(ref, fast), 0u) << n;
    fill_uniform_reference(ref.data(), n, 42, -0.5f, 0.5f);
    fill_uniform(fast.data(), n, 42, -0.5f, 0.5f, split_options(4, false));
    EXPECT_EQ(count_bit_differences(ref, fast), 0u) << n;
  }
}

TEST(InitFill, UniformEqualsReferenceBitForBit) {
  const float kRanges[][2] = {
      {-0.5f, 0.5f}, {0.0f, 1.0f}, {-0.036084f, 0.036084f}, {2.0f, 3.0f}, {1.0f, -1.0f}};
  for (uint64_t key : kKeys) {
    for (const auto& r : kRanges) {
      for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(9), size_t(1000003)}) {
        std::vector<float> ref(n, 7.0f), fast(n, 9.0f);
        fill_uniform_reference(ref.data(), n, key, r[0], r[1]);
        fill_uniform(fast.data(), n, key, r[0], r[1], split_options(3, true));
        ASSERT_EQ(count_bit_differences(ref, fast), 0u)
            << "key " << key << " [" << r[0] << ", " << r[1] << ") n " << n;
      }
    }
  }
}

TEST(InitFill, VectorPathRecomputesTheElementsNearARoundingBoundary) {
  // The vector path exists only for AVX-512: on a CPU without it this test cannot check it, and
  // says so as a failure rather than passing unseen.
  ASSERT_TRUE(detail::have_avx512_fill())
      << "this CPU has no AVX-512F/DQ, so the vectorised init fill cannot be tested here";
  // An odd start and length: the vector loop's counters and its partial last step.
  const uint64_t first = 12345;
  const size_t n = 4'000'001;
  std::vector<float> fast(n), ref(n);
  size_t redone = detail::fill_normal_avx512(fast.data(), first, n, 77, 0.0f, 0.02f);
  for (size_t j = 0; j < n; ++j) ref[j] = detail::normal_element(77, first + j, 0.0f, 0.02f);
  EXPECT_EQ(count_bit_differences(ref, fast), 0u);
  // The check takes a few elements in 10^4 to libm: it runs, and the fast path does the rest.
  EXPECT_GT(redone, 0u);
  EXPECT_LT(redone, n / 500);
}

TEST(InitFill, ReferenceKeepsTheValuesCheckpointsWereMadeWith) {
  // Hashes of the fills as ptrain produced them before the fast paths (the scalar loops).
  std::vector<float> x(100000);
  fill_normal_reference(x.data(), x.size(), param_key(1337, "wte.weight"), 0.0f, 0.02f);
  EXPECT_EQ(fnv1a(x), 0xacb8c4a6a6196d0bull);
  fill_uniform_reference(x.data(), x.size(), param_key(1, "linear"), -0.5f, 0.5f);
  EXPECT_EQ(fnv1a(x), 0x9550d2afa7c619e5ull);
}

}  // namespace
