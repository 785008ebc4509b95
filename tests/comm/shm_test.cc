// What only the shm backend has: ops that span many rounds of its staging slots, messages of
// many frames, the segment's name gone once every rank mapped it, and the sweep of segments
// whose creator died.
#include "ptrain/comm/shm.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "ptrain/comm/mesh.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/grpc_store.h"
#include "ptrain/rendezvous/token.h"
#include "shm/reduce.h"

namespace ptrain::comm {
namespace {

using testing::expect_all_ok;
using testing::run_ranks;

constexpr Millis kFast{std::chrono::seconds(20)};

float value(int rank, size_t i) {
  return static_cast<float>((rank + 1) * 5 + static_cast<int>(i % 23));
}

// Slots of one page: a few thousand elements take dozens of rounds, alternating buffers.
std::unique_ptr<Communicator> tiny_slots(std::shared_ptr<rendezvous::Store> store, int r, int n) {
  ShmOptions o;
  o.comm.timeout = kFast;
  o.tag = "test";
  o.slot_bytes = 4096;
  return create_shm_communicator({"tiny", r, n},
                                 std::make_shared<rendezvous::PrefixStore>("tiny", store), o);
}

std::vector<std::string> my_segments() {
  std::vector<std::string> out;
  const std::string mine = fmt::format("-{}-", ::getpid());
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    const auto name = e.path().filename().string();
    if (name.rfind("ptrain-", 0) == 0 && name.find(mine) != std::string::npos) out.push_back(name);
  }
  return out;
}

class ShmRounds : public ::testing::TestWithParam<int> {};

TEST_P(ShmRounds, EveryOpIsExactAcrossManyRounds) {
  const int n = GetParam();
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = tiny_slots(store, r, n);
    const size_t count = 20011;  // ~20 rounds of 1024 floats, odd tail
    std::vector<float> buf(count);
    for (size_t i = 0; i < count; ++i) buf[i] = value(r, i);
    comm->allreduce(buf.data(), count, DType::kF32, ReduceOp::kSum);
    for (size_t i = 0; i < count; ++i) {
      float sum = 0;
      for (int q = 0; q < n; ++q) sum += value(q, i);
      ASSERT_EQ(buf[i], sum) << "allreduce i " << i;
    }
    const size_t chunk = 3001;
    std::vector<float> send(chunk * n), recv(chunk);
    for (size_t i = 0; i < send.size(); ++i) send[i] = value(r, i);
    comm->reduce_scatter(send.data(), recv.data(), chunk, DType::kF32, ReduceOp::kMax);
    for (size_t i = 0; i < chunk; ++i) {
      float mx = -1e30f;
      for (int q = 0; q < n; ++q) mx = std::max(mx, value(q, r * chunk + i));
      ASSERT_EQ(recv[i], mx) << "reduce_scatter i " << i;
    }
    std::vector<float> gathered(chunk * n);
    comm->allgather(recv.data(), gathered.data(), chunk, DType::kF32);
    for (int q = 0; q < n; ++q)
      for (size_t i = 0; i < chunk; ++i) {
        float mx = -1e30f;
        for (int p = 0; p < n; ++p) mx = std::max(mx, value(p, q * chunk + i));
        ASSERT_EQ(gathered[q * chunk + i], mx) << "allgather q " << q << " i " << i;
      }
    std::vector<float> b(5003);
    for (size_t i = 0; i < b.size(); ++i) b[i] = value(r, i);
    comm->broadcast(b.data(), b.size(), DType::kF32, n - 1);
    for (size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i], value(n - 1, i));
    // alltoallv: rank i sends 1500 * (i + j + 1) elements to rank j.
    std::vector<size_t> sc(n), rc(n);
    std::vector<int32_t> a2a_send, a2a_recv;
    for (int j = 0; j < n; ++j) {
      sc[j] = 1500 * (r + j + 1);
      rc[j] = 1500 * (j + r + 1);
      for (size_t k = 0; k < sc[j]; ++k) a2a_send.push_back(int32_t(r * 1000000 + j * 10000 + k));
    }
    size_t total = 0;
    for (size_t c : rc) total += c;
    a2a_recv.assign(total, -1);
    comm->alltoallv(a2a_send.data(), sc, a2a_recv.data(), rc, DType::kI32);
    size_t at = 0;
    for (int j = 0; j < n; ++j)
      for (size_t k = 0; k < rc[j]; ++k, ++at)
        ASSERT_EQ(a2a_recv[at], int32_t(j * 1000000 + r * 10000 + k)) << "from " << j;
  }));
}

