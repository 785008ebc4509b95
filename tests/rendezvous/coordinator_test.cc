// The coordinator against real clients on 127.0.0.1: binding, tokens, rendezvous, barriers,
// heartbeats, abort over Watch, and forwarding of reports and logs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <thread>

#include "ptrain/core/error.h"
#include "ptrain/rendezvous/client.h"
#include "test_util.h"

namespace ptrain::rendezvous {
namespace {

using ::testing::HasSubstr;
using testing::Latch;
using testing::start_coordinator;

// A socket bound (and listening, if asked) on 127.0.0.1 at a kernel-chosen port.
struct BoundSocket {
  int fd = -1;
  int port = 0;
  explicit BoundSocket(bool listen_too) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    if (listen_too) {
      EXPECT_EQ(::listen(fd, 1), 0);
    }
    socklen_t len = sizeof(addr);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  ~BoundSocket() { ::close(fd); }
};

JoinRequestView join_request(int rank, const std::string& node = "localhost") {
  JoinRequestView r;
  r.rank = rank;
  r.node = node;
  r.local_rank = rank;
  r.pid = 1000 + rank;
  r.timeout = Millis(10000);
  return r;
}

TEST(CoordinatorTest, PortZeroGetsAKernelChosenPort) {
  auto c = start_coordinator({});
  EXPECT_GT(c->port(), 0);
  EXPECT_EQ(c->address(), "127.0.0.1:" + std::to_string(c->port()));
}

TEST(CoordinatorTest, BusyPortErrorNamesTheAddress) {
  BoundSocket busy(true);
  CoordinatorOptions opt;
  opt.port = busy.port;
  try {
    start_coordinator(opt);
    FAIL() << "started on a busy port";
  } catch (const IoError& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot listen on 127.0.0.1:" + std::to_string(busy.port)));
    EXPECT_THAT(e.what(), HasSubstr("address in use"));
  }
}

TEST(CoordinatorTest, UnreachableCoordinatorFailsWithinTheConnectTimeout) {
  int port;
  {
    BoundSocket closed(false);  // bound, never listening: connections are refused
    port = closed.port;
  }
  std::string addr = "127.0.0.1:" + std::to_string(port);
  auto t0 = Clock::now();
  try {
    CoordinatorClient client(addr, make_token(), Millis(500));
    FAIL() << "connected to nothing";
  } catch (const RemoteError& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot reach the coordinator at " + addr + " after 0.5 s"));
  }
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
}

TEST(CoordinatorTest, JoinReturnsOnceAllRanksJoinedWithMeshCoordinates) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 8;
  opt.mesh = {2, 2, 2};  // dp, tp, pp
  opt.run_id = "run-1";
  opt.run_dir = "/tmp/run-1";
  opt.spec_yaml = "name: t\n";
  auto c = start_coordinator(opt);
  std::vector<std::future<JoinResult>> results;
  for (int r = 0; r < 8; ++r)
    results.push_back(std::async(std::launch::async, [&, r] {
      CoordinatorClient client(c->address(), opt.token);
      return client.join(join_request(r));
    }));
  for (int r = 0; r < 8; ++r) {
    JoinResult j = results[r].get();
    EXPECT_EQ(j.rank, r);
    EXPECT_EQ(j.world_size, 8);
    EXPECT_EQ(j.coords.tp, r % 2);
    EXPECT_EQ(j.coords.dp, (r / 2) % 2);
    EXPECT_EQ(j.coords.pp, r / 4);
    EXPECT_EQ(j.mesh.tp, 2);
    EXPECT_EQ(j.run_id, "run-1");
    EXPECT_EQ(j.run_dir, "/tmp/run-1");
    EXPECT_EQ(j.spec_yaml, "name: t\n");
  }
  EXPECT_TRUE(c->missing_ranks().empty());
  EXPECT_EQ(c->joined_ranks().size(), 8u);
}

TEST(CoordinatorTest, JoinTimeoutNamesTheMissingRanksAndTheirNodes) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 3;
  opt.join_timeout = Millis(300);
  auto c = start_coordinator(opt);
  c->expect(2, "node-c");
  CoordinatorClient client(c->address(), opt.token);
  try {
    client.join(join_request(0));
    FAIL() << "join returned without rank 1 and 2";
  } catch (const TimeoutError& e) {
    EXPECT_THAT(e.what(), HasSubstr("1 of 3 ranks joined"));
    EXPECT_THAT(e.what(), HasSubstr("missing ranks 1, 2 (node-c)"));
  }
  EXPECT_EQ(c->missing_ranks(), (std::vector<int>{1, 2}));
}

