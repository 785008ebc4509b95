#include "ptrain/launch/ssh_launcher.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "ptrain/core/error.h"
#include "ptrain/launch/console.h"
#include "ptrain/launch/hosts.h"
#include "ptrain/launch/job_tls.h"
#include "ptrain/launch/mlflow.h"
#include "ptrain/launch/remote_agent.h"
#include "ptrain/launch/restart.h"
#include "ptrain/launch/run_dir.h"
#include "ptrain/launch/summary.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/token.h"
#include "ptrain/spec/spec.h"

extern char** environ;

namespace ptrain::launch {

namespace {

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

Millis seconds_ms(double s) {
  return Millis(static_cast<int64_t>(s * 1000));
}

// One host's ssh session running `ptrain agent`.
struct Session {
  HostPlan plan;
  ChildProcess ssh;
  std::string to_send;  // setup and commands not yet written to the agent's stdin
  std::string out_buf, err_buf;
  std::string last_err;
  std::map<int, pid_t> pids;
  std::set<int> finished;  // ranks whose exit was reported
  bool done = false;       // the agent said "done"
  bool ended = false;      // ssh was reaped
  ExitStatus ssh_status;
};

}  // namespace

class SshLauncher::Impl {
 public:
  Impl(spec::JobSpec spec, SshLaunchOptions options)
      : spec_(std::move(spec)), opt_(std::move(options)) {}
  JobResult run();

 private:
  struct Failure {
    int rank = -1;
    std::string host;
    pid_t pid = -1;
    int exit_code = 1;
    std::string what;
    int64_t unix_us = 0;
    double mono_s = 0;
  };
  struct LogEvent {
    rendezvous::LogLineView line;
    enum Kind { Log, Report, Hang, Warning } kind = Log;
    std::string text;
  };
  void check_hosts(const std::vector<HostPlan>& plan, const std::string& program);
  void push(LogEvent e) {
    {
      std::lock_guard lock(mu_);
      events_.push_back(std::move(e));
    }
    uint64_t one = 1;
    ssize_t n = ::write(event_fd_, &one, sizeof one);
    (void)n;
  }
  void handle_events();
  void send(Session& s, const std::string& data);
  void flush_input(Session& s);
  void read_session(Session& s, bool is_err);
  void on_agent_line(Session& s, const std::string& line);
  void on_session_end(Session& s);
  void fail(Failure f);
  void stop_all(int sig, const std::string& reason);
  void write_rank_line(const rendezvous::LogLineView& l);
  // Starts one ssh session running `ptrain agent` per host, its workers in rendezvous round
  // `round`.
  void start_agents(int round);
  // fault_tolerance.max_restarts: once every agent of the failed round has ended, begins the next
  // rendezvous round and starts every host's agent again. False when no restart is due.
  bool restart_if_due(std::optional<Clock::time_point>& rendezvous_check);
  std::string root_cause_block(const Failure& f);
  void print_root_cause();
  void write_summary(const JobResult& r);
  int running() const {
    int n = 0;
    for (const auto& s : sessions_)
      if (!s->ended) ++n;
    return n;
  }
  std::string host_of(int rank) const {
    for (const auto& s : sessions_)
      if (rank >= s->plan.first_rank && rank < s->plan.first_rank + s->plan.procs)
        return s->plan.host;
    return "?";
  }
  double elapsed() const { return mono_seconds() - start_s_; }

