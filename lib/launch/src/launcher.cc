#include "ptrain/launch/launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>

#include "ptrain/core/error.h"
#include "ptrain/core/log.h"
#include "ptrain/launch/agent.h"
#include "ptrain/launch/console.h"
#include "ptrain/launch/job_tls.h"
#include "ptrain/launch/mlflow.h"
#include "ptrain/launch/restart.h"
#include "ptrain/launch/run_dir.h"
#include "ptrain/launch/summary.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/token.h"
#include "ptrain/spec/spec.h"

namespace ptrain::launch {

namespace {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  return buf;
}

// A port nobody listens on now, for a PyTorch program's own store (MASTER_PORT). The program
// binds it later, as with torchrun; ptrain's own coordinator never probes (it binds port 0).
int free_port(const std::string& addr) {
  int fd = PTRAIN_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_in sa {};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;
  if (::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1)
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    socklen_t len = sizeof sa;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0) port = ntohs(sa.sin_port);
  }
  ::close(fd);
  if (port == 0) throw IoError(fmt::format("cannot find a free port on {} for MASTER_PORT", addr));
  return port;
}

std::vector<std::string> tail_lines(const std::string& path, size_t count) {
  std::ifstream in(path);
  std::deque<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(line);
    if (lines.size() > count) lines.pop_front();
  }
  return {lines.begin(), lines.end()};
}

std::string join_ints(const std::vector<int>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out;
}

// Blocks the signals the event loop reads through a signalfd; every thread started afterwards
// (the coordinator's) inherits the mask, so the signals reach only the signalfd.
class SignalGuard {
 public:
  SignalGuard() {
    sigemptyset(&set_);
    for (int sig : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) sigaddset(&set_, sig);
    PTRAIN_CHECK(::pthread_sigmask(SIG_BLOCK, &set_, &old_) == 0);
    fd_ = PTRAIN_SYSCALL(::signalfd(-1, &set_, SFD_CLOEXEC | SFD_NONBLOCK));
    old_pipe_ = ::signal(SIGPIPE, SIG_IGN);
  }
  ~SignalGuard() {
    // Consume what is pending so that unblocking does not deliver it with default actions.
    struct signalfd_siginfo si;
    while (::read(fd_, &si, sizeof si) == sizeof si) {
    }
    ::close(fd_);
    ::signal(SIGPIPE, old_pipe_);
    ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  int fd() const { return fd_; }

 private:
  sigset_t set_, old_;
  int fd_ = -1;
  sighandler_t old_pipe_;
};

struct Failure {
  int rank = -1;
  pid_t pid = -1;
  int exit_code = 1;
  std::string what;  // "exited with exit code 3", "hung: ...", ...
  int64_t unix_us = 0;
  double mono_s = 0;
};

}  // namespace

class Launcher::Impl {
 public:
  Impl(spec::JobSpec spec, LauncherOptions options)
      : spec_(std::move(spec)), opt_(std::move(options)) {}
  JobResult run();

 private:
  struct Event {
    enum Kind { Report, Hang, Leave, Warning, Log } kind;
    int rank = -1;
    int code = 0;
    std::string text;
    rendezvous::LogLineView line;
  };
  void push(Event e) {
    {
      std::lock_guard lock(mu_);
      events_.push_back(std::move(e));
    }
    uint64_t one = 1;
    ssize_t n = ::write(event_fd_, &one, sizeof one);
    (void)n;
  }
  void handle_events();
  void handle_exits(const std::vector<WorkerExit>& exits);
  void fail(Failure f);
  void interrupt(int sig);
  void begin_abort(const std::string& reason);
  void print_root_cause();
  std::string root_cause_block(const Failure& f);
  // fault_tolerance.max_restarts: once the failed round's workers are all gone, starts the next
  // round (new rendezvous round, every worker respawned). False when no restart is due.
  bool restart_if_due(std::optional<Clock::time_point>& rendezvous_check);
  void write_summary(const JobResult& r);
  double elapsed() const { return mono_seconds() - start_s_; }