TEST(CoordinatorTest, DuplicateRankIsRefused) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 2;
  auto c = start_coordinator(opt);
  auto first = std::async(std::launch::async, [&] {
    CoordinatorClient client(c->address(), opt.token);
    return client.join(join_request(0, "node-a"));
  });
  // Wait until rank 0 is recorded, then join as rank 0 again.
  for (int i = 0; i < 500 && c->joined_ranks().empty(); ++i) std::this_thread::sleep_for(Millis(5));
  ASSERT_EQ(c->joined_ranks(), std::vector<int>{0});
  CoordinatorClient client(c->address(), opt.token);
  try {
    client.join(join_request(0, "node-b"));
    FAIL() << "duplicate rank accepted";
  } catch (const RemoteError& e) {
    EXPECT_THAT(e.what(), HasSubstr("rank 0 already joined round 0 from node-a"));
  }
  client.join(join_request(1));  // completes the round for the first joiner
  EXPECT_EQ(first.get().rank, 0);
}

TEST(CoordinatorTest, RankOutOfRangeIsRefused) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 2;
  auto c = start_coordinator(opt);
  CoordinatorClient client(c->address(), opt.token);
  EXPECT_THROW(client.join(join_request(2)), ConfigError);
}

TEST(CoordinatorTest, NewRoundForgetsMembershipAndRefusesOldRound) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto c = start_coordinator(opt);
  CoordinatorClient client(c->address(), opt.token);
  client.join(join_request(0));
  c->store().set("kept", "1");
  c->begin_round(1);
  EXPECT_TRUE(c->joined_ranks().empty());
  EXPECT_THROW(client.join(join_request(0)), RemoteError);  // still round 0
  auto req = join_request(0);
  req.round = 1;
  EXPECT_EQ(client.join(req).round, 1);
  EXPECT_TRUE(c->store().check({"kept"}));
}

TEST(CoordinatorTest, BarrierReleasesAllWhenCountReached) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto c = start_coordinator(opt);
  std::vector<std::future<void>> done;
  for (int r = 0; r < 4; ++r)
    done.push_back(std::async(std::launch::async, [&, r] {
      CoordinatorClient client(c->address(), opt.token);
      client.barrier("start", r, 4, Millis(10000));
    }));
  for (auto& f : done) EXPECT_NO_THROW(f.get());
}

TEST(CoordinatorTest, BarrierTimeoutNamesMissingRanks) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto c = start_coordinator(opt);
  CoordinatorClient client(c->address(), opt.token);
  try {
    client.barrier("b", 1, 3, Millis(200));
    FAIL() << "barrier passed alone";
  } catch (const TimeoutError& e) {
    EXPECT_THAT(e.what(), HasSubstr("barrier 'b' timed out after 200 ms: 1 of 3 arrived"));
    EXPECT_THAT(e.what(), HasSubstr("missing ranks 0, 2"));
  }
}

TEST(CoordinatorTest, SilentRankIsReportedAsHungOnce) {
  std::mutex mu;
  std::vector<int> hung;
  Latch hang_seen;
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 2;
  opt.heartbeat_timeout = Millis(300);
  CoordinatorEvents ev;
  ev.on_hang = [&](int rank, const std::string& why) {
    EXPECT_THAT(why, HasSubstr("no heartbeat"));
    std::lock_guard<std::mutex> lock(mu);
    hung.push_back(rank);
    hang_seen.set();
  };
  auto c = start_coordinator(opt, ev);
  CoordinatorClient a(c->address(), opt.token), b(c->address(), opt.token);
  auto joined1 = std::async(std::launch::async, [&] { return b.join(join_request(1)); });
  a.join(join_request(0));
  joined1.get();
  // Rank 0 keeps heartbeating; rank 1 stays silent.
  bool seen = false;
  for (int i = 0; i < 200 && !seen; ++i) {
    a.heartbeat(0, i);
    seen = hang_seen.wait_for(Millis(50));
  }
  ASSERT_TRUE(seen);
  for (int i = 0; i < 12; ++i) {  // longer than heartbeat_timeout: no second report
    a.heartbeat(0, i);
    std::this_thread::sleep_for(Millis(50));
  }
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(hung, std::vector<int>{1});
}

