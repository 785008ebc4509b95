// `ptrain bench rdzv --clients N[,N2...] [--ranks-per-node K] [--repeats R]`: time for N simulated
// ranks to Join one coordinator and pass a barrier, per size, with µs per rank so that growth
// with the rank count shows at a glance.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>

#include "command.h"
#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/bench.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/token.h"

extern char** environ;

namespace ptrain::cli {
namespace {

struct BenchRdzvArgs {
  std::vector<int> clients{1024};
  int repeats = 5;
  int connections = 0;
  int ranks_per_node = 1;
  int tree_fanout = 0;
  double heartbeat_s = 0;
  double timeout_s = 120;
  bool in_process = false;
  int serve_ranks = 0;      // > 0: be the coordinator process of one run (internal)
  std::string tls = "off";  // on: mutual TLS; the coordinator then runs in this process
};

// `--serve-ranks N`: a coordinator for N ranks; prints its port, then answers "stats" lines on
// stdin with the heartbeat RPC count, and exits at end of input.
int serve(int ranks, double timeout_s) {
  rendezvous::CoordinatorOptions copt;
  copt.token = env_or("PTRAIN_TOKEN", "");
  copt.world_size = ranks;
  copt.mesh = {ranks, 1, 1};
  copt.join_timeout = Millis(static_cast<int64_t>(timeout_s * 1000));
  rendezvous::Coordinator coordinator(copt);
  coordinator.start();
  std::printf("%d\n", coordinator.port());
  std::fflush(stdout);
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line == "stats")
      std::printf("%llu\n", static_cast<unsigned long long>(coordinator.stats().heartbeat_rpcs));
    std::fflush(stdout);
  }
  return 0;
}

// The coordinator of one benchmark run in its own process, so that its RSS is its own.
class CoordinatorProcess {
 public:
  CoordinatorProcess(int ranks, double timeout_s) {
    token_ = rendezvous::make_token();
    int to_child[2], from_child[2];
    PTRAIN_SYSCALL(::pipe2(to_child, O_CLOEXEC));
    PTRAIN_SYSCALL(::pipe2(from_child, O_CLOEXEC));
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from_child[1], 1);
    std::string exe = "/proc/self/exe";
    std::vector<std::string> args = {"ptrain",
                                     "bench",
                                     "rdzv",
                                     "--serve-ranks",
                                     std::to_string(ranks),
                                     "--timeout",
                                     fmt::format("{}", timeout_s)};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_s;
    for (char** e = environ; e && *e; ++e)
      if (std::string(*e).rfind("PTRAIN_TOKEN=", 0) != 0) env_s.emplace_back(*e);
    env_s.push_back("PTRAIN_TOKEN=" + token_);  // never on the command line
    std::vector<char*> envp;
    for (auto& e : env_s) envp.push_back(e.data());
    envp.push_back(nullptr);
    int rc = ::posix_spawn(&pid_, exe.c_str(), &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    ::close(to_child[0]);
    ::close(from_child[1]);
    if (rc != 0) {
      ::close(to_child[1]);
      ::close(from_child[0]);
      throw IoError(
          fmt::format("bench rdzv: cannot start the coordinator process: {}", std::strerror(rc)));
    }
    in_ = ::fdopen(from_child[0], "r");
    out_ = ::fdopen(to_child[1], "w");
    int port = 0;
    if (!in_ || !out_ || std::fscanf(in_, "%d", &port) != 1 || port <= 0)
      throw IoError("bench rdzv: the coordinator process did not report its port");
    address_ = fmt::format("127.0.0.1:{}", port);
    target_.address = address_;
    target_.token = token_;
    target_.rss_bytes = [this] { return rss(); };
    target_.heartbeat_rpcs = [this] { return heartbeats(); };
  }
  ~CoordinatorProcess() {
    if (out_) std::fclose(out_);  // end of input: the child exits
    if (in_) std::fclose(in_);
    int status = 0;
    for (int i = 0; i < 100; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) return;
      ::usleep(50000);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
  }
  const rendezvous::RdzvBenchTarget& target() const { return target_; }