INSTANTIATE_TEST_SUITE_P(Sizes, ShmRounds, ::testing::Values(2, 3, 4));

// Inputs whose float sums depend on the order of the additions.
std::vector<float> noisy(int rank, size_t count, uint32_t salt) {
  std::mt19937 rng(uint32_t(rank * 7919) + salt);
  std::uniform_real_distribution<float> u(-1000.f, 1000.f);
  std::vector<float> v(count);
  for (auto& x : v) x = u(rng);
  return v;
}

// reduce(slice of every rank's input) in rank order, element by element.
std::vector<float> reference(int n, size_t count, uint32_t salt, ReduceOp op, size_t from = 0,
                             size_t len = SIZE_MAX) {
  len = std::min(len, count - from);
  std::vector<std::vector<float>> all;
  std::vector<const float*> src;
  for (int q = 0; q < n; ++q) all.push_back(noisy(q, count, salt));
  for (auto& a : all) src.push_back(a.data() + from);
  std::vector<float> out(len);
  shm::reduce_f32_reference(out.data(), src.data(), n, len, op);
  return out;
}

bool same_bits(const float* a, const float* b, size_t count) {
  return count == 0 || std::memcmp(a, b, count * sizeof(float)) == 0;
}

// Counts around the cells of one-page slots (512 floats a cell, 4 cells a region): none, one,
// vector tails, a cell +- 1, slices of a rank or more empty, the region wrapped several times.
const size_t kBoundaryCounts[] = {0, 1, 3, 15, 16, 17, 511, 512, 513, 1023, 1025, 2048, 2049, 9001};

class ShmCells : public ::testing::TestWithParam<int> {};

TEST_P(ShmCells, AllreduceAtCellBoundariesIsTheRankOrderSumOnEveryRank) {
  const int n = GetParam();
  auto store = std::make_shared<rendezvous::MemoryStore>();
  std::mutex mu;
  std::vector<std::vector<float>> results(n);  // rank 0's, then compared with every other's
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = tiny_slots(store, r, n);
    uint32_t salt = 0;
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax})
      for (size_t count : kBoundaryCounts) {
        ++salt;
        auto buf = noisy(r, count, salt);
        comm->allreduce(buf.data(), count, DType::kF32, op);
        const auto want = reference(n, count, salt, op);
        ASSERT_TRUE(same_bits(buf.data(), want.data(), count))
            << to_string(op) << " count " << count << " rank " << r;
        std::lock_guard<std::mutex> lock(mu);
        results[r].insert(results[r].end(), buf.begin(), buf.end());
      }
  }));
  for (int r = 1; r < n; ++r)
    EXPECT_TRUE(results[r].size() == results[0].size() &&
                same_bits(results[r].data(), results[0].data(), results[0].size()))
        << "rank " << r << " differs from rank 0";
}

TEST_P(ShmCells, ReduceScatterAllgatherAndBroadcastAtCellBoundaries) {
  const int n = GetParam();
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(n, [&](int r) {
    auto comm = tiny_slots(store, r, n);
    uint32_t salt = 100;
    for (size_t chunk : kBoundaryCounts) {
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
        ++salt;
        const auto send = noisy(r, chunk * n, salt);
        std::vector<float> recv(chunk, -5.f);
        comm->reduce_scatter(send.data(), recv.data(), chunk, DType::kF32, op);
        const auto want = reference(n, chunk * n, salt, op, r * chunk, chunk);
        ASSERT_TRUE(same_bits(recv.data(), want.data(), chunk))
            << "reduce_scatter " << to_string(op) << " chunk " << chunk;
      }
      ++salt;
      const auto mine = noisy(r, chunk, salt);
      std::vector<float> gathered(chunk * n, -5.f);
      comm->allgather(mine.data(), gathered.data(), chunk, DType::kF32);
      for (int q = 0; q < n; ++q)
        ASSERT_TRUE(same_bits(gathered.data() + q * chunk, noisy(q, chunk, salt).data(), chunk))
            << "allgather chunk " << chunk << " from " << q;
      auto b = noisy(r, chunk, salt);
      const int root = int(chunk % n);
      comm->broadcast(b.data(), chunk, DType::kF32, root);
      ASSERT_TRUE(same_bits(b.data(), noisy(root, chunk, salt).data(), chunk))
          << "broadcast chunk " << chunk << " root " << root;
    }
  }));
}

