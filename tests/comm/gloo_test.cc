// The collective test table over the host backends (Gloo and shm) with ranks as threads: every op
// on groups of 1-4 ranks, odd and zero sizes, async ordering, and the faults that must end in an
// error rather than a hang.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <numeric>
#include <tuple>

#include "harness.h"
#include "ptrain/core/error.h"

namespace ptrain::comm {
namespace {

using testing::expect_all_ok;
using testing::make_comm;
using testing::make_gloo;
using testing::message_of;
using testing::run_ranks;

constexpr Millis kFast{std::chrono::seconds(20)};

// Small integers: every sum and average below is exact in float32.
float value(int rank, size_t i) {
  return static_cast<float>((rank + 1) * 3 + static_cast<int>(i % 17));
}

class HostGroups : public ::testing::TestWithParam<std::tuple<std::string, int>> {
 protected:
  const std::string backend = std::get<0>(GetParam());
  const int n = std::get<1>(GetParam());
};

class Backends : public ::testing::TestWithParam<std::string> {
 protected:
  const std::string backend = GetParam();
};

TEST_P(HostGroups, AllreduceSumAvgMaxAreExact) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = make_comm(backend, store, "world", r, n, {kFast});
    for (size_t count : {size_t(0), size_t(1), size_t(7), size_t(1001), size_t(65537)}) {
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
        std::vector<float> buf(count);
        for (size_t i = 0; i < count; ++i) buf[i] = value(r, i);
        comm->allreduce(buf.data(), count, DType::kF32, op);
        for (size_t i = 0; i < count; ++i) {
          float sum = 0, mx = -1e30f;
          for (int q = 0; q < n; ++q) sum += value(q, i), mx = std::max(mx, value(q, i));
          float want = op == ReduceOp::kSum ? sum : op == ReduceOp::kMax ? mx : sum / n;
          ASSERT_EQ(buf[i], want) << "count " << count << " op " << to_string(op) << " i " << i;
        }
      }
    }
  }));
}

TEST_P(HostGroups, ReduceScatterGivesEachRankItsReducedChunk) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = make_comm(backend, store, "world", r, n, {kFast});
    for (size_t chunk : {size_t(0), size_t(1), size_t(13), size_t(4099)}) {
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
        std::vector<float> send(chunk * n), recv(chunk, -7.f);
        for (size_t i = 0; i < send.size(); ++i) send[i] = value(r, i);
        comm->reduce_scatter(send.data(), recv.data(), chunk, DType::kF32, op);
        for (size_t i = 0; i < chunk; ++i) {
          size_t g = r * chunk + i;
          float sum = 0, mx = -1e30f;
          for (int q = 0; q < n; ++q) sum += value(q, g), mx = std::max(mx, value(q, g));
          float want = op == ReduceOp::kSum ? sum : op == ReduceOp::kMax ? mx : sum / n;
          ASSERT_EQ(recv[i], want) << "chunk " << chunk << " op " << to_string(op) << " i " << i;
        }
      }
    }
  }));
}

TEST_P(HostGroups, AllgatherConcatenatesInRankOrder) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = make_comm(backend, store, "world", r, n, {kFast});
    for (size_t count : {size_t(0), size_t(1), size_t(333)}) {
      std::vector<float> send(count), recv(count * n, -1.f);
      for (size_t i = 0; i < count; ++i) send[i] = value(r, i);
      comm->allgather(send.data(), recv.data(), count, DType::kF32);
      for (int q = 0; q < n; ++q)
        for (size_t i = 0; i < count; ++i) ASSERT_EQ(recv[q * count + i], value(q, i));
    }
  }));
}

TEST_P(HostGroups, BroadcastCopiesTheRootsBufferFromEveryRoot) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = make_comm(backend, store, "world", r, n, {kFast});
    for (int root = 0; root < n; ++root) {
      std::vector<float> buf(77);
      for (size_t i = 0; i < buf.size(); ++i) buf[i] = value(r, i);
      comm->broadcast(buf.data(), buf.size(), DType::kF32, root);
      for (size_t i = 0; i < buf.size(); ++i) ASSERT_EQ(buf[i], value(root, i));
    }
  }));
}

TEST_P(HostGroups, BarrierReleasesNoRankBeforeAllArrive) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  std::atomic<int> arrived{0};
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = make_comm(backend, store, "world", r, n, {kFast});
    for (int round = 1; round <= 3; ++round) {
      arrived++;
      comm->barrier();
      ASSERT_GE(arrived.load(), round * n);
      comm->barrier();  // nobody starts the next round before everyone checked this one
    }
  }));
}

INSTANTIATE_TEST_SUITE_P(Sizes, HostGroups,
                         ::testing::Combine(::testing::ValuesIn(testing::host_backends()),
                                            ::testing::Values(1, 2, 3, 4)),
                         [](const auto& info) {
                           return fmt::format("{}_{}", std::get<0>(info.param),
                                              std::get<1>(info.param));
                         });