 private:
  double rss() const {
    std::ifstream statm(fmt::format("/proc/{}/statm", pid_));
    long pages = 0, resident = 0;
    statm >> pages >> resident;
    return static_cast<double>(resident) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  }
  uint64_t heartbeats() {
    std::fputs("stats\n", out_);
    std::fflush(out_);
    unsigned long long n = 0;
    if (std::fscanf(in_, "%llu", &n) != 1)
      throw IoError("bench rdzv: the coordinator process did not answer");
    return n;
  }
  pid_t pid_ = -1;
  std::string token_, address_;
  FILE* in_ = nullptr;
  FILE* out_ = nullptr;
  rendezvous::RdzvBenchTarget target_;
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
  sub.add_option("--tree-fanout", args->tree_fanout,
                 "F >= 2, with --ranks-per-node: the node relays form a relay tree of fanout F "
                 "(rendezvous.tree_fanout) in this process; only the top F call the coordinator "
                 "(0 = every relay calls it)")
      ->capture_default_str();
  sub.add_option("--heartbeat-s", args->heartbeat_s,
                 "with --ranks-per-node: heartbeat period for 3 s after the rendezvous; prints "
                 "the coordinator's heartbeat RPCs/s (0 = skip)")
      ->capture_default_str();
  sub.add_option("--timeout", args->timeout_s, "seconds before a run counts as failed")
      ->capture_default_str();
  sub.add_flag("--in-process", args->in_process,
               "run the coordinator in this process (its RSS then includes the clients')");
  sub.add_option("--serve-ranks", args->serve_ranks)->group("");  // the coordinator process
  sub.add_option("--tls", args->tls,
                 "mutual TLS on the connections (rendezvous.tls); on runs the coordinator in this "
                 "process, which holds the job identity")
      ->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  return [args] {
    if (args->serve_ranks > 0) return serve(args->serve_ranks, args->timeout_s);
    // The TLS identity is this process's (rendezvous::set_process_tls): a coordinator in a child
    // process would not have it, so with --tls on the coordinator runs here.
    const bool tls = args->tls == "on";
    if (tls) args->in_process = true;
    for (int c : args->clients)
      if (c < 1)
        throw ConfigError(fmt::format("bench rdzv: --clients must be >= 1, got {}", c),
                          "give sizes such as --clients 4096,65536");
    const int k = args->ranks_per_node;
    if (args->tree_fanout == 1 || args->tree_fanout < 0 || (args->tree_fanout && k < 2))
      throw ConfigError(
          fmt::format("bench rdzv: --tree-fanout {} needs F >= 2 and --ranks-per-node >= 2",
                      args->tree_fanout),
          "e.g. --ranks-per-node 8 --tree-fanout 32");
    const std::string shape =
        k < 2 ? "flat"
        : args->tree_fanout
            ? fmt::format("node relays in a relay tree of fanout {}", args->tree_fanout)
            : std::string("node-level JoinNode/NodeBarrier through a NodeRelay per node");
    fmt::print(
        "# ptrain bench rdzv: one coordinator on 127.0.0.1 ({}), {} ranks per node ({}), {} "
        "repeats, medians, tls {}\n",
        args->in_process ? "in this process" : "own process", k, shape, args->repeats, args->tls);
    fmt::print("# {:>8} {:>7} {:>6} {:>10} {:>9} {:>15} {:>9} {:>11} {:>10}\n", "ranks", "nodes",
               "conns", "connect_s", "join_s", "join+barrier_s", "us/rank", "rss_B/rank",
               "hb_rpc/s");
    for (int clients : args->clients) {
      rendezvous::RdzvBenchOptions opt;
      opt.clients = clients;
      opt.connections = args->connections;
      opt.ranks_per_node = k;
      opt.tree_fanout = args->tree_fanout;
      opt.tls = tls;
      opt.timeout = Millis(static_cast<int64_t>(args->timeout_s * 1000));
      opt.heartbeat_period = Millis(static_cast<int64_t>(args->heartbeat_s * 1000));
      std::vector<double> connect, join, total, us, rss, hb;
      int nodes = 0;
      for (int r = 0; r < args->repeats; ++r) {
        std::unique_ptr<CoordinatorProcess> proc;
        if (!args->in_process) {
          proc = std::make_unique<CoordinatorProcess>(clients, args->timeout_s);
          opt.target = &proc->target();
        }
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
