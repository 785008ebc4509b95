#include "ptrain/launch/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <thread>
#include <utility>

namespace ptrain::launch {

namespace {

// What the child reports through the error pipe when it cannot exec.
struct ChildFailure {
  int stage;  // 0 exec, 1 chdir, 2 setup
  int err;
};

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

std::string lookup_env(const std::vector<std::string>& env, const std::string& key) {
  for (const auto& kv : env)
    if (kv.size() > key.size() && kv.compare(0, key.size(), key) == 0 && kv[key.size()] == '=')
      return kv.substr(key.size() + 1);
  return {};
}

// Only async-signal-safe calls from here until exec: the parent may have other threads.
[[noreturn]] void child_main(const ProcessOptions& o, pid_t parent, const char* path,
                             char* const* argv, char* const* envp, int in_r, int out_w, int err_w,
                             int report_w) {
  auto fail = [&](int stage) {
    ChildFailure f{stage, errno};
    ssize_t n = ::write(report_w, &f, sizeof f);
    (void)n;
    ::_exit(127);
  };
  if (o.new_process_group && ::setpgid(0, 0) != 0) fail(2);
  if (o.die_with_parent) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(2);
    // The parent may have died between fork and prctl: then nobody would kill us.
    if (::getppid() != parent) ::_exit(137);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);

  int input = in_r >= 0 ? in_r : ::open("/dev/null", O_RDONLY);
  if (input < 0 || ::dup2(input, 0) < 0) fail(2);
  if (out_w >= 0 && ::dup2(out_w, 1) < 0) fail(2);
  if (err_w >= 0 && ::dup2(err_w, 2) < 0) fail(2);
  // Every other descriptor closes: the error pipe on exec (it is CLOEXEC), the rest now.
  int lo = 3;
  for (int hi : {report_w}) {
    if (hi > lo && ::syscall(SYS_close_range, lo, hi - 1, 0) != 0)
      for (int fd = lo; fd < hi; ++fd) ::close(fd);
    lo = hi + 1;
  }
  if (::syscall(SYS_close_range, lo, ~0U, 0) != 0) {
    struct rlimit rl;
    int max_fd = ::getrlimit(RLIMIT_NOFILE, &rl) == 0 ? static_cast<int>(rl.rlim_cur) : 65536;
    for (int fd = lo; fd < max_fd && fd < 1 << 20; ++fd) ::close(fd);
  }
  if (!o.cwd.empty() && ::chdir(o.cwd.c_str()) != 0) fail(1);
  if (o.umask >= 0) ::umask(static_cast<mode_t>(o.umask));
  ::execve(path, argv, envp);
  fail(0);
  ::_exit(127);
}

}  // namespace

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  if (abbrev) return std::string("SIG") + abbrev;
  return fmt::format("signal {}", sig);
}

std::string ExitStatus::describe() const {
  if (signal) return fmt::format("signal {} ({})", signal_name(signal), signal);
  return fmt::format("exit code {}", code);
}

ExitStatus ExitStatus::from_wait_status(int status) {
  ExitStatus s;
  if (WIFSIGNALED(status)) {
    s.signal = WTERMSIG(status);
  } else if (WIFEXITED(status)) {
    s.code = WEXITSTATUS(status);
  }
  return s;
}

std::string find_in_path(const std::string& command, const std::string& path) {
  if (command.find('/') != std::string::npos) return command;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string candidate = end > start ? path.substr(start, end - start) : std::string(".");
    candidate.append(1, '/').append(command);
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return {};
}

