// This test binary re-executed with extra environment entries, to serve something (a
// coordinator, a parameter server) in a process of its own: the served side runs before main
// when it sees its variable, prints one line (its port or address) and stops when its stdin
// closes. Measuring that process (peak_rss_bytes) shows what an attack cost the server, not the
// attacking client.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace ptrain::testing {

// Peak resident set (VmHWM) of `pid` in bytes; -1 when it cannot be read.
inline int64_t peak_rss_bytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}

class ServedSelf {
 public:
  // Starts /proc/self/exe with our environment plus `env` ("KEY=VALUE") and reads its first line.
  explicit ServedSelf(std::vector<std::string> env) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0) return;
    if (::pipe2(out, O_CLOEXEC) != 0) {
      ::close(in[0]);
      ::close(in[1]);
      return;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    std::vector<char*> envp;
    for (char** e = environ; *e; ++e) envp.push_back(*e);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    char self[] = "/proc/self/exe";
    char* argv[] = {self, nullptr};
    if (posix_spawn(&pid_, self, &fa, nullptr, argv, envp.data()) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    ::close(in[0]);
    ::close(out[1]);
    stdin_ = in[1];
    if (FILE* f = ::fdopen(out[0], "r")) {
      char buf[256] = {};
      if (std::fgets(buf, sizeof buf, f)) first_line_ = buf;
      while (!first_line_.empty() && first_line_.back() == '\n') first_line_.pop_back();
      std::fclose(f);
    } else {
      ::close(out[0]);
    }
  }
  ~ServedSelf() {
    if (stdin_ >= 0) ::close(stdin_);
    if (pid_ <= 0) return;
    // It stops when its stdin closes; one stuck for 20 s is killed.
    for (int i = 0; i < 200; ++i) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  ServedSelf(const ServedSelf&) = delete;
  ServedSelf& operator=(const ServedSelf&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& first_line() const { return first_line_; }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  std::string first_line_;
};

}  // namespace ptrain::testing