TEST(CoordinatorTest, AbortReachesWatchAndHeartbeats) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto c = start_coordinator(opt);
  CoordinatorClient client(c->address(), opt.token);
  std::mutex mu;
  std::vector<WatchEventView> events;
  Latch got;
  client.watch(0, [&](const WatchEventView& e) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(e);
    got.set();
  });
  client.join(join_request(0));  // a Watch that arrives after abort() gets ABORT at once, too
  c->abort("rank 3 exited with status 1");
  ASSERT_TRUE(got.wait_for(Millis(5000)));
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].kind, WatchEventView::Kind::Abort);
    EXPECT_EQ(events[0].reason, "rank 3 exited with status 1");
  }
  HeartbeatReply hb = client.heartbeat(0, 1);
  EXPECT_TRUE(hb.abort);
  EXPECT_EQ(hb.reason, "rank 3 exited with status 1");
}

TEST(CoordinatorTest, WatchOpenedAfterAbortGetsAbortAtOnce) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto c = start_coordinator(opt);
  c->abort("interrupted");
  CoordinatorClient client(c->address(), opt.token);
  Latch got;
  WatchEventView seen;
  client.watch(0, [&](const WatchEventView& e) {
    seen = e;
    got.set();
  });
  ASSERT_TRUE(got.wait_for(Millis(5000)));
  EXPECT_EQ(seen.kind, WatchEventView::Kind::Abort);
}

TEST(CoordinatorTest, WatchEndsWithClosedWhenCoordinatorShutsDown) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto c = start_coordinator(opt);
  CoordinatorClient client(c->address(), opt.token);
  Latch got;
  WatchEventView seen;
  client.watch(0, [&](const WatchEventView& e) {
    seen = e;
    got.set();
  });
  client.heartbeat(0, 0);
  c.reset();
  ASSERT_TRUE(got.wait_for(Millis(5000)));
  EXPECT_EQ(seen.kind, WatchEventView::Kind::Closed);
}

TEST(CoordinatorTest, PendingJoinFailsWhenAborted) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 2;
  auto c = start_coordinator(opt);
  CoordinatorClient client(c->address(), opt.token);
  auto pending = std::async(std::launch::async, [&] { return client.join(join_request(0)); });
  for (int i = 0; i < 500 && c->joined_ranks().empty(); ++i) std::this_thread::sleep_for(Millis(5));
  c->abort("user interrupt");
  try {
    pending.get();
    FAIL() << "join completed after abort";
  } catch (const RemoteError& e) {
    EXPECT_THAT(e.what(), HasSubstr("user interrupt"));
  }
}

TEST(CoordinatorTest, ReportsLogsAndLeavesReachTheEvents) {
  std::mutex mu;
  std::string report;
  std::vector<LogLineView> lines;
  std::string left;
  CoordinatorOptions opt;
  opt.token = make_token();
  CoordinatorEvents ev;
  ev.on_report = [&](int rank, const std::string& json) {
    std::lock_guard<std::mutex> lock(mu);
    report = std::to_string(rank) + json;
  };
  ev.on_log = [&](const LogLineView& l) {
    std::lock_guard<std::mutex> lock(mu);
    lines.push_back(l);
  };
  ev.on_leave = [&](int rank, int code, const std::string& why) {
    std::lock_guard<std::mutex> lock(mu);
    left = fmt::format("{} {} {}", rank, code, why);
  };
  auto c = start_coordinator(opt, ev);
  CoordinatorClient client(c->address(), opt.token);
  client.report(0, R"({"step":1})");
  client.send_logs({{"node-a", 0, 123, false, "hello"}, {"node-a", 0, 124, true, "oops"}});
  client.leave(0, 3, "timeout");
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(report, R"(0{"step":1})");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1].text, "oops");
  EXPECT_TRUE(lines[1].is_stderr);
  EXPECT_EQ(lines[0].time_us, 123);
  EXPECT_EQ(left, "0 3 timeout");
}

TEST(CoordinatorTest, MeshThatDoesNotMatchWorldSizeIsAConfigError) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 4;
  opt.mesh = {2, 1, 1};
  EXPECT_THROW(Coordinator(opt, {}), ConfigError);
}

}  // namespace
}  // namespace ptrain::rendezvous
