// `ptrain bench comm --op allreduce [--backend gloo|shm] --procs N --min 1K --max 64M [--iters K]
// [--runs R]`:
// starts a coordinator here, spawns N worker processes (the hidden `bench comm-worker`), which
// meet through the coordinator's Store and sweep the op; rank 0 prints the nccl-tests-style
// table with the plain-Gloo baseline next to ours.
#include <fmt/format.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <thread>

#include "command.h"
#include "ptrain/comm/bench.h"
#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/launch/process.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/grpc_store.h"
#include "ptrain/rendezvous/token.h"

extern char** environ;

namespace ptrain::cli {
namespace {

struct BenchCommArgs {
  comm::BenchOptions bench;
  std::string min = "1K", max = "64M";
  int procs = 2;
  double timeout_s = 120;
};

// "4096", "64K", "1M", "2G" (binary multiples) -> bytes.
size_t parse_size(const std::string& text, const char* flag) {
  size_t pos = 0;
  unsigned long long n = 0;
  try {
    n = std::stoull(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos == 0)
    throw ConfigError(fmt::format("{} '{}': not a size", flag, text), "write e.g. 4096, 64K, 1M");
  std::string unit = text.substr(pos);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit == "" || unit == "B") return n;
  if (unit == "K" || unit == "KB" || unit == "KIB") return n << 10;
  if (unit == "M" || unit == "MB" || unit == "MIB") return n << 20;
  if (unit == "G" || unit == "GB" || unit == "GIB") return n << 30;
  throw ConfigError(fmt::format("{} '{}': unknown unit '{}'", flag, text, unit),
                    "use B, K, M or G");
}

void add_sweep_options(CLI::App& sub, BenchCommArgs& a) {
  sub.add_option("--op", a.bench.op,
                 "allreduce|allgather|reduce_scatter|alltoall|broadcast|sendrecv")
      ->capture_default_str();
  sub.add_option("--backend", a.bench.backend, "the transport: gloo|shm")->capture_default_str();
  sub.add_option("--min", a.min, "smallest size (bytes; K/M/G suffixes)")->capture_default_str();
  sub.add_option("--max", a.max, "largest size (doubling from --min)")->capture_default_str();
  sub.add_option("--iters", a.bench.iters, "timed ops per run")->capture_default_str();
  sub.add_option("--warmup", a.bench.warmup, "untimed ops per size")->capture_default_str();
  sub.add_option("--runs", a.bench.runs, "runs per size; the median is reported")
      ->capture_default_str();
  sub.add_flag(
      "--no-check", [&a](int64_t) { a.bench.comm.check_consistency = false; },
      "skip the per-op agreement check across ranks");
  sub.add_flag(
      "--no-baseline", [&a](int64_t) { a.bench.baseline = false; }, "skip the plain-Gloo baseline");
  sub.add_option("--timeout-s", a.timeout_s, "timeout of each op and of the whole run")
      ->capture_default_str();
}

std::vector<std::string> forward_args(const BenchCommArgs& a) {
  std::vector<std::string> args = {"--op",        a.bench.op,
                                   "--backend",   a.bench.backend,
                                   "--min",       a.min,
                                   "--max",       a.max,
                                   "--iters",     std::to_string(a.bench.iters),
                                   "--warmup",    std::to_string(a.bench.warmup),
                                   "--runs",      std::to_string(a.bench.runs),
                                   "--timeout-s", fmt::format("{}", a.timeout_s)};
  if (!a.bench.comm.check_consistency) args.push_back("--no-check");
  if (!a.bench.baseline) args.push_back("--no-baseline");
  return args;
}

std::string self_exe() {
  char buf[4096];
  ssize_t n = PTRAIN_SYSCALL(::readlink("/proc/self/exe", buf, sizeof(buf) - 1));
  return std::string(buf, static_cast<size_t>(n));
}

Action setup_bench_comm(CLI::App& sub) {
  auto a = std::make_shared<BenchCommArgs>();
  add_sweep_options(sub, *a);
  sub.add_option("--procs", a->procs, "worker processes")->capture_default_str();
  return [a] {
    comm::bus_factor(a->bench.op, 2);  // validates --op before anything starts
    comm::check_bench_backend(a->bench.backend);
    parse_size(a->min, "--min");
    parse_size(a->max, "--max");
    if (a->procs < 1) throw ConfigError("--procs must be at least 1");
    rendezvous::CoordinatorOptions co;
    co.token = rendezvous::make_token();
    co.world_size = a->procs;
    co.mesh = {.dp = a->procs, .tp = 1, .pp = 1};
    rendezvous::Coordinator coordinator(co);
    coordinator.start();

    std::vector<std::string> base_env;
    for (char** e = environ; *e; ++e) {
      std::string kv(*e);
      for (const char* key : {"RANK=", "WORLD_SIZE=", "PTRAIN_COORDINATOR=", "PTRAIN_TOKEN="})
        if (kv.rfind(key, 0) == 0) kv.clear();
      if (!kv.empty()) base_env.push_back(kv);
    }
    std::vector<launch::ChildProcess> children;
    for (int r = 0; r < a->procs; ++r) {
      launch::ProcessOptions po;
      po.argv = {self_exe(), "bench", "comm-worker"};
      for (auto& arg : forward_args(*a)) po.argv.push_back(arg);
      po.env = base_env;
      po.env.push_back(fmt::format("RANK={}", r));
      po.env.push_back(fmt::format("WORLD_SIZE={}", a->procs));
      po.env.push_back("PTRAIN_COORDINATOR=" + coordinator.address());
      po.env.push_back("PTRAIN_TOKEN=" + co.token);
      po.pipe_output = false;  // rank 0 prints the table itself
      children.push_back(launch::ChildProcess::spawn(po));
    }
    // Wait for all; the first failure ends the run (the others are killed on return).
    Deadline deadline(Millis(static_cast<int64_t>(a->timeout_s * 1000 * 4)));
    size_t finished = 0;
    std::vector<bool> done(children.size());
    while (finished < children.size()) {
      for (size_t r = 0; r < children.size(); ++r) {
        if (done[r]) continue;
        if (auto st = children[r].try_wait()) {
          done[r] = true;
          ++finished;
          if (!st->ok()) {
            fmt::print(stderr, "ptrain: bench comm: rank {} ended with {}\n", r, st->describe());
            return st->signal ? kExitFailure : st->code;
          }
        }
      }
      if (deadline.expired())
        throw TimeoutError(
            fmt::format("bench comm: the workers did not finish within {} s", a->timeout_s * 4));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return 0;
  };
}

Action setup_bench_comm_worker(CLI::App& sub) {
  auto a = std::make_shared<BenchCommArgs>();
  add_sweep_options(sub, *a);
  return [a] {
    a->bench.min_bytes = parse_size(a->min, "--min");
    a->bench.max_bytes = parse_size(a->max, "--max");
    a->bench.comm.timeout = Millis(static_cast<int64_t>(a->timeout_s * 1000));
    const int rank = static_cast<int>(env_int("RANK", -1));
    const int world = static_cast<int>(env_int("WORLD_SIZE", -1));
    auto address = env_get("PTRAIN_COORDINATOR");
    auto token = env_get("PTRAIN_TOKEN");
    if (rank < 0 || world < 1 || !address || !token)
      throw ConfigError(
          "bench comm-worker: RANK, WORLD_SIZE, PTRAIN_COORDINATOR and PTRAIN_TOKEN "
          "must be set",
          "run `ptrain bench comm`, which starts the workers");
    auto store = std::make_shared<rendezvous::GrpcStore>(*address, *token);
    auto rows = comm::run_comm_bench(rank, world, store, a->bench);
    if (rank == 0) {
      fmt::print("{}", comm::format_bench_table(a->bench, world, rows));
      std::fflush(stdout);
    }
    return 0;
  };
}

}  // namespace

PTRAIN_BENCH({"comm", "Collectives: nccl-tests-style sweep vs plain Gloo", false, 10,
              setup_bench_comm})
PTRAIN_BENCH({"comm-worker", "internal: one rank of `bench comm`", true, 90,
              setup_bench_comm_worker})

}  // namespace ptrain::cli
