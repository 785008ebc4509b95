// `ptrain bench rdzv --clients N[,N2...] [--ranks-per-node K] [--repeats R]`: time for N simulated
// ranks to Join one coordinator and pass a barrier, per size, with µs per rank so that growth
// with the rank count shows at a glance.
#include <fmt/format.h>

#include <algorithm>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/bench.h"

namespace ptrain::cli {
namespace {

struct BenchRdzvArgs {
  std::vector<int> clients{1024};
  int repeats = 5;
  int connections = 0;
  int ranks_per_node = 1;
  double heartbeat_s = 0;
  double timeout_s = 120;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

Action setup(CLI::App& sub) {
  auto args = std::make_shared<BenchRdzvArgs>();
  sub.add_option("--clients", args->clients,
                 "simulated ranks; several sizes separated by commas (4096,65536) print one row "
                 "each")
      ->delimiter(',')
      ->capture_default_str();
  sub.add_option("--repeats", args->repeats, "runs; the median is reported")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub.add_option("--connections", args->connections,
                 "TCP connections the clients (or nodes) share (0 = one each)")
      ->capture_default_str();
  sub.add_option("--ranks-per-node", args->ranks_per_node,
                 "K > 1: the ranks are N/K nodes whose relays join, barrier and heartbeat for "
                 "their K ranks")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub.add_option("--heartbeat-s", args->heartbeat_s,
                 "with --ranks-per-node: heartbeat period for 3 s after the rendezvous; prints "
                 "the coordinator's heartbeat RPCs/s (0 = skip)")
      ->capture_default_str();
  sub.add_option("--timeout", args->timeout_s, "seconds before a run counts as failed")
      ->capture_default_str();
  return [args] {
    for (int c : args->clients)
      if (c < 1)
        throw ConfigError(fmt::format("bench rdzv: --clients must be >= 1, got {}", c),
                          "give sizes such as --clients 4096,65536");
    const int k = args->ranks_per_node;
    fmt::print(
        "# ptrain bench rdzv: one coordinator on 127.0.0.1, {} ranks per node ({}), {} "
        "repeats, medians\n",
        k, k > 1 ? "node-level JoinNode/NodeBarrier through a NodeRelay per node" : "flat",
        args->repeats);
    fmt::print("# {:>8} {:>7} {:>6} {:>10} {:>9} {:>15} {:>9} {:>11} {:>10}\n", "ranks", "nodes",
               "conns", "connect_s", "join_s", "join+barrier_s", "us/rank", "rss_B/rank",
               "hb_rpc/s");
    for (int clients : args->clients) {
      rendezvous::RdzvBenchOptions opt;
      opt.clients = clients;
      opt.connections = args->connections;
      opt.ranks_per_node = k;
      opt.timeout = Millis(static_cast<int64_t>(args->timeout_s * 1000));
      opt.heartbeat_period = Millis(static_cast<int64_t>(args->heartbeat_s * 1000));
      std::vector<double> connect, join, total, us, rss, hb;
      int nodes = 0;
      for (int r = 0; r < args->repeats; ++r) {
        auto res = rendezvous::run_rdzv_bench(opt);
        nodes = res.nodes;
        connect.push_back(res.connect_s);
        join.push_back(res.join_s);
        total.push_back(res.total_s);
        us.push_back(res.us_per_rank);
        rss.push_back(res.rss_bytes_per_rank);
        hb.push_back(res.heartbeat_rpcs_per_s);
      }
      int conns = opt.connections > 0 ? std::min(opt.connections, nodes) : nodes;
      std::string hb_text = median(hb) >= 0 ? fmt::format("{:.0f}", median(hb)) : "-";
      fmt::print("  {:>8} {:>7} {:>6} {:>10.4f} {:>9.4f} {:>15.4f} {:>9.2f} {:>11.0f} {:>10}\n",
                 clients, nodes, conns, median(connect), median(join), median(total), median(us),
                 median(rss), hb_text);
      if (opt.heartbeat_period.count() > 0 && k > 1)
        fmt::print("  # heartbeat bound: nodes / heartbeat_s = {:.0f} RPCs/s\n",
                   nodes / args->heartbeat_s);
      std::fflush(stdout);
    }
    return 0;
  };
}

}  // namespace

PTRAIN_BENCH({"rdzv", "Rendezvous: N simulated workers Join one coordinator and pass a barrier",
              false, 20, setup});

}  // namespace ptrain::cli
