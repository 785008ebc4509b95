// Hierarchical membership: ranks talk to their node's relay (a RelayServer on a unix socket) with
// the ordinary CoordinatorClient; the coordinator sees one JoinNode, NodeBarrier and NodeHeartbeat
// per node.
#include "ptrain/rendezvous/node_relay.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "ptrain/core/error.h"
#include "ptrain/rendezvous/client.h"
#include "test_util.h"

namespace ptrain::rendezvous {
namespace {

namespace fs = std::filesystem;

class NodeRelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("ptrain-relay-test-{}", ::getpid());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // A relay for node `node_rank` speaking for `ranks`.
  std::unique_ptr<RelayServer> relay(const Coordinator& c, const std::string& token, int node_rank,
                                     std::vector<int> ranks, Millis heartbeat = Millis(0),
                                     int round = 0) {
    return relay_to(c.address(), token, node_rank, std::move(ranks), heartbeat, round);
  }
  // One with its upstream at `upstream` (the coordinator or a parent relay), listening for
  // `tree_children` child relays on 127.0.0.1 when there are any.
  std::unique_ptr<RelayServer> relay_to(const std::string& upstream, const std::string& token,
                                        int node_rank, std::vector<int> ranks,
                                        Millis heartbeat = Millis(0), int round = 0,
                                        int tree_children = 0, Millis window = Millis(50)) {
    NodeRelayOptions ro;
    ro.node = fmt::format("node{}", node_rank);
    ro.node_rank = node_rank;
    ro.round = round;
    ro.ranks = std::move(ranks);
    ro.batch_window = window;
    ro.tree_children = tree_children;
    return std::make_unique<RelayServer>(upstream, token, ro,
                                         (dir_ / fmt::format("r{}.sock", node_rank)).string(),
                                         heartbeat, tree_children > 0 ? "127.0.0.1:0" : "");
  }

  static JoinRequestView join_req(int rank, const std::string& node, Millis timeout) {
    JoinRequestView r;
    r.rank = rank;
    r.node = node;
    r.pid = 1000 + rank;
    r.timeout = timeout;
    return r;
  }

  fs::path dir_;
};

TEST_F(NodeRelayTest, TwoNodesJoinAndPassABarrierWithOneCallPerNode) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 4;
  opt.mesh = {2, 2, 1};
  opt.run_id = "relay-run";
  auto c = testing::start_coordinator(opt);
  auto n0 = relay(*c, opt.token, 0, {0, 1});
  auto n1 = relay(*c, opt.token, 1, {2, 3});
  std::vector<JoinResult> results(4);
  std::vector<std::string> errors(4);
  std::vector<std::thread> threads;
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&, r] {
      try {
        const std::string addr = r < 2 ? n0->address() : n1->address();
        CoordinatorClient client(addr, opt.token, Millis(5000));
        results[r] = client.join(join_req(r, r < 2 ? "node0" : "node1", Millis(10000)));
        client.barrier("start", r, 4, Millis(10000));
        EXPECT_EQ(client.address(), c->address());  // the coordinator behind the relay
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(results[r].rank, r);
    EXPECT_EQ(results[r].world_size, 4);
    EXPECT_EQ(results[r].run_id, "relay-run");
    EXPECT_EQ(results[r].coords.tp, r % 2);
    EXPECT_EQ(results[r].coords.dp, r / 2);
  }
  EXPECT_EQ(c->joined_ranks(), (std::vector<int>{0, 1, 2, 3}));
  auto stats = c->stats();
  EXPECT_EQ(stats.join_rpcs, 2u);
  EXPECT_EQ(stats.barrier_rpcs, 2u);
}

TEST_F(NodeRelayTest, JoinTimeoutThroughTheRelayNamesTheMissingRanks) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 4;
  opt.join_timeout = Millis(400);
  auto c = testing::start_coordinator(opt);
  c->expect(2, "node1");
  c->expect(3, "node1");
  auto n0 = relay(*c, opt.token, 0, {0, 1});
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      CoordinatorClient client(n0->address(), opt.token, Millis(5000));
      try {
        client.join(join_req(r, "node0", Millis(10000)));
      } catch (const TimeoutError& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(errors[r].find("2 of 4 ranks joined"), std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("2 (node1), 3 (node1)"), std::string::npos) << errors[r];
  }
}