  spec::JobSpec spec_;
  LauncherOptions opt_;
  std::string node_;
  double start_s_ = 0;
  std::optional<RunDir> dir_;
  std::optional<Clock::time_point> restart_at_;  // the next round starts then (backoff)
  mode_t user_umask_ = 022;  // the umask before logging.mode applied (command: programs get it)
  std::unique_ptr<Console> console_;
  std::unique_ptr<JobTls> tls_;  // before coordinator_: it outlives the coordinator
  std::unique_ptr<rendezvous::Coordinator> coordinator_;
  std::unique_ptr<Agent> agent_;
  int event_fd_ = -1;
  std::mutex mu_;
  std::vector<Event> events_;

  int world_size_ = 1;
  std::vector<int> exit_codes_;
  std::optional<Failure> failure_;
  std::vector<int> missing_at_failure_;
  bool joined_at_failure_ = false;
  int interrupt_sig_ = 0;
  std::optional<Clock::time_point> kill_at_;
  RestartLog restarts_;
  bool no_restart_ = false;  // a signal while stopping: the job ends, whatever max_restarts says
};

Launcher::Launcher(spec::JobSpec spec, LauncherOptions options)
    : impl_(std::make_unique<Impl>(std::move(spec), std::move(options))) {}
Launcher::~Launcher() = default;
JobResult Launcher::run() {
  return impl_->run();
}

void Launcher::Impl::begin_abort(const std::string& reason) {
  if (coordinator_) coordinator_->abort(reason);
  agent_->signal_all(SIGTERM);
  agent_->signal_all(SIGCONT);  // a stopped worker must run to act on SIGTERM
  auto grace = Millis(static_cast<int64_t>(spec_.fault_tolerance.term_grace_s * 1000));
  if (!kill_at_) kill_at_ = Clock::now() + grace;
}

void Launcher::Impl::fail(Failure f) {
  if (failure_ && !interrupt_sig_ && replaces_root_cause(failure_->exit_code, f.exit_code)) {
    // The first failure was only its echo (a peer's "connection reset"): this one is the cause.
    dir_->log(fmt::format("rank {} {}: the root cause (rank {} only saw it)", f.rank, f.what,
                          failure_->rank));
    f.unix_us = failure_->unix_us;
    f.mono_s = failure_->mono_s;
    failure_ = std::move(f);
    return;
  }
  if (failure_ || interrupt_sig_) return;
  dir_->log(fmt::format("rank {} {}: aborting the job", f.rank, f.what));
  if (coordinator_) {
    missing_at_failure_ = coordinator_->missing_ranks();
    joined_at_failure_ = !coordinator_->joined_ranks().empty();
  }
  std::string reason = fmt::format("rank {} {}", f.rank, f.what);
  f.unix_us = unix_micros();
  f.mono_s = mono_seconds();
  failure_ = std::move(f);
  begin_abort(reason);
}

void Launcher::Impl::interrupt(int sig) {
  if (interrupt_sig_ || failure_) {
    // A second signal while stopping: no more grace.
    dir_->log(fmt::format("{} again: killing every worker", signal_name(sig)));
    no_restart_ = true;
    agent_->signal_all(SIGKILL);
    return;
  }
  interrupt_sig_ = sig;
  dir_->log(fmt::format("received {}: stopping every worker", signal_name(sig)));
  console_->message(fmt::format("ptrain: {} received, stopping {} worker(s)", signal_name(sig),
                                agent_->running()),
                    true);
  if (coordinator_) coordinator_->abort(fmt::format("the launcher received {}", signal_name(sig)));
  agent_->signal_all(sig);  // forwarded as is: a Python program sees KeyboardInterrupt on SIGINT
  agent_->signal_all(SIGCONT);
  auto grace = Millis(static_cast<int64_t>(spec_.fault_tolerance.term_grace_s * 1000));
  kill_at_ = Clock::now() + grace;
}

void Launcher::Impl::handle_exits(const std::vector<WorkerExit>& exits) {
  for (const auto& e : exits) {
    if (e.rank >= 0 && e.rank < world_size_) exit_codes_[e.rank] = e.status.shell_code();
    if (!e.spawn_error.empty()) {
      dir_->log(fmt::format("rank {} could not start: {}", e.rank, e.spawn_error));
      fail({e.rank, -1, e.status.shell_code(), "could not start: " + e.spawn_error});
      continue;
    }
    dir_->log(fmt::format("rank {} (pid {}) ended: {}", e.rank, e.pid, e.status.describe()));
    if (!e.status.ok()) {
      std::string what = e.status.signal ? fmt::format("was killed by {}", e.status.describe())
                                         : fmt::format("exited with {}", e.status.describe());
      fail({e.rank, e.pid, e.status.shell_code(), what});
    }
  }
}