  spec::JobSpec spec_;
  SshLaunchOptions opt_;
  double start_s_ = 0;
  std::optional<RunDir> dir_;
  std::optional<Clock::time_point> restart_at_;  // the next round starts then (backoff)
  bool private_files_ = true;                    // logging.mode: private (the agents apply it too)
  std::unique_ptr<Console> console_;
  std::unique_ptr<JobTls> tls_;  // before coordinator_: it outlives the coordinator
  std::unique_ptr<rendezvous::Coordinator> coordinator_;
  std::vector<std::unique_ptr<Session>> sessions_;
  std::map<int, int> rank_log_fds_;
  int event_fd_ = -1;
  std::mutex mu_;
  std::vector<LogEvent> events_;
  int world_size_ = 1;
  std::vector<int> exit_codes_;
  std::optional<Failure> failure_;
  int interrupt_sig_ = 0;
  std::optional<Clock::time_point> kill_at_, hangup_at_, force_at_;
  RestartLog restarts_;
  bool no_restart_ = false;  // a signal while stopping: the job ends, whatever max_restarts says
  // What start_agents() needs again for each round.
  std::vector<HostPlan> plan_;
  std::string program_, master_addr_, token_, run_id_, agent_yaml_;
};

SshLauncher::SshLauncher(spec::JobSpec spec, SshLaunchOptions options)
    : impl_(std::make_unique<Impl>(std::move(spec), std::move(options))) {}
SshLauncher::~SshLauncher() = default;
JobResult SshLauncher::run() {
  return impl_->run();
}

void SshLauncher::Impl::check_hosts(const std::vector<HostPlan>& plan, const std::string& program) {
  std::vector<std::string> hosts;
  std::vector<int> gpus;
  for (const auto& p : plan) {
    hosts.push_back(p.host);
    gpus.push_back(spec_.nodes.device == "cuda" ? p.procs : 0);
  }
  PreflightOptions po;
  po.remote_ptrain = program;
  po.timeout = opt_.preflight_timeout;
  std::string self = opt_.local_binary.empty() ? this_executable() : opt_.local_binary;
  CommandResult v = run_command({self, "--version"}, "", Millis(10000));
  po.expected_version = v.out;
  auto results = preflight(hosts, opt_.ssh, gpus, po);
  std::string bad;
  int count = 0;
  for (const auto& r : results)
    if (!r.ok) {
      bad += fmt::format("{}host {}: {}", bad.empty() ? "" : "\n", r.host, r.problem);
      ++count;
    }
  if (count)
    throw RemoteError(fmt::format("{} of {} host(s) failed the preflight; nothing was started\n{}",
                                  count, results.size(), bad));
}

void SshLauncher::Impl::send(Session& s, const std::string& data) {
  s.to_send += data;
  flush_input(s);
}

void SshLauncher::Impl::flush_input(Session& s) {
  int fd = s.ssh.stdin_fd();
  if (fd < 0) {
    s.to_send.clear();
    return;
  }
  while (!s.to_send.empty()) {
    ssize_t n = ::write(fd, s.to_send.data(), s.to_send.size());
    if (n > 0) {
      s.to_send.erase(0, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return;
    } else {
      s.ssh.close_stdin();
      s.to_send.clear();
      return;
    }
  }
}

void SshLauncher::Impl::on_agent_line(Session& s, const std::string& line) {
  AgentMessage m = parse_agent_message(line);
  switch (m.kind) {
    case AgentMessage::Kind::Started:
      s.pids[m.rank] = m.pid;
      dir_->log(fmt::format("rank {} started on {}: pid {}", m.rank, s.plan.host, m.pid));
      break;
    case AgentMessage::Kind::Exit: {
      s.finished.insert(m.rank);
      if (m.rank >= 0 && m.rank < world_size_) exit_codes_[m.rank] = m.status.shell_code();
      if (!m.text.empty()) {
        dir_->log(fmt::format("rank {} on {} could not start: {}", m.rank, s.plan.host, m.text));
        fail({m.rank, s.plan.host, -1, m.status.shell_code(), "could not start: " + m.text});
        break;
      }
      dir_->log(fmt::format("rank {} on {} (pid {}) ended: {}", m.rank, s.plan.host, m.pid,
                            m.status.describe()));
      if (!m.status.ok())
        fail({m.rank, s.plan.host, m.pid, m.status.shell_code(),
              m.status.signal ? "was killed by " + m.status.describe()
                              : "exited with " + m.status.describe()});
      break;
    }
    case AgentMessage::Kind::Done:
      s.done = true;
      break;
    case AgentMessage::Kind::Other:
      console_->message(fmt::format("[{}] {}", s.plan.host, line), true);
      dir_->log(fmt::format("{}: {}", s.plan.host, line));
      break;
  }
}

void SshLauncher::Impl::read_session(Session& s, bool is_err) {
  int fd = is_err ? s.ssh.stderr_fd() : s.ssh.stdout_fd();
  if (fd < 0) return;
  std::string& buf = is_err ? s.err_buf : s.out_buf;
  char chunk[65536];
  for (int i = 0; i < 16; ++i) {
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    bool eof = n <= 0;
    if (!eof) buf.append(chunk, static_cast<size_t>(n));
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos || (eof && !buf.empty())) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl == std::string::npos ? buf.size() : nl + 1);
      if (is_err) {
        if (line.empty()) continue;
        s.last_err = line;
        console_->message(fmt::format("[{}] {}", s.plan.host, line), true);
        dir_->log(fmt::format("{}: {}", s.plan.host, line));
      } else {
        on_agent_line(s, line);
      }
    }
    if (eof) {
      is_err ? s.ssh.close_stderr() : s.ssh.close_stdout();
      break;
    }
  }
}

