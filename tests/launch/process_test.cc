// ChildProcess: spawning, pipes, exit statuses, signals, exec failures and cleanup.
#include "ptrain/launch/process.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <string>

using namespace ptrain;
using namespace ptrain::launch;

namespace {

ProcessOptions sh(const std::string& script) {
  ProcessOptions o;
  o.argv = {"/bin/sh", "-c", script};
  o.env = {"PATH=/usr/bin:/bin", "GREETING=hello"};
  return o;
}

// Reads fd until EOF, bounded by a deadline.
std::string read_all(int fd, Millis timeout = Millis(5000)) {
  std::string out;
  Deadline deadline(timeout);
  char buf[4096];
  while (!deadline.expired()) {
    struct pollfd p {
      fd, POLLIN, 0
    };
    if (::poll(&p, 1, 100) <= 0) continue;
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n > 0) out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

bool alive(pid_t pid) {
  return ::kill(pid, 0) == 0;
}

}  // namespace

TEST(ChildProcess, PipesStdoutAndStderrSeparately) {
  auto child = ChildProcess::spawn(sh("echo out; echo err >&2"));
  EXPECT_EQ(read_all(child.stdout_fd()), "out\n");
  EXPECT_EQ(read_all(child.stderr_fd()), "err\n");
  auto st = child.wait(Millis(5000));
  ASSERT_TRUE(st);
  EXPECT_TRUE(st->ok());
}

TEST(ChildProcess, GetsExactlyTheGivenEnvironment) {
  auto child = ChildProcess::spawn(sh("env | sort"));
  std::string out = read_all(child.stdout_fd());
  EXPECT_NE(out.find("GREETING=hello\n"), std::string::npos) << out;
  EXPECT_EQ(out.find("HOME="), std::string::npos) << out;
  child.wait(Millis(5000));
}

TEST(ChildProcess, ReportsExitCode) {
  auto child = ChildProcess::spawn(sh("exit 7"));
  auto st = child.wait(Millis(5000));
  ASSERT_TRUE(st);
  EXPECT_EQ(st->code, 7);
  EXPECT_EQ(st->shell_code(), 7);
  EXPECT_EQ(st->describe(), "exit code 7");
}

TEST(ChildProcess, ReportsSignalAs128PlusN) {
  auto child = ChildProcess::spawn(sh("kill -KILL $$"));
  auto st = child.wait(Millis(5000));
  ASSERT_TRUE(st);
  EXPECT_EQ(st->signal, SIGKILL);
  EXPECT_EQ(st->shell_code(), 137);
  EXPECT_EQ(st->describe(), "signal SIGKILL (9)");
}

TEST(ChildProcess, CommandNotFoundIs127AndNamed) {
  ProcessOptions o;
  o.argv = {"ptrain-no-such-command"};
  o.env = {"PATH=/usr/bin:/bin"};
  try {
    ChildProcess::spawn(o);
    FAIL() << "expected SpawnError";
  } catch (const SpawnError& e) {
    EXPECT_EQ(e.exit_code(), 127);
    EXPECT_NE(std::string(e.what()).find("ptrain-no-such-command"), std::string::npos);
  }
}

TEST(ChildProcess, ExecFailureComesBackThroughTheErrorPipe) {
  ProcessOptions o;
  o.argv = {"/proc/self/status"};  // exists, not executable
  try {
    ChildProcess::spawn(o);
    FAIL() << "expected SpawnError";
  } catch (const SpawnError& e) {
    EXPECT_EQ(e.exit_code(), 126);
    EXPECT_NE(std::string(e.what()).find("/proc/self/status"), std::string::npos);
  }
}

TEST(ChildProcess, RunsInItsOwnProcessGroup) {
  auto child = ChildProcess::spawn(sh("sleep 30"));
  EXPECT_EQ(::getpgid(child.pid()), child.pid());
  child.signal_group(SIGTERM);
  auto st = child.wait(Millis(5000));
  ASSERT_TRUE(st);
  EXPECT_EQ(st->signal, SIGTERM);
}

TEST(ChildProcess, SignalGroupReachesGrandchildren) {
  auto child = ChildProcess::spawn(sh("sleep 30 & echo $!; wait"));
  std::string line;
  char c;
  Deadline d(Millis(5000));
  while (!d.expired() && line.find('\n') == std::string::npos) {
    struct pollfd p {
      child.stdout_fd(), POLLIN, 0
    };
    if (::poll(&p, 1, 100) > 0 && ::read(child.stdout_fd(), &c, 1) == 1) line += c;
  }
  pid_t grandchild = std::stoi(line);
  ASSERT_TRUE(alive(grandchild));
  child.signal_group(SIGKILL);
  ASSERT_TRUE(child.wait(Millis(5000)));
  // The grandchild is reparented and reaped by init; wait until it is gone.
  Deadline gone(Millis(5000));
  while (alive(grandchild) && !gone.expired()) ::usleep(2000);
  EXPECT_FALSE(alive(grandchild));
}

TEST(ChildProcess, WaitTimesOutWhileRunning) {
  auto child = ChildProcess::spawn(sh("sleep 30"));
  EXPECT_FALSE(child.wait(Millis(50)));
  EXPECT_TRUE(child.running());
}

TEST(ChildProcess, DestructorKillsAndReapsARunningChild) {
  pid_t pid;
  {
    auto child = ChildProcess::spawn(sh("sleep 30"));
    pid = child.pid();
  }
  // Reaped: not even a zombie is left.
  EXPECT_FALSE(alive(pid));
}

TEST(ChildProcess, DoesNotInheritOurDescriptors) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);  // deliberately without O_CLOEXEC
  auto child = ChildProcess::spawn(sh("ls /proc/self/fd"));
  std::string out = read_all(child.stdout_fd());
  child.wait(Millis(5000));
  ::close(fds[0]);
  ::close(fds[1]);
  // 0, 1, 2 and the fd ls opens for the listing; none of ours.
  EXPECT_EQ(out.find(std::to_string(fds[1]) + "\n"), std::string::npos) << out;
}
