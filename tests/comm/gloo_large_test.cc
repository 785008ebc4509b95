// One 64 MiB allreduce over Gloo with ranks as threads (labelled slow).
#include <gtest/gtest.h>

#include "harness.h"

namespace ptrain::comm {
namespace {

TEST(GlooLarge, Allreduce64MiBIsExact) {
  constexpr size_t kCount = (64u << 20) / sizeof(float);
  auto store = std::make_shared<rendezvous::MemoryStore>();
  testing::expect_all_ok(testing::run_ranks(2, [&](int r) {
    auto comm = testing::make_gloo(store, "world", r, 2, {Millis(60000)});
    std::vector<float> buf(kCount);
    for (size_t i = 0; i < kCount; ++i) buf[i] = static_cast<float>((i % 1000) * (r + 1));
    comm->allreduce(buf.data(), kCount, DType::kF32);
    for (size_t i = 0; i < kCount; ++i)
      ASSERT_EQ(buf[i], static_cast<float>((i % 1000) * 3)) << "at " << i;
  }));
}

}  // namespace
}  // namespace ptrain::comm