// Without the consistency check no barrier separates the ops: a rank runs ahead into the next
// op while the others still read its cells, so only the cell counters keep the data apart.
TEST_P(ShmCells, BackToBackOpsWithoutTheCheckNeverOverwriteCellsInUse) {
  const int n = GetParam();
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(n, [&](int r) {
    ShmOptions o;
    o.comm.timeout = kFast;
    o.comm.check_consistency = false;
    o.tag = "test";
    o.slot_bytes = 4096;
    auto comm = create_shm_communicator(
        {"nocheck", r, n}, std::make_shared<rendezvous::PrefixStore>("nocheck", store), o);
    for (uint32_t round = 0; round < 30; ++round) {
      const size_t count = 700 + 613 * (round % 7);
      auto buf = noisy(r, count, round);
      comm->allreduce(buf.data(), count, DType::kF32);
      ASSERT_TRUE(same_bits(buf.data(), reference(n, count, round, ReduceOp::kSum).data(), count))
          << "allreduce round " << round;
      const size_t chunk = count / 3;
      auto send = noisy(r, chunk * n, round + 1000);
      std::vector<float> recv(chunk);
      comm->reduce_scatter(send.data(), recv.data(), chunk, DType::kF32, ReduceOp::kMax);
      ASSERT_TRUE(same_bits(
          recv.data(),
          reference(n, chunk * n, round + 1000, ReduceOp::kMax, r * chunk, chunk).data(), chunk))
          << "reduce_scatter round " << round;
      std::vector<float> gathered(chunk * n);
      comm->allgather(recv.data(), gathered.data(), chunk, DType::kF32);
      for (int q = 0; q < n; ++q)
        ASSERT_TRUE(same_bits(
            gathered.data() + q * chunk,
            reference(n, chunk * n, round + 1000, ReduceOp::kMax, q * chunk, chunk).data(), chunk))
            << "allgather round " << round;
      if (round % 3 == 0) {
        std::vector<size_t> counts(n, 300 + round);
        std::vector<int32_t> a(counts[0] * n), b(a.size(), -1);
        for (size_t i = 0; i < a.size(); ++i) a[i] = int32_t(r * 100000 + i);
        comm->alltoallv(a.data(), counts, b.data(), counts, DType::kI32);
        for (int q = 0; q < n; ++q)
          for (size_t k = 0; k < counts[0]; ++k)
            ASSERT_EQ(b[q * counts[0] + k], int32_t(q * 100000 + r * counts[0] + k))
                << "alltoallv round " << round;
      }
      auto bc = noisy(r, count, round + 2000);
      comm->broadcast(bc.data(), count, DType::kF32, int(round % n));
      ASSERT_TRUE(same_bits(bc.data(), noisy(int(round % n), count, round + 2000).data(), count))
          << "broadcast round " << round;
    }
  }));
}

INSTANTIATE_TEST_SUITE_P(Sizes, ShmCells, ::testing::Values(1, 2, 3, 5, 8));

// Default slots: a 16 MiB allreduce spans 32 cells of 512 KiB, the region of 4 wrapped 8 times.
TEST(Shm, LargeAllreduceIsTheRankOrderSum) {
  for (int n : {2, 3}) {
    auto store = std::make_shared<rendezvous::MemoryStore>();
    const size_t count = (4u << 20) + 7;
    const auto want = reference(n, count, 77, ReduceOp::kSum);
    expect_all_ok(run_ranks(n, [&](int r) {
      ShmOptions o;
      o.comm.timeout = kFast;
      o.tag = "test";
      auto comm = create_shm_communicator(
          {"large", r, n}, std::make_shared<rendezvous::PrefixStore>("large", store), o);
      auto buf = noisy(r, count, 77);
      comm->allreduce(buf.data(), count, DType::kF32);
      ASSERT_TRUE(same_bits(buf.data(), want.data(), count)) << "n " << n << " rank " << r;
    }));
  }
}