void Launcher::Impl::handle_events() {
  std::vector<Event> events;
  {
    std::lock_guard lock(mu_);
    events.swap(events_);
  }
  for (auto& e : events) {
    switch (e.kind) {
      case Event::Report:
        if (auto step = console_->report(e.text, elapsed()))
          if (auto s = restarts_.on_report(mono_seconds(), *step))
            dir_->log(
                fmt::format("round {}: training again at step {}, {:.3f} s after the "
                            "failure",
                            restarts_.round(), *step, *s));
        break;
      case Event::Hang:
        fail({e.rank, agent_->pid_of(e.rank), kExitTimeout, "hung: " + e.text});
        break;
      case Event::Leave:
        dir_->log(fmt::format("rank {} left with exit code {}{}{}", e.rank, e.code,
                              e.text.empty() ? "" : ": ", e.text));
        break;
      case Event::Warning:
        dir_->log("warning: " + e.text);
        console_->message("ptrain: warning: " + e.text, true);
        break;
      case Event::Log:
        console_->worker_line(e.line.rank, e.line.node, e.line.is_stderr, e.line.text);
        break;
    }
  }
}

std::string Launcher::Impl::root_cause_block(const Failure& f) {
  std::string name = f.rank >= world_size_ ? fmt::format("parameter server {} (rank {})",
                                                         f.rank - world_size_, f.rank)
                                           : fmt::format("rank {}", f.rank);
  std::string who = f.pid > 0 ? fmt::format("{} on {} (pid {})", name, node_, f.pid)
                              : fmt::format("{} on {}", name, node_);
  std::string block = fmt::format("ptrain: job failed: {} {}\n", who, f.what);
  // Named whenever the rendezvous was in use (built-in workers, or a command running them).
  if (!missing_at_failure_.empty() && (!spec_.launcher_only() || joined_at_failure_))
    block += fmt::format("ptrain: rendezvous incomplete: rank(s) {} on {} never joined\n",
                         join_ints(missing_at_failure_), node_);
  if (f.rank >= 0) {
    std::string log = agent_->log_path(f.rank);
    auto lines = tail_lines(log, 20);
    if (lines.empty()) {
      block += fmt::format("ptrain: {} is empty\n", log);
    } else {
      block += fmt::format("ptrain: last {} line(s) of {}:\n", lines.size(), log);
      for (const auto& l : lines) block += "  " + l + "\n";
    }
  }
  block += fmt::format("ptrain: exit code {}; run folder {}", f.exit_code, dir_->path());
  return block;
}

void Launcher::Impl::print_root_cause() {
  std::string block = restarts_.history_block() + root_cause_block(*failure_);
  console_->message(block, true);
  dir_->log(block);
}