void SshLauncher::Impl::on_session_end(Session& s) {
  s.ended = true;
  read_session(s, false);
  read_session(s, true);
  s.ssh.close_stdin();
  dir_->log(fmt::format("agent on {}: ssh ended with {}", s.plan.host, s.ssh_status.describe()));
  if (s.done) return;
  int rank = s.plan.first_rank;
  for (int r = s.plan.first_rank; r < s.plan.first_rank + s.plan.procs; ++r)
    if (!s.finished.count(r)) {
      rank = r;
      break;
    }
  std::string why = s.last_err.empty() ? "" : ": " + s.last_err;
  fail({rank, s.plan.host, s.pids.count(rank) ? s.pids[rank] : -1, kExitRemote,
        fmt::format("lost its host: the ssh session to {} ended ({}) before the agent finished{}",
                    s.plan.host, s.ssh_status.describe(), why)});
}

void SshLauncher::Impl::stop_all(int sig, const std::string& reason) {
  if (coordinator_) coordinator_->abort(reason);
  for (auto& s : sessions_)
    if (!s->ended) send(*s, agent_signal_command(sig));
  auto now = Clock::now();
  Millis grace = seconds_ms(spec_.fault_tolerance.term_grace_s);
  if (!kill_at_) kill_at_ = now + grace;
  // Agents that do not finish are cut off: closing the ssh session makes them kill their workers.
  if (!hangup_at_) hangup_at_ = now + grace + Millis(5000);
}

void SshLauncher::Impl::fail(Failure f) {
  if (failure_ && !interrupt_sig_ && replaces_root_cause(failure_->exit_code, f.exit_code)) {
    // The first failure was only its echo (a peer's "connection reset"): this one is the cause.
    dir_->log(fmt::format("rank {} on {} {}: the root cause (rank {} only saw it)", f.rank, f.host,
                          f.what, failure_->rank));
    f.unix_us = failure_->unix_us;
    f.mono_s = failure_->mono_s;
    failure_ = std::move(f);
    return;
  }
  if (failure_ || interrupt_sig_) return;
  dir_->log(fmt::format("rank {} on {} {}: aborting the job", f.rank, f.host, f.what));
  std::string reason = fmt::format("rank {} on {} {}", f.rank, f.host, f.what);
  f.unix_us = unix_micros();
  f.mono_s = mono_seconds();
  failure_ = std::move(f);
  stop_all(SIGTERM, reason);
}

void SshLauncher::Impl::write_rank_line(const rendezvous::LogLineView& l) {
  if (l.rank < 0 || l.rank >= world_size_) return;
  auto it = rank_log_fds_.find(l.rank);
  if (it == rank_log_fds_.end()) {
    std::string path = dir_->rank_log(l.rank);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    it = rank_log_fds_.emplace(l.rank, fd).first;
  }
  if (it->second < 0) return;
  std::string line = format_log_line(l.time_us, l.text);
  ssize_t n = ::write(it->second, line.data(), line.size());
  (void)n;
}