TEST(Shm, MessagesOfManyFramesMatchByTagAcrossEachOther) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(2, [&](int r) {
    auto comm = tiny_slots(store, r, 2);
    const int peer = 1 - r;
    // Far larger than the ring: the receiver must take the first message aside to reach the
    // second one, which it asks for first.
    std::vector<float> big(1 << 20), small(333), got_big(big.size()), got_small(small.size());
    for (size_t i = 0; i < big.size(); ++i) big[i] = value(r, i);
    for (size_t i = 0; i < small.size(); ++i) small[i] = value(r + 7, i);
    auto s1 = comm->send_async(big.data(), big.size(), DType::kF32, peer, 1);
    auto s2 = comm->send_async(small.data(), small.size(), DType::kF32, peer, 2);
    auto r2 = comm->recv_async(got_small.data(), got_small.size(), DType::kF32, peer, 2);
    auto r1 = comm->recv_async(got_big.data(), got_big.size(), DType::kF32, peer, 1);
    for (auto* w : {s1.get(), s2.get(), r2.get(), r1.get()}) w->wait(kFast);
    for (size_t i = 0; i < big.size(); ++i) ASSERT_EQ(got_big[i], value(peer, i));
    for (size_t i = 0; i < small.size(); ++i) ASSERT_EQ(got_small[i], value(peer + 7, i));
  }));
}

// The sender finishes and closes before the receiver asks; its messages are still in the ring
// and receives running together, later messages first, must all get theirs (a receive that
// waits while another one pulls frames must not take the closed peer for a failure).
TEST(Shm, MessagesSentBeforeThePeerClosedAreStillDelivered) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  constexpr int kRounds = 12, kMessages = 3;
  constexpr size_t kCount = 20000;  // one frame each; the three fit in the ring together
  for (int round = 0; round < kRounds; ++round) {
    const std::string name = fmt::format("late{}", round);
    expect_all_ok(run_ranks(2, [&](int r) {
      ShmOptions o;
      o.comm.timeout = kFast;
      o.tag = "test";
      auto comm = create_shm_communicator(
          {name, r, 2}, std::make_shared<rendezvous::PrefixStore>(name, store), o);
      std::vector<std::vector<float>> msg(kMessages, std::vector<float>(kCount));
      if (r == 1) {
        std::vector<std::unique_ptr<Work>> sends;
        for (int m = 0; m < kMessages; ++m) {
          for (size_t i = 0; i < kCount; ++i) msg[m][i] = value(m, i);
          sends.push_back(comm->send_async(msg[m].data(), kCount, DType::kF32, 0, m + 1));
          sends.back()->wait(kFast);  // in order: the ring holds 1, 2, 3
        }
        return;  // closes the communicator
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      std::vector<std::unique_ptr<Work>> recvs;
      for (int m = kMessages - 1; m >= 0; --m)
        recvs.push_back(comm->recv_async(msg[m].data(), kCount, DType::kF32, 1, m + 1));
      for (auto& w : recvs) w->wait(kFast);
      for (int m = 0; m < kMessages; ++m)
        for (size_t i = 0; i < kCount; ++i) ASSERT_EQ(msg[m][i], value(m, i)) << m;
      // Nothing more will come: a further receive fails at once, naming the rank that left.
      float x = 0;
      auto late = comm->recv_async(&x, 1, DType::kF32, 1, 9);
      try {
        late->wait(kFast);
        ADD_FAILURE() << "a receive from a closed peer succeeded";
      } catch (const RemoteError& e) {
        EXPECT_NE(std::string(e.what()).find("rank 1 left the group"), std::string::npos)
            << e.what();
      }
    }));
  }
}

TEST(Shm, TheSegmentNameIsGoneOnceEveryRankMappedIt) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(3, [&](int r) {
    auto comm = tiny_slots(store, r, 3);
    comm->barrier();
    EXPECT_TRUE(my_segments().empty()) << my_segments().front();
    float x = 1;
    comm->allreduce(&x, 1, DType::kF32);  // still works: the mapping outlives the name
    EXPECT_EQ(x, 3.f);
  }));
}