bool Launcher::Impl::restart_if_due(std::optional<Clock::time_point>& rendezvous_check) {
  if (!failure_ || interrupt_sig_ || no_restart_ || !restarts_.can_restart()) {
    restart_at_.reset();
    return false;
  }
  // Every worker of the failed round is gone: keep its last lines, then start the next round.
  agent_->drain(Millis(1000));
  handle_events();
  const Failure& f = *failure_;
  FailureRecord rec;
  rec.rank = f.rank;
  rec.exit_code = f.exit_code;
  rec.reason = f.what;
  rec.unix_us = f.unix_us;
  rec.mono_s = f.mono_s;
  rec.last_step = console_->progress().step;
  rec.block = root_cause_block(f);
  if (auto why_not = restarts_.refuse_restart(rec)) {
    no_restart_ = true;
    dir_->log("not restarting: " + *why_not);
    console_->message("ptrain: not restarting: " + *why_not, true);
    return false;
  }
  // Back off before the next round; the event loop keeps answering signals meanwhile.
  if (!restart_at_) {
    const double backoff = restarts_.backoff_s();
    restart_at_ = Clock::now() + Millis(static_cast<int64_t>(backoff * 1000));
    if (backoff > 0) dir_->log(fmt::format("next round in {:.0f} s (backoff)", backoff));
  }
  if (Clock::now() < *restart_at_) return true;
  restart_at_.reset();
  restarts_.add_failure(std::move(rec));
  int round = restarts_.begin_next_round();
  dir_->add_scalar("restarts", round, console_->progress().step);
  std::string why = fmt::format("rank {} {}", f.rank, f.what);
  dir_->log(
      fmt::format("restart {}/{}: {}; starting rendezvous round {} ({:.3f} s after the "
                  "failure)",
                  round, restarts_.max_restarts(), why, round, mono_seconds() - f.mono_s));
  console_->message(fmt::format("ptrain: {}; restarting every worker (restart {}/{})", why, round,
                                restarts_.max_restarts()),
                    true);
  failure_.reset();
  missing_at_failure_.clear();
  joined_at_failure_ = false;
  kill_at_.reset();
  exit_codes_.assign(static_cast<size_t>(world_size_), INT_MIN);
  coordinator_->begin_round(round);
  agent_->spawn_all(round);
  for (int r = 0; r < world_size_; ++r)
    if (agent_->pid_of(r) > 0)
      dir_->log(fmt::format("rank {} started on {}: pid {} (round {})", r, node_, agent_->pid_of(r),
                            round));
  if (rendezvous_check)
    rendezvous_check = Clock::now() +
                       Millis(static_cast<int64_t>(spec_.rendezvous.timeout_s * 1000)) +
                       Millis(2000);
  handle_exits(agent_->reap());
  return true;
}

void Launcher::Impl::write_summary(const JobResult& r) {
  const auto& p = console_->progress();
  Json s = {{"status", r.status},
            {"exit_code", r.exit_code},
            {"name", spec_.name},
            {"world_size", world_size_},
            {"exit_codes", exit_codes_json(exit_codes_)}};
  if (failure_) {
    s["failed_rank"] = failure_->rank;
    s["reason"] = failure_->what;
  }
  if (interrupt_sig_) s["reason"] = "interrupted by " + signal_name(interrupt_sig_);
  add_progress(s, console_->has_progress() ? p.step : 0,
               spec_.launcher_only() ? 0 : spec_.train.steps, p, elapsed());
  s["restarts"] = restarts_.restarts_json();
  dir_->write_file("summary.json", dump_line(s) + "\n");
  dir_->finish_mlflow(r.exit_code == 0);
}

