// alltoallv (all-to-all with per-peer counts) over Gloo and shm with ranks as threads: odd and zero
// counts, i32 payloads, a count mismatch that fails every rank naming the pair, a dead peer.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <tuple>

#include "harness.h"
#include "ptrain/core/error.h"

namespace ptrain::comm {
namespace {

using testing::expect_all_ok;
using testing::make_comm;
using testing::message_of;
using testing::run_ranks;

// Rank i sends (i + 2 * j) % 4 elements to rank j: odd counts and zeros on every group size.
size_t count_of(int from, int to) {
  return size_t((from + 2 * to) % 4);
}
float value(int from, int to, size_t k) {
  return float(from * 1000 + to * 100 + int(k));
}

class Alltoallv : public ::testing::TestWithParam<std::tuple<std::string, int>> {
 protected:
  const std::string backend = std::get<0>(GetParam());
  const int n = std::get<1>(GetParam());
};

class AlltoallvErrors : public ::testing::TestWithParam<std::string> {
 protected:
  const std::string backend = GetParam();
};

TEST_P(Alltoallv, EachRankReceivesItsPeersBlocksInRankOrder) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = make_comm(backend, store, "dp", r, n, {Millis(20000)});
    std::vector<size_t> sc(n), rc(n);
    std::vector<float> send, recv;
    for (int j = 0; j < n; ++j) {
      sc[j] = count_of(r, j);
      rc[j] = count_of(j, r);
      for (size_t k = 0; k < sc[j]; ++k) send.push_back(value(r, j, k));
    }
    size_t total = 0;
    for (size_t c : rc) total += c;
    recv.assign(total, -1.f);
    comm->alltoallv(send.data(), sc, recv.data(), rc, DType::kF32);
    size_t at = 0;
    for (int j = 0; j < n; ++j)
      for (size_t k = 0; k < rc[j]; ++k, ++at)
        ASSERT_EQ(recv[at], value(j, r, k)) << "rank " << r << " from " << j << " item " << k;
  }));
}

TEST_P(Alltoallv, CarriesInt32AndAllZeroCounts) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = make_comm(backend, store, "dp", r, n, {Millis(20000)});
    std::vector<size_t> zeros(n, 0);
    comm->alltoallv(nullptr, zeros, nullptr, zeros, DType::kF32);  // nothing to move
    std::vector<size_t> ones(n, 1);
    std::vector<int32_t> send(n), recv(n, -1);
    for (int j = 0; j < n; ++j) send[j] = (1 << 24) + r * 16 + j;  // not exact as a float
    comm->alltoallv(send.data(), ones, recv.data(), ones, DType::kI32);
    for (int j = 0; j < n; ++j) ASSERT_EQ(recv[j], (1 << 24) + j * 16 + r);
  }));
}

INSTANTIATE_TEST_SUITE_P(Sizes, Alltoallv,
                         ::testing::Combine(::testing::ValuesIn(testing::host_backends()),
                                            ::testing::Values(1, 2, 3, 4)),
                         [](const auto& info) {
                           return fmt::format("{}_{}", std::get<0>(info.param),
                                              std::get<1>(info.param));
                         });
INSTANTIATE_TEST_SUITE_P(Host, AlltoallvErrors, ::testing::ValuesIn(testing::host_backends()),
                         [](const auto& info) { return info.param; });

TEST_P(AlltoallvErrors, CountMismatchFailsEveryRankNamingThePair) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  auto errors = run_ranks(2, [&](int r) {
    auto comm = make_comm(backend, store, "dp[0,1]", r, 2, {Millis(5000)});
    // Rank 0 sends 3 to rank 1, which expects 2.
    std::vector<size_t> sc = r == 0 ? std::vector<size_t>{1, 3} : std::vector<size_t>{2, 1};
    std::vector<size_t> rc = r == 0 ? std::vector<size_t>{1, 2} : std::vector<size_t>{2, 1};
    std::vector<float> send(4, 1.f), recv(4);
    comm->alltoallv(send.data(), sc, recv.data(), rc, DType::kF32);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r << " did not fail";
    auto msg = message_of(errors[r]);
    EXPECT_NE(msg.find("alltoallv"), std::string::npos) << msg;
    EXPECT_NE(msg.find("dp[0,1]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank 0 sends 3 elements to rank 1, which expects 2"), std::string::npos)
        << msg;
  }
}

TEST_P(AlltoallvErrors, WrongNumberOfCountsIsAConfigError) {
  auto comm = make_comm(backend, nullptr, "solo", 0, 1);
  std::vector<size_t> two{1, 1};
  float x[2] = {0, 0};
  EXPECT_THROW(comm->alltoallv(x, two, x, two, DType::kF32), ConfigError);
  std::vector<size_t> one{1};
  if (backend == "gloo") {  // gloo carries 4-byte types only; shm moves bytes of any dtype
    EXPECT_THROW(comm->alltoallv(x, one, x, one, DType::kBF16), ConfigError);
  } else {
    uint16_t in = 0x3f80, out = 0;
    comm->alltoallv(&in, one, &out, one, DType::kBF16);
    EXPECT_EQ(out, 0x3f80);
  }
}

TEST_P(AlltoallvErrors, DeadPeerFailsTheSurvivorsBeforeTheTimeout) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  const Millis timeout(8000);
  std::atomic<int> connected{0};
  const auto start = Clock::now();
  auto errors = run_ranks(3, [&](int r) {
    auto comm = make_comm(backend, store, "world", r, 3, {timeout});
    connected++;
    if (r == 2) {
      while (connected.load() < 3) std::this_thread::yield();
      comm.reset();  // leaves: closes its connections
      return;
    }
    std::vector<size_t> counts(3, 1 << 12);
    std::vector<float> send(3 << 12, 1.f), recv(3 << 12);
    comm->alltoallv(send.data(), counts, recv.data(), counts, DType::kF32);
  });
  EXPECT_LT(Clock::now() - start, timeout);
  EXPECT_FALSE(errors[2]);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r << " did not fail";
    auto msg = message_of(errors[r]);
    EXPECT_NE(msg.find("alltoallv"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'world'"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace ptrain::comm