TEST(Shm, SweepRemovesSegmentsOfDeadCreatorsOnly) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  const std::string dead = fmt::format("/ptrain-sweeptest-world-{}-0000abcd", child);
  const std::string live = fmt::format("/ptrain-sweeptest-world-{}-0000abce", ::getpid());
  for (const auto& name : {dead, live}) {
    const int fd = ::shm_open(name.c_str(), O_CREAT | O_RDWR, 0600);
    ASSERT_GE(fd, 0) << name;
    ::close(fd);
  }
  EXPECT_GE(sweep_stale_shm_segments(), 1);
  EXPECT_FALSE(std::filesystem::exists("/dev/shm" + dead));
  EXPECT_TRUE(std::filesystem::exists("/dev/shm" + live));
  ::shm_unlink(live.c_str());
}

// Two real processes meet through a coordinator; the child maps the segment and then dies
// without a word (SIGKILL), in the middle of the parent's allreduce.
TEST(ShmProcesses, APeerKilledMidOpFailsTheSurvivorLongBeforeTheTimeout) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();  // before any gRPC thread exists in this process
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(fds[1]);
    char line[512] = {};
    size_t got = 0;
    while (got < sizeof(line) - 1) {
      const ssize_t n = ::read(fds[0], line + got, sizeof(line) - 1 - got);
      if (n <= 0) break;
      got += size_t(n);
      if (std::memchr(line, '\n', got)) break;
    }
    try {
      std::string text(line, got);
      const auto space = text.find(' ');
      auto store = std::make_shared<rendezvous::GrpcStore>(
          text.substr(0, space), text.substr(space + 1, text.find('\n') - space - 1));
      ShmOptions o;
      o.comm.timeout = Millis(30000);
      auto comm = create_shm_communicator(
          {"victim", 1, 2}, std::make_shared<rendezvous::PrefixStore>("victim", store), o);
      ::kill(::getpid(), SIGKILL);
    } catch (...) {
    }
    ::_exit(3);
  }
  ::close(fds[0]);
  rendezvous::CoordinatorOptions co;
  co.token = rendezvous::make_token();
  co.world_size = 2;
  co.mesh = {.dp = 2, .tp = 1, .pp = 1};
  rendezvous::Coordinator coordinator(co);
  coordinator.start();
  const std::string line = coordinator.address() + " " + co.token + "\n";
  ASSERT_EQ(::write(fds[1], line.data(), line.size()), ssize_t(line.size()));
  ::close(fds[1]);
  auto store = std::make_shared<rendezvous::GrpcStore>(coordinator.address(), co.token);
  ShmOptions o;
  o.comm.timeout = Millis(30000);
  auto comm = create_shm_communicator(
      {"victim", 0, 2}, std::make_shared<rendezvous::PrefixStore>("victim", store), o);
  std::vector<float> buf(1 << 16, 1.f);
  const auto start = Clock::now();
  try {
    comm->allreduce(buf.data(), buf.size(), DType::kF32);
    FAIL() << "allreduce with a dead peer succeeded";
  } catch (const RemoteError& e) {
    EXPECT_NE(std::string(e.what()).find("died"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'victim'"), std::string::npos) << e.what();
  }
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
}

TEST(Shm, RanksOnDifferentHostsAreRefusedWithTheReason) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  // Rank 0 of this group says it runs elsewhere.
  store->set("elsewhere/shm/segment", "/ptrain-none|other-host|boot");
  ShmOptions o;
  o.comm.timeout = kFast;
  try {
    create_shm_communicator({"dp[0,1]", 1, 2},
                            std::make_shared<rendezvous::PrefixStore>("elsewhere", store), o);
    FAIL() << "joined a segment of another host";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("one host"), std::string::npos) << e.what();
  }
}

TEST(ShmMesh, AutoPicksShmForRanksOnOneHost) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  EXPECT_EQ(choose_backend("auto", tensor::Device::kCpu, 1), Backend::kHostAuto);
  EXPECT_EQ(choose_backend("shm", tensor::Device::kCpu, 1), Backend::kShm);
  expect_all_ok(run_ranks(2, [&](int r) {
    ProcessMesh mesh(r, 2, {2, 1, 1}, make_comm_factory(Backend::kHostAuto, store, {}));
    EXPECT_STREQ(mesh.dp().backend(), "shm");
    float x = float(r + 1);
    mesh.dp().allreduce(&x, 1, DType::kF32);
    EXPECT_EQ(x, 3.f);
  }));
}

}  // namespace
}  // namespace ptrain::comm