JobResult Launcher::Impl::run() {
  start_s_ = mono_seconds();
  SignalGuard signals;  // before any thread starts
  node_ = host_name();
  const bool builtin = !spec_.launcher_only();
  world_size_ = spec_.world_size();  // `run` starts every rank on this machine
  PTRAIN_CHECK(world_size_ >= 1, "world size {}", world_size_);
  exit_codes_.assign(static_cast<size_t>(world_size_), INT_MIN);
  restarts_ = RestartLog(spec_.fault_tolerance.max_restarts);

  bool tty = opt_.tty >= 0 ? opt_.tty != 0 : ::isatty(::fileno(opt_.out)) != 0;
  console_ = std::make_unique<Console>(opt_.out, tty, parse_console_mode(spec_.logging.console),
                                       spec_.train.log_every);
  if (builtin) console_->set_total_steps(spec_.train.steps);

  // logging.mode: private from here on every folder is 0700 and every file 0600.
  user_umask_ = apply_file_mode(spec_.logging.mode);
  // `ptrain run --resume`: the same folder, so the trainer finds its checkpoints and the logs,
  // metrics and launcher.log continue where they ended.
  dir_ = opt_.resume_dir.empty() ? RunDir::create(spec_.logging.dir, spec_.name)
                                 : RunDir::open(opt_.resume_dir);
  if (!opt_.resume_dir.empty()) dir_->log("resuming this run (ptrain run --resume)");
  // env: values stay out of the copies (the workers get them in their environment).
  std::string spec_yaml = opt_.spec_yaml.empty() ? spec::to_yaml_redacted(spec_) : opt_.spec_yaml;
  dir_->write_file("job.yaml", spec_yaml);
  if (spec_.logging.tensorboard && !spec_.launcher_only()) dir_->enable_tensorboard();
  if (!spec_.logging.mlflow.empty() && !spec_.launcher_only())
    dir_->enable_mlflow(spec_.logging.mlflow, spec_.name,
                        dir_->path().substr(dir_->path().find_last_of('/') + 1),
                        flatten_json(spec::to_json(spec::redact_env(spec_))));
  std::string run_id = dir_->path().substr(dir_->path().find_last_of('/') + 1);
  dir_->log(
      fmt::format("job {}: {} worker(s) on {}, run id {}", spec_.name, world_size_, node_, run_id));

  event_fd_ = PTRAIN_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  // On every way out: stop the workers and the coordinator (whose threads push events) before
  // the event descriptor closes.
  struct Teardown {
    Impl& self;
    ~Teardown() {
      self.agent_.reset();
      self.coordinator_.reset();
      ::close(self.event_fd_);
      self.event_fd_ = -1;
    }
  } teardown{*this};

  rendezvous::CoordinatorOptions co;
  co.bind = spec_.rendezvous.bind.empty() ? "127.0.0.1" : spec_.rendezvous.bind;
  co.port = spec_.rendezvous.port;
  co.token = rendezvous::make_token();
  co.world_size = world_size_;
  // data_mode: async: the parameter servers join as ranks world_size .. world_size + servers - 1.
  const int servers = builtin && spec_.parallel.data_mode == "async" ? spec_.parallel.servers : 0;
  co.extra_roles = servers;
  if (builtin) {
    co.mesh = {spec_.parallel.data, spec_.parallel.tensor, spec_.parallel.pipeline};
  } else {
    co.mesh = {world_size_, 1, 1};
  }
  co.run_id = run_id;
  co.run_dir = dir_->path();
  co.spec_yaml = spec_yaml;
  co.join_timeout = Millis(static_cast<int64_t>(spec_.rendezvous.timeout_s * 1000));
  co.heartbeat_timeout = Millis(static_cast<int64_t>(spec_.fault_tolerance.hang_timeout_s * 1000));
  rendezvous::CoordinatorEvents ev;
  RunDir* dir = &*dir_;
  ev.on_report = [this, dir](int rank, const std::string& json) {
    dir->append_metrics(json);
    push({Event::Report, rank, 0, json, {}});
  };
  ev.on_log = [this](const rendezvous::LogLineView& l) { push({Event::Log, l.rank, 0, {}, l}); };
  ev.on_hang = [this](int rank, const std::string& why) { push({Event::Hang, rank, 0, why, {}}); };
  ev.on_leave = [this](int rank, int code, const std::string& reason) {
    push({Event::Leave, rank, code, reason, {}});
  };
  ev.on_warning = [this](const std::string& w) { push({Event::Warning, -1, 0, w, {}}); };
  tls_ = std::make_unique<JobTls>(spec_.rendezvous.tls, std::vector<std::string>{co.bind});
  if (tls_->enabled()) dir_->log("rendezvous.tls: mutual TLS on every gRPC channel");
  coordinator_ = std::make_unique<rendezvous::Coordinator>(co, ev);
  try {
    coordinator_->start();
  } catch (const Error& e) {
    dir_->log(std::string("cannot start the coordinator: ") + e.what());
    JobResult r{e.exit_code(), "failed", dir_->path()};
    write_summary(r);
    throw;
  }
  dir_->log("coordinator listening on " + coordinator_->address());

  AgentOptions ao;
  ao.node = node_;
  ao.watchdog_program = opt_.worker_program.empty() ? this_executable() : opt_.worker_program;
  ao.local_world_size = world_size_;
  ao.world_size = world_size_;
  if (builtin) {
    std::string exe = opt_.worker_program.empty() ? this_executable() : opt_.worker_program;
    ao.argv = {exe, "--log-level", spec_.logging.level, "worker"};
    ao.servers = servers;
    ao.server_argv = {exe, "--log-level", spec_.logging.level, "param-server"};
  } else {
    ao.argv = spec_.command;
    ao.child_umask = static_cast<int>(user_umask_);  // the user's program, the user's umask
  }
  ao.coordinator = coordinator_->address();
  ao.token = co.token;
  ao.run_dir = dir_->path();
  ao.run_id = run_id;
  ao.master_addr = "127.0.0.1";
  ao.master_port = free_port(ao.master_addr);
  ao.max_restarts = spec_.fault_tolerance.max_restarts;
  ao.threads_per_proc = spec_.nodes.threads_per_proc;
  ao.cuda = spec_.nodes.device == "cuda";
  ao.extra_env = spec_.env;
  tls_->install(dir_->path(), ao.extra_env);
  agent_ = std::make_unique<Agent>(ao);
  agent_->on_line = [this](const WorkerLine& l) {
    console_->worker_line(l.rank, "", l.is_stderr, l.text);
  };
  for (int r = 0; r < world_size_ + servers; ++r) coordinator_->expect(r, node_);

  console_->message(fmt::format("ptrain: {} worker(s), run folder {}", world_size_, dir_->path()));
  agent_->spawn_all(0);
  for (int r = 0; r < world_size_; ++r)
    if (agent_->pid_of(r) > 0)
      dir_->log(fmt::format("rank {} started on {}: pid {}", r, node_, agent_->pid_of(r)));

  // A rank that never joins is named even if no worker reports it (built-in workers only).
  std::optional<Clock::time_point> rendezvous_check;
  if (builtin) rendezvous_check = Clock::now() + co.join_timeout + Millis(2000);

  handle_exits(agent_->reap());
  while (agent_->running() > 0 || restart_if_due(rendezvous_check)) {
    std::vector<struct pollfd> fds{{signals.fd(), POLLIN, 0}, {event_fd_, POLLIN, 0}};
    agent_->add_poll_fds(fds);
    auto now = Clock::now();
    Millis wait(tty ? 250 : 1000);
    for (const auto& t : {kill_at_, rendezvous_check, restart_at_})
      if (t) wait = std::min(wait, std::chrono::duration_cast<Millis>(*t - now) + Millis(1));
    wait = std::max(wait, Millis(0));
    int n = ::poll(fds.data(), fds.size(), static_cast<int>(wait.count()));
    if (n < 0 && errno != EINTR) PTRAIN_SYSCALL(n);
    if (n > 0 && (fds[0].revents & POLLIN)) {
      struct signalfd_siginfo si;
      while (::read(signals.fd(), &si, sizeof si) == sizeof si)
        if (si.ssi_signo != SIGCHLD) interrupt(static_cast<int>(si.ssi_signo));
    }
    if (n > 0 && (fds[1].revents & POLLIN)) {
      uint64_t count;
      ssize_t r = ::read(event_fd_, &count, sizeof count);
      (void)r;
    }
    if (n > 0) agent_->handle_ready(fds);
    handle_events();
    handle_exits(agent_->reap());
    now = Clock::now();
    if (kill_at_ && now >= *kill_at_) {
      dir_->log(fmt::format("{} worker(s) still running after term_grace_s={}: SIGKILL",
                            agent_->running(), spec_.fault_tolerance.term_grace_s));
      agent_->signal_all(SIGKILL);
      kill_at_.reset();
    }
    if (rendezvous_check && now >= *rendezvous_check) {
      rendezvous_check.reset();
      auto missing = coordinator_->missing_ranks();
      if (!missing.empty())
        fail({missing.front(), agent_->pid_of(missing.front()), kExitTimeout,
              fmt::format("never joined the rendezvous within rendezvous.timeout_s={} (missing: "
                          "rank(s) {})",
                          spec_.rendezvous.timeout_s, join_ints(missing))});
    }
    console_->tick(elapsed());
  }
  agent_->drain(Millis(1000));
  handle_events();
  console_->finish();

  JobResult result;
  result.run_dir = dir_->path();
  if (failure_) {
    result.exit_code = failure_->exit_code;
    result.status = "failed";
    print_root_cause();
  } else if (interrupt_sig_) {
    result.exit_code = 128 + interrupt_sig_;
    result.status = "interrupted";
  } else {
    result.exit_code = 0;
    result.status = "succeeded";
  }
  dir_->log(fmt::format("job {}: exit code {}", result.status, result.exit_code));
  write_summary(result);
  return result;
}

}  // namespace ptrain::launch
