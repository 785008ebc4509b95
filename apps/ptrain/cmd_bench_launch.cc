// `ptrain bench launch --procs N [--repeats R]`: wall time from start to exit of a real
// `ptrain run` of a `train.steps: 0` job (join, barrier, exit) with N workers, median of R.
// A `command: [true]` job of the same size is measured beside it: the cost of process spawning
// and supervision alone.
#include <fmt/format.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/launch/process.h"

extern char** environ;

namespace ptrain::cli {
namespace {

struct BenchLaunchArgs {
  int procs = 2;
  int repeats = 5;
  double timeout_s = 120;
  std::string tls = "auto";
};

std::string self_exe() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw IoError("cannot find the ptrain executable (/proc/self/exe)");
  return std::string(buf, static_cast<size_t>(n));
}

// Runs `ptrain run spec` once; returns its wall time in seconds. Throws when it fails.
double run_once(const std::string& exe, const std::string& spec, Millis timeout) {
  launch::ProcessOptions o;
  o.argv = {exe, "--log-level", "warn", "run", spec};
  for (char** e = environ; *e; ++e) o.env.emplace_back(*e);
  double start = mono_seconds();
  auto child = launch::ChildProcess::spawn(o);
  std::string err;
  Deadline deadline(timeout);
  while (child.stdout_fd() >= 0 || child.stderr_fd() >= 0) {
    if (deadline.expired()) break;
    std::vector<struct pollfd> fds;
    if (child.stdout_fd() >= 0) fds.push_back({child.stdout_fd(), POLLIN, 0});
    if (child.stderr_fd() >= 0) fds.push_back({child.stderr_fd(), POLLIN, 0});
    if (::poll(fds.data(), fds.size(), 100) <= 0) continue;
    for (auto& p : fds) {
      if (!p.revents) continue;
      char buf[4096];
      ssize_t n = ::read(p.fd, buf, sizeof buf);
      if (n > 0 && p.fd == child.stderr_fd()) err.append(buf, static_cast<size_t>(n));
      if (n == 0) p.fd == child.stdout_fd() ? child.close_stdout() : child.close_stderr();
    }
  }
  auto st = child.wait(deadline.remaining());
  double elapsed = mono_seconds() - start;
  if (!st)
    throw TimeoutError(
        fmt::format("`ptrain run {}` took longer than {} ms", spec, timeout.count()));
  if (!st->ok())
    throw RemoteError(fmt::format("`ptrain run {}` failed ({}): {}", spec, st->describe(), err));
  return elapsed;
}

Action setup_bench_launch(CLI::App& sub) {
  auto args = std::make_shared<BenchLaunchArgs>();
  sub.add_option("--procs", args->procs, "Workers per job")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  sub.add_option("--repeats", args->repeats, "Runs per workload (median reported)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  sub.add_option("--timeout", args->timeout_s, "Seconds one run may take")->capture_default_str();
  sub.add_option("--tls", args->tls, "rendezvous.tls of the jobs")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
  return [args] {
    namespace fs = std::filesystem;
    std::string exe = self_exe();
    char tmpl[] = "/tmp/ptrain-bench-launch-XXXXXX";
    if (!::mkdtemp(tmpl)) throw IoError("cannot create a temporary folder under /tmp");
    std::string dir = tmpl;
    struct Cleanup {
      std::string dir;
      ~Cleanup() {
        std::error_code ec;
        fs::remove_all(dir, ec);
      }
    } cleanup{dir};
    std::string common = fmt::format(
        "logging: {{dir: {}/runs, console: none}}\nnodes: {{procs_per_node: {}, device: cpu}}\n"
        "parallel: {{data: {}}}\ndata: {{batch_size: {}}}\nrendezvous: {{tls: {}}}\n",
        dir, args->procs, args->procs, args->procs, args->tls);
    struct Workload {
      std::string name, spec;
    };
    std::vector<Workload> workloads = {
        {"command: [true]", "name: bench-true\ncommand: [true]\n" + common},
        {"ptrain worker, train.steps: 0", "name: bench-steps0\ntrain: {steps: 0}\n" + common},
    };
    Millis timeout(static_cast<int64_t>(args->timeout_s * 1000));
    fmt::print(
        "# ptrain bench launch: {} worker(s), median of {} (wall time of `ptrain run`, "
        "start to exit), rendezvous.tls {}\n",
        args->procs, args->repeats, args->tls);
    fmt::print(
        "# reference: torchrun (PyTorch 1.13) 6.1 s for 2 no-op gloo workers; target "
        "<= 0.2 s for 2, <= 1 s for 32\n");
    fmt::print("{:<32} {:>6} {:>10} {:>10} {:>10} {:>12}\n", "workload", "procs", "median_s",
               "min_s", "max_s", "vs_torchrun");
    int failures = 0;
    for (const auto& w : workloads) {
      std::string path = fmt::format("{}/{}.yaml", dir, &w == &workloads[0] ? "true" : "steps0");
      std::ofstream(path) << w.spec;
      std::vector<double> times;
      try {
        for (int i = 0; i < args->repeats; ++i) times.push_back(run_once(exe, path, timeout));
      } catch (const Error& e) {
        fmt::print("{:<32} {:>6} failed: {}\n", w.name, args->procs, e.what());
        ++failures;
        continue;
      }
      std::sort(times.begin(), times.end());
      double median = times.size() % 2
                          ? times[times.size() / 2]
                          : (times[times.size() / 2 - 1] + times[times.size() / 2]) / 2;
      fmt::print("{:<32} {:>6} {:>10.3f} {:>10.3f} {:>10.3f} {:>11.1f}x\n", w.name, args->procs,
                 median, times.front(), times.back(), 6.1 / median);
    }
    return failures ? kExitFailure : kExitOk;
  };
}

}  // namespace

PTRAIN_BENCH({"launch", "Wall time of a no-op job with N workers (ptrain run, real processes)",
              false, 40, setup_bench_launch})

}  // namespace ptrain::cli
