#include "ptrain/launch/group_watchdog.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "ptrain/core/error.h"

namespace ptrain::launch {
namespace {

constexpr int kMaxGroups = 1 << 16;

// The watchdog's whole life. It runs in a fork of a multi-threaded process, so it uses only
// async-signal-safe calls (read, kill, close, _exit) and no allocation: a fixed table of
// groups and a hand-parsed protocol of "+PGID\n", "-PGID\n" and "q\n" (goodbye).
// Returns 0 on the goodbye; -1 after the pipe ended and every group was killed.
int watch_loop(int fd) {
  static pid_t groups[kMaxGroups];
  int n = 0;
  char buf[4096];
  char line[32];
  int len = 0;
  while (true) {
    ssize_t got = ::read(fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;  // the agent is gone
    for (ssize_t i = 0; i < got; ++i) {
      char c = buf[i];
      if (c != '\n') {
        if (len < static_cast<int>(sizeof line) - 1) line[len++] = c;
        continue;
      }
      line[len] = '\0';
      len = 0;
      if (line[0] == 'q') return 0;
      pid_t pgid = 0;
      for (const char* p = line + 1; *p >= '0' && *p <= '9'; ++p) pgid = pgid * 10 + (*p - '0');
      if (pgid <= 1) continue;
      if (line[0] == '+' && n < kMaxGroups) {
        groups[n++] = pgid;
      } else if (line[0] == '-') {
        for (int k = 0; k < n; ++k)
          if (groups[k] == pgid) {
            groups[k] = groups[--n];
            break;
          }
      }
    }
  }
  for (int k = 0; k < n; ++k) ::kill(-groups[k], SIGKILL);
  return -1;
}

}  // namespace

int group_watchdog_main(int fd) {
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGTERM, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  watch_loop(fd);
  return 0;
}

void GroupWatchdog::start(const std::string& program) {
  if (pid_ > 0) return;
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0)
    throw IoError(fmt::format("cannot start the process watchdog: pipe: {}", std::strerror(errno)));
  pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    ::close(p[0]);
    ::close(p[1]);
    throw IoError(fmt::format("cannot start the process watchdog: fork: {}", std::strerror(e)));
  }
  if (pid == 0) {
    // Its own session: a Ctrl-C for the launcher's process group is not for the watchdog.
    ::setsid();
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGINT, SIG_IGN);
    ::signal(SIGTERM, SIG_IGN);
    ::signal(SIGHUP, SIG_IGN);
    // Keep only the read end, as stdin: no other descriptor of the agent's may stay open here.
    if (::dup2(p[0], 0) < 0) ::_exit(1);
    ::syscall(SYS_close_range, 1, ~0U, 0);
    if (!program.empty()) {
      // Its own program, with no environment: it is no process of the run's, and a fresh
      // process has none of the agent's threads or memory.
      const char* argv[] = {program.c_str(), "watchdog", nullptr};
      const char* envp[] = {nullptr};
      ::execve(program.c_str(), const_cast<char* const*>(argv), const_cast<char* const*>(envp));
    }
    watch_loop(0);
    ::_exit(0);
  }
  ::close(p[0]);
  fd_ = p[1];
  pid_ = pid;
}

void GroupWatchdog::send(char op, pid_t pgid) {
  if (fd_ < 0) return;
  char msg[32];
  int n = std::snprintf(msg, sizeof msg, "%c%d\n", op, static_cast<int>(pgid));
  ssize_t w;
  do {
    w = ::write(fd_, msg, static_cast<size_t>(n));
  } while (w < 0 && errno == EINTR);
}

void GroupWatchdog::watch(pid_t pgid) {
  send('+', pgid);
}

void GroupWatchdog::forget(pid_t pgid) {
  send('-', pgid);
}

GroupWatchdog::~GroupWatchdog() {
  if (fd_ < 0) return;
  ssize_t w;
  do {
    w = ::write(fd_, "q\n", 2);
  } while (w < 0 && errno == EINTR);
  ::close(fd_);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace ptrain::launch
