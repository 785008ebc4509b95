// `ptrain bench rdzv --clients N [--repeats R]`: time for N simulated workers to Join one
// coordinator and pass a barrier (issue 3's rendezvous figure).
#include <fmt/format.h>

#include <algorithm>

#include "command.h"
#include "ptrain/rendezvous/bench.h"

namespace ptrain::cli {
namespace {

struct BenchRdzvArgs {
  int clients = 1024;
  int repeats = 5;
  int connections = 0;
  double timeout_s = 120;
  std::string tls = "off";
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

Action setup(CLI::App& sub) {
  auto args = std::make_shared<BenchRdzvArgs>();
  sub.add_option("--clients", args->clients, "simulated workers")->capture_default_str();
  sub.add_option("--repeats", args->repeats, "runs; the median is reported")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub.add_option("--connections", args->connections,
                 "TCP connections the clients share (0 = one per client)")
      ->capture_default_str();
  sub.add_option("--timeout", args->timeout_s, "seconds before a run counts as failed")
      ->capture_default_str();
  sub.add_option("--tls", args->tls, "mutual TLS on the connections (rendezvous.tls)")
      ->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  return [args] {
    rendezvous::RdzvBenchOptions opt;
    opt.tls = args->tls == "on";
    opt.clients = args->clients;
    opt.connections = args->connections;
    opt.timeout = Millis(static_cast<int64_t>(args->timeout_s * 1000));
    int conns = opt.connections > 0 ? std::min(opt.connections, opt.clients) : opt.clients;
    fmt::print(
        "# ptrain bench rdzv: {} clients over {} connections, one coordinator on "
        "127.0.0.1, {} repeats, tls {}\n",
        opt.clients, conns, args->repeats, args->tls);
    fmt::print("# {:>6} {:>12} {:>12} {:>16}\n", "run", "connect_s", "join_s", "join+barrier_s");
    std::vector<double> connect, join, total;
    for (int r = 0; r < args->repeats; ++r) {
      auto res = rendezvous::run_rdzv_bench(opt);
      connect.push_back(res.connect_s);
      join.push_back(res.join_s);
      total.push_back(res.total_s);
      fmt::print("  {:>6} {:>12.4f} {:>12.4f} {:>16.4f}\n", r, res.connect_s, res.join_s,
                 res.total_s);
    }
    fmt::print("  {:>6} {:>12.4f} {:>12.4f} {:>16.4f}\n", "median", median(connect), median(join),
               median(total));
    return 0;
  };
}

}  // namespace

PTRAIN_BENCH({"rdzv", "Rendezvous: N simulated workers Join one coordinator and pass a barrier",
              false, 20, setup});

}  // namespace ptrain::cli