TEST_F(NodeRelayTest, DuplicateLocalRankIsRefused) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 2;
  opt.join_timeout = Millis(2000);
  auto c = testing::start_coordinator(opt);
  auto n0 = relay(*c, opt.token, 0, {0, 1});
  std::thread first([&] {
    CoordinatorClient client(n0->address(), opt.token, Millis(5000));
    try {
      client.join(join_req(0, "node0", Millis(10000)));
    } catch (const Error&) {
    }
  });
  // Wait until the first Join reached the relay, then send a second Join for rank 0.
  for (int i = 0; i < 200 && c->joined_ranks().empty(); ++i)
    std::this_thread::sleep_for(Millis(10));
  ASSERT_EQ(c->joined_ranks(), std::vector<int>{0});
  CoordinatorClient client(n0->address(), opt.token, Millis(5000));
  try {
    client.join(join_req(0, "node0", Millis(10000)));
    ADD_FAILURE() << "a second Join of rank 0 was accepted";
  } catch (const RemoteError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0 already joined"), std::string::npos) << e.what();
  }
  c->abort("test over");
  first.join();
}

TEST_F(NodeRelayTest, NodeHeartbeatCarriesEachRanksLivenessAndASilentRankIsHung) {
  std::mutex mu;
  std::vector<int> hung;
  testing::Latch hung_latch;
  CoordinatorEvents ev;
  ev.on_hang = [&](int rank, const std::string&) {
    std::lock_guard<std::mutex> lock(mu);
    hung.push_back(rank);
    hung_latch.set();
  };
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 2;
  opt.heartbeat_timeout = Millis(600);
  auto c = testing::start_coordinator(opt, ev);
  auto n0 = relay(*c, opt.token, 0, {0, 1}, Millis(50));
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      CoordinatorClient client(n0->address(), opt.token, Millis(5000));
      client.join(join_req(r, "node0", Millis(10000)));
    });
  for (auto& t : threads) t.join();
  // Rank 0 keeps heartbeating to the relay; rank 1 falls silent.
  CoordinatorClient beater(n0->address(), opt.token, Millis(5000));
  auto before = c->stats().heartbeat_rpcs;
  auto start = Clock::now();
  bool reported = false;
  while (Clock::now() - start < Millis(3000) && !reported) {
    beater.heartbeat(0, 7, 0);
    reported = hung_latch.wait_for(Millis(20));
  }
  ASSERT_TRUE(reported) << "the silent rank was never reported";
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(hung, std::vector<int>{1});
  }
  // One upward heartbeat per relay period, however often the local ranks beat (~every 20 ms).
  double elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
  auto upward = c->stats().heartbeat_rpcs - before;
  EXPECT_LE(static_cast<double>(upward), elapsed_s / 0.05 + 2);
  EXPECT_GT(n0->relay().counters().local_heartbeats, upward);
}

TEST_F(NodeRelayTest, ConcurrentGetsOfOneKeyAreFetchedOncePerNode) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 4;
  auto c = testing::start_coordinator(opt);
  auto n0 = relay(*c, opt.token, 0, {0, 1, 2, 3});
  constexpr int kLocal = 4;
  std::vector<std::string> values(kLocal);
  std::vector<std::thread> threads;
  for (int r = 0; r < kLocal; ++r)
    threads.emplace_back([&, r] {
      CoordinatorClient client(n0->address(), opt.token, Millis(5000));
      values[r] = client.store()->get("nccl/id", Millis(10000));
    });
  for (int i = 0; i < 500 && n0->relay().counters().local_gets < kLocal; ++i)
    std::this_thread::sleep_for(Millis(10));
  ASSERT_EQ(n0->relay().counters().local_gets, static_cast<uint64_t>(kLocal));
  c->store().set("nccl/id", "abc");
  for (auto& t : threads) t.join();
  for (const auto& v : values) EXPECT_EQ(v, "abc");
  EXPECT_EQ(n0->relay().counters().upward_gets, 1u);
}

TEST_F(NodeRelayTest, AbortReachesEveryLocalWatchThroughOneUpwardStream) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 2;
  auto c = testing::start_coordinator(opt);
  auto n0 = relay(*c, opt.token, 0, {0, 1});
  std::vector<std::unique_ptr<CoordinatorClient>> clients;
  std::vector<std::unique_ptr<testing::Latch>> got(2);
  std::vector<std::string> reasons(2);
  for (int r = 0; r < 2; ++r) {
    got[r] = std::make_unique<testing::Latch>();
    clients.push_back(std::make_unique<CoordinatorClient>(n0->address(), opt.token, Millis(5000)));
    clients.back()->watch(r, [&, r](const WatchEventView& ev) {
      if (ev.kind == WatchEventView::Kind::Abort) reasons[r] = ev.reason;
      got[r]->set();
    });
  }
  // Both local streams are open before the abort (a later one would get it at once anyway).
  std::this_thread::sleep_for(Millis(200));
  c->abort("rank 3 failed");
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(got[r]->wait_for(Millis(5000))) << "rank " << r;
    EXPECT_EQ(reasons[r], "rank 3 failed");
  }
  EXPECT_TRUE(clients[0]->heartbeat(0, 1, 0).abort);
}

