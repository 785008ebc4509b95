// The per-rank cost of the rendezvous does not grow with the rank count: on the flat path the
// benchmark's µs per rank at 65,536 clients stays close to the figure at 4,096; on the
// hierarchical path the figure at 16,384 ranks (2,048 nodes of 8) stays within a generous factor
// of the one at 2,048 ranks (256 nodes); the coordinator's heartbeat RPC rate stays at one per
// node and period. Ratios only: no absolute wall-clock threshold.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "ptrain/rendezvous/bench.h"

namespace ptrain::rendezvous {
namespace {

double median_us_per_rank(int ranks, int per_node, int repeats, int connections = 64) {
  std::vector<double> us;
  for (int i = 0; i < repeats; ++i) {
    RdzvBenchOptions opt;
    opt.clients = ranks;
    opt.ranks_per_node = per_node;
    opt.connections = connections;
    opt.timeout = Millis(60000);
    us.push_back(run_rdzv_bench(opt).us_per_rank);
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

TEST(RendezvousScalingTest, HierarchicalCostPerRankDoesNotGrowWithRankCount) {
  double small = median_us_per_rank(2048, 8, 3);
  double large = median_us_per_rank(16384, 8, 3);
  RecordProperty("us_per_rank_2048", std::to_string(small));
  RecordProperty("us_per_rank_16384", std::to_string(large));
  // Linear cost gives a ratio near 1 (fixed costs make the small size dearer per rank); the
  // factor leaves room for a loaded machine.
  EXPECT_LT(large, 3.0 * small) << "µs/rank: " << small << " at 2,048 ranks, " << large
                                << " at 16,384";
}

// gRPC's per-call deadline timers and the one callback completion queue (whose pending-operation
// list Debian's gRPC scans at every completion) made 65,536 flat clients cost 1.74x the µs per
// rank of 4,096 on a quiet machine, and more under load; linear is 1. The larger size runs at
// most twice and keeps the better figure: load only ever adds time.
TEST(RendezvousScalingTest, FlatCostPerRankAt65536ClientsStaysCloseToThatAt4096) {
  double small = median_us_per_rank(4096, 1, 3, 256);
  double large = median_us_per_rank(65536, 1, 1, 256);
  if (large >= 1.5 * small) large = std::min(large, median_us_per_rank(65536, 1, 1, 256));
  RecordProperty("us_per_rank_4096", std::to_string(small));
  RecordProperty("us_per_rank_65536", std::to_string(large));
  EXPECT_LT(large, 1.5 * small) << "µs/rank: " << small << " at 4,096 flat clients, " << large
                                << " at 65,536";
}

TEST(RendezvousScalingTest, HeartbeatRpcsAtTheCoordinatorAreOnePerNodeAndPeriod) {
  RdzvBenchOptions opt;
  opt.clients = 8192;
  opt.ranks_per_node = 8;
  opt.connections = 64;
  opt.timeout = Millis(60000);
  opt.heartbeat_period = Millis(250);
  opt.heartbeat_window = Millis(1000);
  auto res = run_rdzv_bench(opt);
  double bound = res.nodes / 0.25;  // nodes / heartbeat_s
  EXPECT_GT(res.heartbeat_rpcs_per_s, 0.0);
  EXPECT_LE(res.heartbeat_rpcs_per_s, 1.25 * bound)
      << res.heartbeat_rpcs_per_s << " heartbeat RPCs/s for " << res.nodes << " nodes";
}

TEST(RendezvousScalingTest, InARelayTreeOnlyTheTopRelaysCallTheCoordinator) {
  // 1,024 relays of 8 ranks with fanout 4: the coordinator hears the heartbeats of 4 relays,
  // which carry every rank of their subtrees (three levels below them).
  RdzvBenchOptions opt;
  opt.clients = 8192;
  opt.ranks_per_node = 8;
  opt.tree_fanout = 4;
  opt.connections = 64;
  opt.timeout = Millis(60000);
  opt.heartbeat_period = Millis(250);
  opt.heartbeat_window = Millis(1000);
  auto res = run_rdzv_bench(opt);
  EXPECT_EQ(res.nodes, 1024);
  EXPECT_GT(res.heartbeat_rpcs_per_s, 0.0);
  EXPECT_LE(res.heartbeat_rpcs_per_s, 1.25 * 4 / 0.25)
      << res.heartbeat_rpcs_per_s << " heartbeat RPCs/s from a tree topped by 4 relays";
}

}  // namespace
}  // namespace ptrain::rendezvous