void SshLauncher::Impl::handle_events() {
  std::vector<LogEvent> events;
  {
    std::lock_guard lock(mu_);
    events.swap(events_);
  }
  for (auto& e : events) {
    switch (e.kind) {
      case LogEvent::Log:
        write_rank_line(e.line);
        console_->worker_line(e.line.rank, e.line.node, e.line.is_stderr, e.line.text);
        break;
      case LogEvent::Report:
        if (auto step = console_->report(e.text, elapsed()))
          if (auto s = restarts_.on_report(mono_seconds(), *step))
            dir_->log(
                fmt::format("round {}: training again at step {}, {:.3f} s after the "
                            "failure",
                            restarts_.round(), *step, *s));
        break;
      case LogEvent::Hang:
        fail({e.line.rank, host_of(e.line.rank), -1, kExitTimeout, "hung: " + e.text});
        break;
      case LogEvent::Warning:
        dir_->log("warning: " + e.text);
        console_->message("ptrain: warning: " + e.text, true);
        break;
    }
  }
}

std::string SshLauncher::Impl::root_cause_block(const Failure& f) {
  std::string who = f.pid > 0 ? fmt::format("rank {} on host {} (pid {})", f.rank, f.host, f.pid)
                              : fmt::format("rank {} on host {}", f.rank, f.host);
  std::string block = fmt::format("ptrain: job failed: {} {}\n", who, f.what);
  if (f.rank >= 0) {
    std::string log = dir_->rank_log(f.rank);
    auto lines = tail_lines(log, 20);
    if (lines.empty()) {
      block += fmt::format("ptrain: no output from rank {} reached {}\n", f.rank, log);
    } else {
      block += fmt::format("ptrain: last {} line(s) of {}:\n", lines.size(), log);
      for (const auto& l : lines) block += "  " + l + "\n";
    }
    block += fmt::format("ptrain: the full log is on {}: {}/rank-{}.log\n", f.host,
                         agent_dir(dir_->path(), f.host), f.rank);
  }
  block += fmt::format("ptrain: exit code {}; run folder {}", f.exit_code, dir_->path());
  return block;
}

void SshLauncher::Impl::print_root_cause() {
  std::string block = restarts_.history_block() + root_cause_block(*failure_);
  console_->message(block, true);
  dir_->log(block);
}

bool SshLauncher::Impl::restart_if_due(std::optional<Clock::time_point>& rendezvous_check) {
  if (!failure_ || interrupt_sig_ || no_restart_ || !restarts_.can_restart()) {
    restart_at_.reset();
    return false;
  }
  // Every agent of the failed round has ended (its workers with it): start the next round.
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
  std::string why = fmt::format("rank {} on {} {}", f.rank, f.host, f.what);
  dir_->log(
      fmt::format("restart {}/{}: {}; starting rendezvous round {} ({:.3f} s after the "
                  "failure)",
                  round, restarts_.max_restarts(), why, round, mono_seconds() - f.mono_s));
  console_->message(fmt::format("ptrain: {}; restarting every worker on {} host(s) (restart {}/{})",
                                why, plan_.size(), round, restarts_.max_restarts()),
                    true);
  failure_.reset();
  kill_at_.reset();
  hangup_at_.reset();
  force_at_.reset();
  exit_codes_.assign(static_cast<size_t>(world_size_), INT_MIN);
  sessions_.clear();
  coordinator_->begin_round(round);
  start_agents(round);
  if (!spec_.launcher_only())
    rendezvous_check = Clock::now() + seconds_ms(spec_.rendezvous.timeout_s) + Millis(5000);
  return true;
}

