// ChildProcess: one spawned program in its own process group, tied to our life (PDEATHSIG),
// with its stdout/stderr piped back and an explicitly built environment. Never leaves a zombie.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "ptrain/core/error.h"
#include "ptrain/core/time.h"

namespace ptrain::launch {

// How a child ended: a normal exit with a code, or a signal.
struct ExitStatus {
  int code = 0;    // valid when signal == 0
  int signal = 0;  // the terminating signal, 0 for a normal exit

  bool ok() const { return signal == 0 && code == 0; }
  // Shell convention: the exit code, or 128+N for signal N.
  int shell_code() const { return signal ? 128 + signal : code; }
  // "exit code 3" or "signal SIGKILL (9)".
  std::string describe() const;
  static ExitStatus from_wait_status(int status);
};

// "SIGKILL" for 9; "signal 64" for names we do not know.
std::string signal_name(int sig);

struct ProcessOptions {
  std::vector<std::string> argv;  // argv[0] is looked up in the PATH of `env` (or ours)
  std::vector<std::string> env;   // "KEY=VALUE" entries: the child's whole environment
  std::string cwd;                // empty = ours
  bool pipe_output = true;        // false: the child shares our stdout/stderr
  bool pipe_input = false;        // true: stdin_fd() writes to the child's stdin (else /dev/null)
  bool new_process_group = true;  // setpgid(0, 0): signal_group() reaches its children too
  bool die_with_parent = true;    // PR_SET_PDEATHSIG(SIGKILL)
  int umask = -1;                 // >= 0: the child's umask, set before exec
};

// This program's own path (/proc/self/exe): the ptrain binary that workers and agents run.
std::string this_executable();

// Thrown by ChildProcess::spawn when exec fails (the child never ran the program).
// exit_code() follows the shell: 127 when the command is not found, 126 when not executable.
class SpawnError : public IoError {
 public:
  SpawnError(const std::string& what, int err) : IoError(what), errno_(err) {}
  int error_number() const { return errno_; }
  int exit_code() const override { return errno_ == ENOENT ? 127 : 126; }

 private:
  int errno_;
};

class ChildProcess {
 public:
  // fork/exec; returns once the program runs (exec succeeded) or throws SpawnError naming it.
  static ChildProcess spawn(const ProcessOptions& options);

  ChildProcess() = default;
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // A child still running is killed (SIGKILL to its group) and reaped.
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0 && !status_; }
  // Read ends of the pipes (non-blocking, close-on-exec); -1 when not piped or closed.
  int stdout_fd() const { return out_fd_; }
  int stderr_fd() const { return err_fd_; }
  // Write end of the stdin pipe (blocking, close-on-exec); -1 when not piped or closed.
  int stdin_fd() const { return in_fd_; }
  void close_stdin();
  void close_stdout();
  void close_stderr();

  // Sends sig to the child's process group (or the child alone when it has none).
  // No-op once the child was reaped.
  void signal_group(int sig);
  // Reaps without blocking; returns the status once the child has ended.
  std::optional<ExitStatus> try_wait();
  // Waits up to timeout; nullopt when it is still running then.
  std::optional<ExitStatus> wait(Millis timeout);
  // The status once reaped.
  const std::optional<ExitStatus>& status() const { return status_; }

 private:
  void release();
  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  int in_fd_ = -1;
  bool own_group_ = false;
  std::optional<ExitStatus> status_;
};

// The absolute path of `command` searched in `path` (a PATH value); empty when not found.
std::string find_in_path(const std::string& command, const std::string& path);

}  // namespace ptrain::launch
