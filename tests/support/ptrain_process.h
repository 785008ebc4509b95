// Test harness for end-to-end tests with the real binary: temp folders, the `ptrain` process
// with its output collected (bounded waits), and /proc scans for leftover processes.
#pragma once

#include <dirent.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "ptrain/core/time.h"
#include "ptrain/launch/process.h"

extern char** environ;

namespace ptrain::testing {

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

inline size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1)) ++n;
  return n;
}

// This process's environment without PTRAIN_TEST_* (fault injection stays opt-in per child).
inline std::vector<std::string> our_env() {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e)
    if (std::string(*e).rfind("PTRAIN_TEST_", 0) != 0) env.emplace_back(*e);
  return env;
}

// A folder under /tmp, removed with everything in it at the end of the test.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "ptrain-test") {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::string cmdline(pid_t pid) {
  std::string c = read_file(fmt::format("/proc/{}/cmdline", pid));
  for (auto& ch : c)
    if (ch == '\0') ch = ' ';
  return c;
}

// Entries of a NUL-separated /proc/<pid>/environ.
inline std::vector<std::string> environ_of(pid_t pid) {
  std::string env = read_file(fmt::format("/proc/{}/environ", pid));
  std::vector<std::string> out;
  for (size_t start = 0; start < env.size();) {
    size_t end = env.find('\0', start);
    if (end == std::string::npos) end = env.size();
    out.push_back(env.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// Every process (but this one) for which `match(pid)` holds.
inline std::vector<pid_t> find_processes(const std::function<bool(pid_t)>& match) {
  std::vector<pid_t> out;
  DIR* proc = ::opendir("/proc");
  if (!proc) return out;
  while (struct dirent* e = ::readdir(proc)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid > 0 && pid != ::getpid() && match(pid)) out.push_back(pid);
  }
  ::closedir(proc);
  return out;
}

// Processes whose environment puts them in a run under `dir` (PTRAIN_RUN_DIR=dir...) and, when
// `extra` is given, also holds that exact entry (e.g. "RANK=1").
inline std::vector<pid_t> processes_with_run_dir(const std::string& dir,
                                                 const std::string& extra = "") {
  const std::string tag = "PTRAIN_RUN_DIR=" + dir;
  return find_processes([&](pid_t pid) {
    bool match = false, extra_ok = extra.empty();
    for (const auto& kv : environ_of(pid)) {
      if (kv.compare(0, tag.size(), tag) == 0) match = true;
      if (!extra.empty() && kv == extra) extra_ok = true;
    }
    return match && extra_ok;
  });
}

// Polls `scan` until it finds nothing or `timeout` passes; returns what is still there.
inline std::vector<pid_t> wait_all_gone(const std::function<std::vector<pid_t>()>& scan,
                                        Millis timeout) {
  Deadline d(timeout);
  auto left = scan();
  while (!left.empty() && !d.expired()) {
    ::usleep(10000);
    left = scan();
  }
  return left;
}

// A running `ptrain ARGS...` (environment: ours plus `extra_env`) with its output collected.
// Every wait is bounded; `finish` kills the process group when its bound passes.
// Default bounds of PtrainProcess's waits.
struct PtrainBounds {
  Millis wait_for{20000};
  Millis finish{60000};
};

class PtrainProcess {
 public:
  using Bounds = PtrainBounds;

  explicit PtrainProcess(std::vector<std::string> args, std::vector<std::string> extra_env = {},
                         Bounds bounds = Bounds())
      : bounds_(bounds) {
    launch::ProcessOptions o;
    o.argv = {PTRAIN_BINARY};
    o.argv.insert(o.argv.end(), args.begin(), args.end());
    o.env = our_env();
    o.env.insert(o.env.end(), extra_env.begin(), extra_env.end());
    proc_ = launch::ChildProcess::spawn(o);
  }

  // Reads what is available for up to `timeout`.
  void pump(Millis timeout) {
    std::vector<struct pollfd> fds;
    if (proc_.stdout_fd() >= 0) fds.push_back({proc_.stdout_fd(), POLLIN, 0});
    if (proc_.stderr_fd() >= 0) fds.push_back({proc_.stderr_fd(), POLLIN, 0});
    if (fds.empty()) {
      ::usleep(static_cast<useconds_t>(timeout.count()) * 1000);
      return;
    }
    if (::poll(fds.data(), fds.size(), static_cast<int>(timeout.count())) <= 0) return;
    for (auto& p : fds) {
      if (!p.revents) continue;
      char buf[4096];
      ssize_t n = ::read(p.fd, buf, sizeof buf);
      bool is_out = p.fd == proc_.stdout_fd();
      if (n > 0)
        (is_out ? out : err).append(buf, static_cast<size_t>(n));
      else if (n == 0)
        is_out ? proc_.close_stdout() : proc_.close_stderr();
    }
  }

  template <class Pred>
  bool wait_for(Pred pred) {
    return wait_for(pred, bounds_.wait_for);
  }
  template <class Pred>
  bool wait_for(Pred pred, Millis timeout) {
    Deadline d(timeout);
    while (!pred()) {
      if (d.expired()) return false;
      pump(Millis(20));
    }
    return true;
  }

  // Waits for the exit and returns the shell-style code; -1 (after SIGKILL to the group) when
  // it takes longer than the bound.
  int finish() { return finish(bounds_.finish); }
  int finish(Millis timeout) {
    Deadline d(timeout);
    while (!d.expired()) {
      pump(Millis(20));
      if (auto st = proc_.try_wait()) {
        while (proc_.stdout_fd() >= 0 || proc_.stderr_fd() >= 0) pump(Millis(100));
        return st->shell_code();
      }
    }
    proc_.signal_group(SIGKILL);
    err += "\n[test] ptrain did not finish in time\n";
    return -1;
  }

  launch::ChildProcess& proc() { return proc_; }
  std::string out, err;

 private:
  Bounds bounds_;
  launch::ChildProcess proc_;
};

}  // namespace ptrain::testing