void SshLauncher::Impl::write_summary(const JobResult& r) {
  const auto& p = console_->progress();
  Json hosts = Json::array();
  for (const auto& session : sessions_) hosts.push_back(session->plan.host);
  Json s = {{"status", r.status},
            {"exit_code", r.exit_code},
            {"name", spec_.name},
            {"world_size", world_size_},
            {"exit_codes", exit_codes_json(exit_codes_)},
            {"hosts", std::move(hosts)}};
  if (failure_) {
    s["failed_rank"] = failure_->rank;
    s["failed_host"] = failure_->host;
    s["reason"] = failure_->what;
  }
  if (interrupt_sig_) s["reason"] = "interrupted by " + signal_name(interrupt_sig_);
  add_progress(s, console_->has_progress() ? p.step : 0,
               spec_.launcher_only() ? 0 : spec_.train.steps, p, elapsed());
  s["restarts"] = restarts_.restarts_json();
  dir_->write_file("summary.json", dump_line(s) + "\n");
  dir_->finish_mlflow(r.exit_code == 0);
}

void SshLauncher::Impl::start_agents(int round) {
  for (const auto& p : plan_) {
    for (int r = p.first_rank; r < p.first_rank + p.procs; ++r) coordinator_->expect(r, p.host);
    RemoteAgentSetup setup;
    AgentOptions& a = setup.agent;
    a.node = p.host;
    a.node_rank = p.node_rank;
    a.num_nodes = static_cast<int>(plan_.size());
    a.first_rank = p.first_rank;
    a.local_world_size = p.procs;
    a.world_size = world_size_;
    a.argv = !spec_.launcher_only()
                 ? std::vector<std::string>{program_, "--log-level", spec_.logging.level, "worker"}
                 : spec_.command;
    a.coordinator = coordinator_->address();
    a.token = token_;
    a.run_dir = dir_->path();
    a.run_id = run_id_;
    a.master_addr = master_addr_;
    a.master_port = spec_.rendezvous.port > 0 ? spec_.rendezvous.port + 1 : 29500;
    a.max_restarts = spec_.fault_tolerance.max_restarts;
    a.threads_per_proc = spec_.nodes.threads_per_proc;
    a.cuda = spec_.nodes.device == "cuda";
    a.extra_env = spec_.env;
    setup.tls = tls_->identity();  // the agent writes it for its workers
    setup.spec_yaml = agent_yaml_;
    setup.round = round;
    setup.umask = private_files_ ? 077 : -1;
    setup.restore_umask = spec_.launcher_only();
    setup.heartbeat_s = spec_.fault_tolerance.heartbeat_s;
    setup.coordinator_loss_s = 3 * spec_.fault_tolerance.heartbeat_s;
    setup.term_grace_s = spec_.fault_tolerance.term_grace_s;

    auto s = std::make_unique<Session>();
    s->plan = p;
    ProcessOptions po;
    po.argv = ssh_argv(opt_.ssh, p.host,
                       remote_program_word(program_) + " --log-level " +
                           shell_quote(spec_.logging.level) + " agent");
    for (char** e = ::environ; e && *e; ++e) po.env.emplace_back(*e);
    po.pipe_input = true;
    s->ssh = ChildProcess::spawn(po);
    int in = s->ssh.stdin_fd();
    ::fcntl(in, F_SETFL, ::fcntl(in, F_GETFL) | O_NONBLOCK);
    dir_->log(fmt::format("agent on {} (node {}, ranks {}..{}, round {}): ssh pid {}", p.host,
                          p.node_rank, p.first_rank, p.first_rank + p.procs - 1, round,
                          s->ssh.pid()));
    send(*s, encode_agent_setup(setup));
    sessions_.push_back(std::move(s));
  }
}