ChildProcess ChildProcess::spawn(const ProcessOptions& o) {
  PTRAIN_CHECK(!o.argv.empty(), "spawn needs a command");
  std::string search_path = lookup_env(o.env, "PATH");
  if (search_path.empty()) search_path = ::getenv("PATH") ? ::getenv("PATH") : "/usr/bin:/bin";
  std::string path = find_in_path(o.argv[0], search_path);
  if (path.empty())
    throw SpawnError(
        fmt::format("command not found: '{}' (searched PATH={})", o.argv[0], search_path), ENOENT);

  // Everything the child needs is prepared before fork: it may not allocate afterwards.
  std::vector<char*> argv, envp;
  for (const auto& a : o.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : o.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, report[2] = {-1, -1};
  auto close_all = [&] {
    for (int* p : {in, out, err, report}) close_fd(p[0]), close_fd(p[1]);
  };
  try {
    if (o.pipe_input) PTRAIN_SYSCALL(::pipe2(in, O_CLOEXEC));
    if (o.pipe_output) {
      PTRAIN_SYSCALL(::pipe2(out, O_CLOEXEC));
      PTRAIN_SYSCALL(::pipe2(err, O_CLOEXEC));
    }
    PTRAIN_SYSCALL(::pipe2(report, O_CLOEXEC));
  } catch (...) {
    close_all();
    throw;
  }
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    close_all();
    throw IoError(fmt::format("cannot start '{}': fork failed: {}", o.argv[0], std::strerror(e)));
  }
  if (pid == 0)
    child_main(o, parent, path.c_str(), argv.data(), envp.data(), in[0], out[1], err[1], report[1]);

  // Also set the group from this side so that signal_group() works before the child ran.
  if (o.new_process_group) ::setpgid(pid, pid);
  close_fd(in[0]);
  close_fd(out[1]);
  close_fd(err[1]);
  close_fd(report[1]);
  ChildFailure failure{};
  ssize_t n;
  do {
    n = ::read(report[0], &failure, sizeof failure);
  } while (n < 0 && errno == EINTR);
  close_fd(report[0]);

  ChildProcess child;
  child.pid_ = pid;
  child.out_fd_ = out[0];
  child.err_fd_ = err[0];
  child.in_fd_ = in[1];
  child.own_group_ = o.new_process_group;
  for (int fd : {child.out_fd_, child.err_fd_})
    if (fd >= 0) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  if (n > 0) {
    child.wait(Millis(5000));  // the child has already called _exit(127)
    const char* what = failure.stage == 1 ? "cannot change directory to" : "cannot execute";
    std::string target = failure.stage == 1 ? o.cwd : path;
    throw SpawnError(fmt::format("{} '{}': {}", what, target, std::strerror(failure.err)),
                     failure.stage == 0 ? failure.err : EACCES);
  }
  return child;
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept {
  *this = std::move(other);
}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    release();
    pid_ = std::exchange(other.pid_, -1);
    out_fd_ = std::exchange(other.out_fd_, -1);
    err_fd_ = std::exchange(other.err_fd_, -1);
    in_fd_ = std::exchange(other.in_fd_, -1);
    own_group_ = other.own_group_;
    status_ = std::exchange(other.status_, std::nullopt);
  }
  return *this;
}

ChildProcess::~ChildProcess() {
  release();
}

void ChildProcess::release() {
  if (pid_ > 0 && !status_) {
    signal_group(SIGKILL);
    while (!status_) {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, 0);
      if (r == pid_) {
        status_ = ExitStatus::from_wait_status(st);
      } else if (r < 0 && errno != EINTR) {
        break;  // already reaped elsewhere (e.g. a SIGCHLD reaper)
      }
    }
  }
  close_fd(out_fd_);
  close_fd(err_fd_);
  close_fd(in_fd_);
  pid_ = -1;
  status_.reset();
}

void ChildProcess::close_stdout() {
  close_fd(out_fd_);
}
void ChildProcess::close_stderr() {
  close_fd(err_fd_);
}
void ChildProcess::close_stdin() {
  close_fd(in_fd_);
}

void ChildProcess::signal_group(int sig) {
  if (pid_ <= 0 || status_) return;
  if (own_group_ && ::kill(-pid_, sig) == 0) return;
  ::kill(pid_, sig);
}

std::optional<ExitStatus> ChildProcess::try_wait() {
  if (status_ || pid_ <= 0) return status_;
  int st = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &st, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    status_ = ExitStatus::from_wait_status(st);
    // Whatever the program left running in its group goes with it. The group id cannot be
    // reused while a member is alive, so this reaches only our descendants.
    if (own_group_) ::kill(-pid_, SIGKILL);
  }
  return status_;
}

std::optional<ExitStatus> ChildProcess::wait(Millis timeout) {
  if (auto s = try_wait()) return s;
  Deadline deadline(timeout);
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
  Millis backoff(1);
  while (true) {
    if (auto s = try_wait()) {
      if (pidfd >= 0) ::close(pidfd);
      return s;
    }
    if (deadline.expired()) break;
    if (pidfd >= 0) {
      struct pollfd p {
        pidfd, POLLIN, 0
      };
      ::poll(&p, 1, static_cast<int>(std::min<int64_t>(deadline.remaining().count() + 1, 1000)));
    } else {
      std::this_thread::sleep_for(std::min(backoff, deadline.remaining() + Millis(1)));
      backoff = std::min(backoff * 2, Millis(50));
    }
  }
  if (pidfd >= 0) ::close(pidfd);
  return std::nullopt;
}

std::string this_executable() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw IoError("cannot find the ptrain executable (/proc/self/exe)");
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace ptrain::launch
