// `ptrain run` with data_mode: async end to end (real binary, real processes): the launcher
// starts the parameter servers next to the workers, the job trains and ends, and a parameter
// server or a worker that dies stops the job with an error that names it.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "ptrain/core/time.h"

namespace ptrain {
namespace {

namespace fs = std::filesystem;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ptrain-async-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A job of 2 async workers and `servers` servers; `tag` marks its processes' environment.
std::string write_spec(const std::string& dir, int steps, int servers, const std::string& tag,
                       const std::string& slow = "") {
  std::string path = dir + "/job.yaml";
  std::ofstream out(path);
  out << "name: async\n"
      << "nodes: {procs_per_node: 2, device: cpu, threads_per_proc: 1}\n"
      << "parallel: {data: 2, data_mode: async, servers: " << servers << ", staleness: 2}\n"
      << "model: {type: gpt, layers: 2, heads: 2, dim: 32, seq_len: 16, vocab: 64}\n"
      << "data: {type: synthetic, batch_size: 8}\n"
      << "train: {steps: " << steps << ", log_every: 1, optimizer: {type: adamw, lr: 3.0e-3}}\n"
      << "fault_tolerance: {hang_timeout_s: 20, term_grace_s: 2}\n"
      << "logging: {dir: " << dir << "/runs, console: rank0}\n"
      << "env: {ASYNC_TEST_TAG: " << tag;
  if (!slow.empty()) out << ", PTRAIN_TEST_SLOW_RANK: '" << slow << "'";
  out << "}\n";
  return path;
}

// Runs `ptrain run spec`; returns the exit code, output in `out`.
int run_ptrain(const std::string& spec, const std::string& log, std::string* out) {
  std::string cmd = std::string(PTRAIN_BINARY) + " run " + spec + " >" + log + " 2>&1";
  int st = std::system(cmd.c_str());
  *out = read_file(log);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// The pid of our process whose environment holds both entries, or -1.
pid_t find_process(const std::string& a, const std::string& b) {
  DIR* proc = ::opendir("/proc");
  pid_t found = -1;
  while (struct dirent* e = proc ? ::readdir(proc) : nullptr) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::string env = read_file("/proc/" + std::to_string(pid) + "/environ");
    std::string ea = std::string("\0", 1) + a + std::string("\0", 1);
    std::string eb = std::string("\0", 1) + b + std::string("\0", 1);
    env = std::string("\0", 1) + env;
    if (env.find(ea) != std::string::npos && env.find(eb) != std::string::npos) {
      found = pid;
      break;
    }
  }
  if (proc) ::closedir(proc);
  return found;
}

// The metrics lines written so far under dir/runs/*/metrics.jsonl.
int metrics_lines(const std::string& dir) {
  std::error_code ec;
  int n = 0;
  for (const auto& run : fs::directory_iterator(dir + "/runs", ec)) {
    std::string m = read_file(run.path().string() + "/metrics.jsonl");
    for (char c : m) n += c == '\n';
  }
  return n;
}

std::string run_folder(const std::string& dir) {
  std::error_code ec;
  for (const auto& run : fs::directory_iterator(dir + "/runs", ec)) return run.path().string();
  return "";
}

TEST(AsyncRun, TrainsWithTwoServersAndEnds) {
  TempDir dir;
  std::string out;
  int code = run_ptrain(write_spec(dir.path(), 20, 2, "ok"), dir.path() + "/out.txt", &out);
  ASSERT_EQ(code, 0) << out;
  std::string run = run_folder(dir.path());
  for (int i = 0; i < 2; ++i) {
    std::string log = read_file(run + "/server-" + std::to_string(i) + ".log");
    EXPECT_NE(log.find("done,"), std::string::npos) << log;
  }
  std::string metrics = read_file(run + "/metrics.jsonl");
  EXPECT_NE(metrics.find("\"staleness_max\""), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\"server_updates_per_s\""), std::string::npos) << metrics;
}

// Starts a long job, kills the process marked by `who` once training runs, returns the output.
int run_and_kill(const std::string& dir, const std::string& tag, const std::string& who,
                 std::string* out) {
  std::string spec = write_spec(dir, 5000, 1, tag, "1:20");
  int code = -1;
  std::thread job([&] { code = run_ptrain(spec, dir + "/out.txt", out); });
  Deadline deadline(Millis(60000));
  pid_t pid = -1;
  while (!deadline.expired() && (pid < 0 || metrics_lines(dir) < 3)) {
    ::usleep(20000);
    if (pid < 0) pid = find_process("ASYNC_TEST_TAG=" + tag, who);
  }
  if (pid > 0) ::kill(pid, SIGKILL);
  job.join();
  return pid > 0 ? code : -1;
}

TEST(AsyncRun, DeadParameterServerStopsTheJobNamingIt) {
  TempDir dir;
  std::string out;
  int code = run_and_kill(dir.path(), "ps", "PTRAIN_SERVER_INDEX=0", &out);
  ASSERT_NE(code, -1) << "the server never started: " << out;
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("parameter server 0"), std::string::npos) << out;
}

TEST(AsyncRun, DeadWorkerStopsTheJob) {
  TempDir dir;
  std::string out;
  int code = run_and_kill(dir.path(), "worker", "RANK=1", &out);
  ASSERT_NE(code, -1) << "the worker never started: " << out;
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("rank 1"), std::string::npos) << out;
  EXPECT_LT(metrics_lines(dir.path()), 5000);
}

}  // namespace
}  // namespace ptrain