TEST_F(NodeRelayTest, StoreWritesAndReportsAreForwarded) {
  std::mutex mu;
  std::vector<std::string> reports;
  CoordinatorEvents ev;
  ev.on_report = [&](int, const std::string& json) {
    std::lock_guard<std::mutex> lock(mu);
    reports.push_back(json);
  };
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 1;
  auto c = testing::start_coordinator(opt, ev);
  auto n0 = relay(*c, opt.token, 0, {0});
  CoordinatorClient client(n0->address(), opt.token, Millis(5000));
  auto store = client.store();
  store->set("a", "1");
  EXPECT_EQ(store->add("n", 5), 5);
  EXPECT_TRUE(store->check({"a", "n"}));
  EXPECT_EQ(c->store().get("a", Millis(1000)), "1");
  client.report(0, R"({"step":1})");
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(reports, std::vector<std::string>{R"({"step":1})"});
}

TEST_F(NodeRelayTest, ARelayTreeJoinsBeatsPassesBarriersAndAbortsWithCallsOnlyFromItsTop) {
  // 5 nodes x 2 ranks, fanout 2: nodes 0 and 1 talk to the coordinator, 2 and 3 to node 0,
  // 4 to node 1. The coordinator sees one JoinNode and one NodeBarrier from each top node.
  std::mutex mu;
  std::vector<int> hung;
  testing::Latch hung_latch;
  CoordinatorEvents ev;
  ev.on_hang = [&](int rank, const std::string&) {
    std::lock_guard<std::mutex> lock(mu);
    hung.push_back(rank);
    hung_latch.set();
  };
  constexpr int kNodes = 5, kFanout = 2;
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 2 * kNodes;
  opt.mesh = {kNodes, 2, 1};
  opt.run_id = "tree-run";
  opt.heartbeat_timeout = Millis(1500);
  auto c = testing::start_coordinator(opt, ev);
  std::vector<std::unique_ptr<RelayServer>> nodes;
  for (int n = 0; n < kNodes; ++n) {
    auto pos = relay_tree_position(n, kNodes, kFanout);
    std::string up = pos.parent < 0 ? c->address() : nodes[pos.parent]->tree_address();
    // A long window: each batch must go upward because its subtree is complete, not on a timer.
    nodes.push_back(
        relay_to(up, opt.token, n, {2 * n, 2 * n + 1}, Millis(50), 0, pos.children, Millis(20000)));
    EXPECT_EQ(nodes.back()->tree_address().empty(), pos.children == 0) << "node " << n;
  }
  std::vector<JoinResult> results(opt.world_size);
  std::vector<std::string> errors(opt.world_size);
  std::vector<std::thread> threads;
  for (int r = 0; r < opt.world_size; ++r) {
    threads.emplace_back([&, r] {
      try {
        CoordinatorClient client(nodes[r / 2]->address(), opt.token, Millis(5000));
        results[r] = client.join(join_req(r, fmt::format("node{}", r / 2), Millis(15000)));
        client.barrier("start", r, opt.world_size, Millis(15000));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < opt.world_size; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(results[r].rank, r);
    EXPECT_EQ(results[r].world_size, opt.world_size);
    EXPECT_EQ(results[r].run_id, "tree-run");
    EXPECT_EQ(results[r].coords.dp, r / 2);
  }
  EXPECT_EQ(c->joined_ranks().size(), static_cast<size_t>(opt.world_size));
  auto stats = c->stats();
  EXPECT_EQ(stats.join_rpcs, 2u);
  EXPECT_EQ(stats.node_join_rpcs, 2u);
  EXPECT_EQ(stats.barrier_rpcs, 2u);
  EXPECT_EQ(nodes[0]->relay().counters().subtree_joins, 2u);
  EXPECT_EQ(nodes[1]->relay().counters().subtree_joins, 1u);
  EXPECT_EQ(nodes[0]->relay().counters().subtree_barriers, 2u);

  // Liveness crosses two levels: every rank but 9 (node 4, below node 1) keeps beating.
  std::vector<std::unique_ptr<CoordinatorClient>> beaters;
  for (int n = 0; n < kNodes; ++n)
    beaters.push_back(
        std::make_unique<CoordinatorClient>(nodes[n]->address(), opt.token, Millis(5000)));
  auto start = Clock::now();
  bool reported = false;
  while (Clock::now() - start < Millis(6000) && !reported) {
    for (int r = 0; r < opt.world_size; ++r)
      if (r != 9) beaters[r / 2]->heartbeat(r, 3, 0);
    reported = hung_latch.wait_for(Millis(20));
  }
  ASSERT_TRUE(reported) << "the silent rank below two relays was never reported";
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(hung, std::vector<int>{9});
  }
  EXPECT_GT(nodes[1]->relay().counters().subtree_heartbeats, 0u);

  // An abort reaches a watch on the deepest node through its parents' streams.
  testing::Latch got;
  std::string reason;
  CoordinatorClient watcher(nodes[4]->address(), opt.token, Millis(5000));
  watcher.watch(8, [&](const WatchEventView& ev) {
    if (ev.kind == WatchEventView::Kind::Abort) reason = ev.reason;
    got.set();
  });
  std::this_thread::sleep_for(Millis(200));
  c->abort("rank 9 hung");
  ASSERT_TRUE(got.wait_for(Millis(5000)));
  EXPECT_EQ(reason, "rank 9 hung");
}

TEST_F(NodeRelayTest, WrongTokenAtTheRelayIsRefused) {
  CoordinatorOptions opt;
  opt.token = make_token();
  opt.world_size = 1;
  auto c = testing::start_coordinator(opt);
  auto n0 = relay(*c, opt.token, 0, {0});
  CoordinatorClient client(n0->address(), make_token(), Millis(5000));
  EXPECT_THROW(client.join(join_req(0, "node0", Millis(5000))), RemoteError);
}

}  // namespace
}  // namespace ptrain::rendezvous