JobResult SshLauncher::Impl::run() {
  start_s_ = mono_seconds();
  const bool builtin = !spec_.launcher_only();
  world_size_ = spec_.world_size();
  auto plan = plan_hosts(opt_.hosts, spec_.nodes.procs_per_node, world_size_);
  exit_codes_.assign(static_cast<size_t>(world_size_), INT_MIN);
  restarts_ = RestartLog(spec_.fault_tolerance.max_restarts);
  std::string self = opt_.local_binary.empty() ? this_executable() : opt_.local_binary;

  // Preflight and shipping happen before anything else: a bad host stops the job here.
  std::string program = spec_.nodes.remote_ptrain.empty() ? self : spec_.nodes.remote_ptrain;
  if (spec_.nodes.ship_binary) {
    ShipPayload payload = ship_payload(self);
    std::vector<std::string> errors(plan.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < plan.size(); ++i)
      threads.emplace_back([&, i] {
        try {
          ship_to_host(opt_.ssh, plan[i].host, payload, opt_.preflight_timeout * 4);
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      });
    for (auto& t : threads) t.join();
    std::string bad;
    for (const auto& e : errors)
      if (!e.empty()) bad += (bad.empty() ? "" : "\n") + e;
    if (!bad.empty()) throw RemoteError("cannot ship ptrain; nothing was started\n" + bad);
    program = "~/.cache/ptrain/" + payload.sha256 + "/" + payload.run_path;
  }
  check_hosts(plan, program);

  std::string first_target = ssh_target_hostname(opt_.ssh, plan.front().host);
  std::string bind =
      spec_.rendezvous.bind.empty() ? route_source_address(first_target) : spec_.rendezvous.bind;

  // Signals are read through a signalfd; blocked before any thread starts.
  sigset_t set, old;
  sigemptyset(&set);
  for (int sig : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, sig);
  PTRAIN_CHECK(::pthread_sigmask(SIG_BLOCK, &set, &old) == 0);
  int sfd = PTRAIN_SYSCALL(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  auto old_pipe = ::signal(SIGPIPE, SIG_IGN);
  event_fd_ = PTRAIN_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  struct Teardown {
    Impl& self;
    int sfd;
    sigset_t old;
    sighandler_t old_pipe;
    ~Teardown() {
      self.sessions_.clear();  // kills and reaps ssh sessions still running
      self.coordinator_.reset();
      for (auto& [r, fd] : self.rank_log_fds_)
        if (fd >= 0) ::close(fd);
      ::close(self.event_fd_);
      signalfd_siginfo si;
      while (::read(sfd, &si, sizeof si) == sizeof si) {
      }
      ::close(sfd);
      ::signal(SIGPIPE, old_pipe);
      ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }
  } teardown{*this, sfd, old, old_pipe};

  bool tty = opt_.tty >= 0 ? opt_.tty != 0 : ::isatty(::fileno(opt_.out)) != 0;
  console_ = std::make_unique<Console>(opt_.out, tty, parse_console_mode(spec_.logging.console),
                                       spec_.train.log_every);
  if (builtin) console_->set_total_steps(spec_.train.steps);
  std::error_code ec;
  std::string root = std::filesystem::absolute(spec_.logging.dir, ec).string();
  private_files_ = spec_.logging.mode == "private";
  apply_file_mode(spec_.logging.mode);
  dir_ = RunDir::create(root, spec_.name);
  // env: values stay out of the copies (the workers get them in their environment).
  std::string spec_yaml = opt_.spec_yaml.empty() ? spec::to_yaml_redacted(spec_) : opt_.spec_yaml;
  dir_->write_file("job.yaml", spec_yaml);
  if (spec_.logging.tensorboard && !spec_.launcher_only()) dir_->enable_tensorboard();
  if (!spec_.logging.mlflow.empty() && !spec_.launcher_only())
    dir_->enable_mlflow(spec_.logging.mlflow, spec_.name,
                        dir_->path().substr(dir_->path().find_last_of('/') + 1),
                        flatten_json(spec::to_json(spec::redact_env(spec_))));
  std::string run_id = dir_->path().substr(dir_->path().find_last_of('/') + 1);
  dir_->log(fmt::format("job {}: {} worker(s) on {} host(s), run id {}", spec_.name, world_size_,
                        plan.size(), run_id));

  rendezvous::CoordinatorOptions co;
  co.bind = bind;
  co.port = spec_.rendezvous.port;
  co.token = rendezvous::make_token();
  co.world_size = world_size_;
  co.mesh = builtin ? rendezvous::MeshShape{spec_.parallel.data, spec_.parallel.tensor,
                                            spec_.parallel.pipeline}
                    : rendezvous::MeshShape{world_size_, 1, 1};
  co.run_id = run_id;
  co.run_dir = dir_->path();
  co.spec_yaml = spec_yaml;
  co.join_timeout = seconds_ms(spec_.rendezvous.timeout_s);
  co.heartbeat_timeout = seconds_ms(spec_.fault_tolerance.hang_timeout_s);
  rendezvous::CoordinatorEvents ev;
  RunDir* dir = &*dir_;
  ev.on_report = [this, dir](int rank, const std::string& json) {
    dir->append_metrics(json);
    LogEvent e;
    e.kind = LogEvent::Report;
    e.line.rank = rank;
    e.text = json;
    push(std::move(e));
  };
  ev.on_log = [this](const rendezvous::LogLineView& l) { push({l, LogEvent::Log, {}}); };
  ev.on_hang = [this](int rank, const std::string& why) {
    LogEvent e;
    e.kind = LogEvent::Hang;
    e.line.rank = rank;
    e.text = why;
    push(std::move(e));
  };
  ev.on_warning = [this](const std::string& w) {
    LogEvent e;
    e.kind = LogEvent::Warning;
    e.text = w;
    push(std::move(e));
  };
  {
    std::vector<std::string> addresses{bind};
    for (const auto& p : plan) addresses.push_back(ssh_target_hostname(opt_.ssh, p.host));
    tls_ = std::make_unique<JobTls>(spec_.rendezvous.tls, addresses);
    if (tls_->enabled()) dir_->log("rendezvous.tls: mutual TLS on every gRPC channel");
  }
  coordinator_ = std::make_unique<rendezvous::Coordinator>(co, ev);
  coordinator_->start();
  dir_->log("coordinator listening on " + coordinator_->address());

  console_->message(fmt::format("ptrain: {} worker(s) on {} host(s), run folder {}", world_size_,
                                plan.size(), dir_->path()));
  plan_ = plan;
  program_ = program;
  master_addr_ = first_target;
  token_ = co.token;
  run_id_ = run_id;
  agent_yaml_ = spec_yaml;
  if (builtin && spec_.fault_tolerance.max_restarts > 0 && spec_.checkpoint.dir.empty()) {
    // A restarted round resumes from rank 0's checkpoints, but each agent gives its workers its
    // own host folder as RUN_DIR: every rank is pointed at <run>/hosts/<rank 0's host>/checkpoints.
    // Every rank reads the checkpoint itself, so across machines that folder must be on a shared
    // filesystem (true for loopback hosts); otherwise set checkpoint.dir to a shared path.
    spec::JobSpec agent_spec = spec_;
    agent_spec.checkpoint.dir = agent_dir(dir_->path(), plan.front().host) + "/checkpoints";
    agent_yaml_ = spec::to_yaml_redacted(agent_spec);
  }
  start_agents(0);

  std::optional<Clock::time_point> rendezvous_check;
  if (builtin) rendezvous_check = Clock::now() + co.join_timeout + Millis(5000);
  while (running() > 0 || restart_if_due(rendezvous_check)) {
    std::vector<pollfd> fds{{sfd, POLLIN, 0}, {event_fd_, POLLIN, 0}};
    for (auto& s : sessions_) {
      if (s->ssh.stdout_fd() >= 0) fds.push_back({s->ssh.stdout_fd(), POLLIN, 0});
      if (s->ssh.stderr_fd() >= 0) fds.push_back({s->ssh.stderr_fd(), POLLIN, 0});
      if (!s->to_send.empty() && s->ssh.stdin_fd() >= 0)
        fds.push_back({s->ssh.stdin_fd(), POLLOUT, 0});
    }
    auto now = Clock::now();
    Millis wait(tty ? 250 : 1000);
    for (const auto& t : {kill_at_, hangup_at_, force_at_, rendezvous_check, restart_at_})
      if (t) wait = std::min(wait, std::chrono::duration_cast<Millis>(*t - now) + Millis(1));
    wait = std::max(wait, Millis(0));
    int n = ::poll(fds.data(), fds.size(), static_cast<int>(wait.count()));
    if (n < 0 && errno != EINTR) PTRAIN_SYSCALL(n);
    if (n > 0 && (fds[0].revents & POLLIN)) {
      signalfd_siginfo si;
      while (::read(sfd, &si, sizeof si) == sizeof si) {
        int sig = static_cast<int>(si.ssi_signo);
        if (sig == SIGCHLD) continue;
        if (interrupt_sig_ || failure_) {
          dir_->log(fmt::format("{} again: killing every worker", signal_name(sig)));
          no_restart_ = true;
          for (auto& s : sessions_)
            if (!s->ended) send(*s, agent_signal_command(SIGKILL));
          continue;
        }
        interrupt_sig_ = sig;
        dir_->log(fmt::format("received {}: stopping every worker", signal_name(sig)));
        console_->message(fmt::format("ptrain: {} received, stopping the workers on {} host(s)",
                                      signal_name(sig), running()),
                          true);
        stop_all(sig, fmt::format("the launcher received {}", signal_name(sig)));
      }
    }
    if (n > 0 && (fds[1].revents & POLLIN)) {
      uint64_t count;
      ssize_t r = ::read(event_fd_, &count, sizeof count);
      (void)r;
    }
    for (size_t i = 2; n > 0 && i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      for (auto& s : sessions_) {
        if (fds[i].fd == s->ssh.stdout_fd())
          read_session(*s, false);
        else if (fds[i].fd == s->ssh.stderr_fd())
          read_session(*s, true);
        else if (fds[i].fd == s->ssh.stdin_fd())
          flush_input(*s);
      }
    }
    handle_events();
    for (auto& s : sessions_)
      if (!s->ended)
        if (auto st = s->ssh.try_wait()) {
          s->ssh_status = *st;
          on_session_end(*s);
        }
    now = Clock::now();
    if (kill_at_ && now >= *kill_at_) {
      kill_at_.reset();
      dir_->log(fmt::format("workers still running after term_grace_s={}: SIGKILL",
                            spec_.fault_tolerance.term_grace_s));
      for (auto& s : sessions_)
        if (!s->ended) send(*s, agent_signal_command(SIGKILL));
    }
    if (hangup_at_ && now >= *hangup_at_) {
      hangup_at_.reset();
      force_at_ = now + Millis(5000);
      for (auto& s : sessions_)
        if (!s->ended) {
          dir_->log(
              fmt::format("agent on {} did not finish: closing its ssh session", s->plan.host));
          s->ssh.close_stdin();
          s->ssh.signal_group(SIGTERM);
        }
    }
    if (force_at_ && now >= *force_at_) {
      force_at_.reset();
      for (auto& s : sessions_)
        if (!s->ended) s->ssh.signal_group(SIGKILL);
    }
    if (rendezvous_check && now >= *rendezvous_check) {
      rendezvous_check.reset();
      auto missing = coordinator_->missing_ranks();
      if (!missing.empty())
        fail({missing.front(), host_of(missing.front()), -1, kExitTimeout,
              fmt::format("never joined the rendezvous within rendezvous.timeout_s={}",
                          spec_.rendezvous.timeout_s)});
    }
    console_->tick(elapsed());
  }
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
    result.status = "succeeded";
  }
  dir_->log(fmt::format("job {}: exit code {}", result.status, result.exit_code));
  write_summary(result);
  return result;
}

}  // namespace ptrain::launch