TEST_P(Backends, SendRecvMatchByTagInBothDirectionsAtOnce) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(2, [&](int r) {
    auto comm = make_comm(backend, store, "pp", r, 2, {kFast});
    const int peer = 1 - r;
    std::vector<float> a(1000, float(r + 1)), b(5, float(r + 10)), got_a(1000), got_b(5);
    // Posted in opposite tag orders on the two ranks: matching is by tag, not order.
    std::unique_ptr<Work> s1, s2;
    if (r == 0) {
      s1 = comm->send_async(a.data(), a.size(), DType::kF32, peer, 1);
      s2 = comm->send_async(b.data(), b.size(), DType::kF32, peer, 2);
    } else {
      s2 = comm->send_async(b.data(), b.size(), DType::kF32, peer, 2);
      s1 = comm->send_async(a.data(), a.size(), DType::kF32, peer, 1);
    }
    comm->recv(got_b.data(), got_b.size(), DType::kF32, peer, 2);
    comm->recv(got_a.data(), got_a.size(), DType::kF32, peer, 1);
    s1->wait(kFast);
    s2->wait(kFast);
    for (float x : got_a) ASSERT_EQ(x, float(peer + 1));
    for (float x : got_b) ASSERT_EQ(x, float(peer + 10));
  }));
}

TEST_P(Backends, AsyncCollectivesRunInIssueOrder) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  constexpr int kOps = 16;
  expect_all_ok(run_ranks(3, [&](int r) {
    auto comm = make_comm(backend, store, "dp", r, 3, {kFast});
    std::vector<std::vector<float>> bufs(kOps);
    std::vector<std::unique_ptr<Work>> works;
    for (int k = 0; k < kOps; ++k) {
      bufs[k].assign(100 + k * 37, float(k + r));  // distinct sizes: a reorder would mismatch
      works.push_back(comm->allreduce_async(bufs[k].data(), bufs[k].size(), DType::kF32));
    }
    // Completion is in order: once op k is done, every earlier op is done.
    for (int k = kOps - 1; k >= 0; --k) {
      works[k]->wait(kFast);
      for (int j = 0; j < k; ++j) ASSERT_TRUE(works[j]->test());
    }
    for (int k = 0; k < kOps; ++k)
      for (float x : bufs[k]) ASSERT_EQ(x, float(3 * k + 0 + 1 + 2));
  }));
}

TEST_P(Backends, Bf16IsAConfigError) {
  auto comm = make_comm(backend, nullptr, "world", 0, 1);
  uint16_t buf[4] = {};
  try {
    comm->allreduce(buf, 4, DType::kBF16);
    FAIL() << "bf16 allreduce on " << backend << " did not throw";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("bf16 is not supported by the " + backend + " backend"),
              std::string::npos)
        << e.what();
  }
}

TEST_P(Backends, SizeMismatchFailsEveryRankNamingOpAndGroup) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  const auto start = Clock::now();
  auto errors = run_ranks(2, [&](int r) {
    auto comm = make_comm(backend, store, "dp[0,1]", r, 2, {Millis(3000)});
    std::vector<float> buf(r == 0 ? 100 : 200, 1.f);
    comm->allreduce(buf.data(), buf.size(), DType::kF32);
  });
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3));
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r << " did not fail";
    auto msg = message_of(errors[r]);
    EXPECT_NE(msg.find("allreduce"), std::string::npos) << msg;
    EXPECT_NE(msg.find("dp[0,1]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("100 x f32"), std::string::npos) << msg;
    EXPECT_NE(msg.find("200 x f32"), std::string::npos) << msg;
  }
}

TEST_P(Backends, PeerThatClosesItsCommunicatorFailsTheSurvivorsQuickly) {
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
    std::vector<float> buf(1 << 16, 1.f);
    comm->allreduce(buf.data(), buf.size(), DType::kF32);
  });
  EXPECT_LT(Clock::now() - start, timeout);
  EXPECT_FALSE(errors[2]);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[r]) << "rank " << r << " did not fail";
    auto msg = message_of(errors[r]);
    EXPECT_NE(msg.find("allreduce"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'world'"), std::string::npos) << msg;
  }
}

TEST_P(Backends, PeerThatStopsParticipatingTimesOutTheSurvivors) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  const Millis timeout(1500);
  std::atomic<bool> done{false};
  const auto start = Clock::now();
  std::unique_ptr<Communicator> silent;
  auto errors = run_ranks(2, [&](int r) {
    auto comm = make_comm(backend, store, "tp", r, 2, {timeout});
    if (r == 1) {
      silent = std::move(comm);  // stays connected but never calls the collective
      return;
    }
    std::vector<float> buf(10, 1.f);
    comm->allreduce(buf.data(), buf.size(), DType::kF32);
  });
  done = true;
  EXPECT_LT(Clock::now() - start, timeout + std::chrono::seconds(3));
  ASSERT_TRUE(errors[0]);
  try {
    std::rethrow_exception(errors[0]);
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("allreduce"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'tp'"), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    FAIL() << "expected a TimeoutError, got: " << e.what();
  }
}

TEST_P(Backends, ConnectingWithoutThePeersTimesOut) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  try {
    make_comm(backend, store, "world", 0, 2, {Millis(300)});
    FAIL() << "connected to a group whose peer never came";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("'world'"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Host, Backends, ::testing::ValuesIn(testing::host_backends()),
                         [](const auto& info) { return info.param; });

TEST(Gloo, HostForALoopbackCoordinatorIsLoopback) {
  EXPECT_EQ(gloo_host_for("127.0.0.1:29500"), "127.0.0.1");
  EXPECT_EQ(gloo_host_for("localhost:1"), "127.0.0.1");
  EXPECT_EQ(gloo_host_for("127.0.0.3"), "127.0.0.1");
}

}  // namespace
}  // namespace ptrain::comm