namespace ptrain::rendezvous {
namespace {

TEST(RelayTree, PositionsAreABreadthFirstTreeBelowTheCoordinator) {
  // Up to `fanout` nodes: all talk to the coordinator.
  for (int n = 0; n < 4; ++n) {
    EXPECT_EQ(relay_tree_position(n, 4, 4).parent, -1);
    EXPECT_EQ(relay_tree_position(n, 4, 4).children, 0);
    EXPECT_EQ(relay_tree_position(n, 4, 0).parent, -1);
  }
  // 7 nodes, fanout 2: 0,1 -> coordinator; 2,3 -> 0; 4,5 -> 1; 6 -> 2.
  std::vector<int> parents, children;
  for (int n = 0; n < 7; ++n) {
    parents.push_back(relay_tree_position(n, 7, 2).parent);
    children.push_back(relay_tree_position(n, 7, 2).children);
  }
  EXPECT_EQ(parents, (std::vector<int>{-1, -1, 0, 0, 1, 1, 2}));
  EXPECT_EQ(children, (std::vector<int>{2, 2, 1, 0, 0, 0, 0}));
  // Every node below the top has a parent that counts it: the tree covers all nodes once.
  for (int nodes : {5, 33, 100, 1025, 16384}) {
    std::vector<int> count(static_cast<size_t>(nodes), 0);
    int top = 0;
    for (int n = 0; n < nodes; ++n) {
      auto p = relay_tree_position(n, nodes, 32);
      if (p.parent < 0)
        ++top;
      else
        ++count[static_cast<size_t>(p.parent)];
      EXPECT_LT(p.parent, n);
    }
    EXPECT_EQ(top, std::min(nodes, 32)) << nodes;
    for (int n = 0; n < nodes; ++n)
      EXPECT_EQ(count[static_cast<size_t>(n)], relay_tree_position(n, nodes, 32).children)
          << nodes << " nodes, node " << n;
  }
  EXPECT_EQ(relay_tree_key(3, 17), "ptrain/relay-tree/3/17");
}

// A run folder too deep for a unix socket path puts the socket in a folder of this user's only;
// one that another user could have made first (open to others, or a symlink) is refused.
TEST(RelaySocket, ATooLongRunFolderUsesAPrivateFolderAndRefusesOneOpenToOthers) {
  EXPECT_EQ(relay_socket_path("/r", 3), "/r/relay-3.sock");
  const std::string long_dir = "/x/" + std::string(120, 'd');
  const std::string path = relay_socket_path(long_dir, 3);
  EXPECT_LT(path.size(), 100u);
  const std::string dir = std::filesystem::path(path).parent_path();
  struct stat st {};
  ASSERT_EQ(::lstat(dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(st.st_uid, ::getuid());

  const auto parent = std::filesystem::temp_directory_path() /
                      ("ptrain-sockdir-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(parent);
  const std::string mine = private_socket_dir(parent);
  ASSERT_EQ(::lstat(mine.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(private_socket_dir(parent), mine);  // taken again as it is
  ::chmod(mine.c_str(), 0755);
  try {
    private_socket_dir(parent);
    ADD_FAILURE() << "a socket folder open to others was taken";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("not a private folder of this user"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("mode 755"), std::string::npos) << e.what();
  }
  std::filesystem::remove(mine);
  std::filesystem::create_directory_symlink(parent, mine);
  EXPECT_THROW(private_socket_dir(parent), IoError);
  std::filesystem::remove_all(parent);
}

}  // namespace
}  // namespace ptrain::rendezvous
