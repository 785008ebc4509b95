#include "ptrain/launch/supervisor.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <deque>
#include <fstream>
#include <map>
#include <utility>

#include "ptrain/core/error.h"
#include "ptrain/launch/summary.h"

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

std::string join_ints(const std::vector<int>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += fmt::format("{}{}", i ? ", " : "", v[i]);
  return out;
}

// "a", "a and b", "a, b and c".
std::string join_words(const std::vector<std::string>& words) {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i)
    out += (i == 0 ? "" : i + 1 == words.size() ? " and " : ", ") + words[i];
  return out;
}

// How often an elastic job asks its group for hosts that can join.
constexpr Millis kJoinPollInterval{1000};

Millis until(Clock::time_point t, Clock::time_point now) {
  return std::chrono::duration_cast<Millis>(t - now) + Millis(1);
}

}  // namespace

// ---- PollWaiter ----

PollWaiter::PollWaiter() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, sig);
  PTRAIN_CHECK(::pthread_sigmask(SIG_BLOCK, &set, &old_mask_) == 0);
  signal_fd_ = PTRAIN_SYSCALL(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  event_fd_ = PTRAIN_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  old_pipe_ = ::signal(SIGPIPE, SIG_IGN);
}

PollWaiter::~PollWaiter() {
  // Consume what is pending so that unblocking does not deliver it with default actions.
  struct signalfd_siginfo si;
  while (::read(signal_fd_, &si, sizeof si) == sizeof si) {
  }
  ::close(signal_fd_);
  ::close(event_fd_);
  ::signal(SIGPIPE, old_pipe_);
  ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
}

std::vector<int> PollWaiter::read_signals() {
  std::vector<int> out;
  struct signalfd_siginfo si;
  while (::read(signal_fd_, &si, sizeof si) == sizeof si)
    if (si.ssi_signo != SIGCHLD) out.push_back(static_cast<int>(si.ssi_signo));
  return out;
}

std::vector<int> PollWaiter::wait(WorkerGroup& group, Millis timeout) {
  std::vector<struct pollfd> none;
  return wait(group, timeout, none);
}

std::vector<int> PollWaiter::wait(WorkerGroup& group, Millis timeout,
                                  std::vector<struct pollfd>& extra) {
  std::vector<struct pollfd> fds{{signal_fd_, POLLIN, 0}, {event_fd_, POLLIN, 0}};
  fds.insert(fds.end(), extra.begin(), extra.end());
  const size_t first = fds.size();
  group.add_poll_fds(fds);
  int n = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, timeout.count())));
  if (n < 0 && errno != EINTR) PTRAIN_SYSCALL(n);
  std::vector<int> sigs;
  if (n > 0 && (fds[0].revents & POLLIN)) sigs = read_signals();
  if (n > 0 && (fds[1].revents & POLLIN)) {
    uint64_t count;
    ssize_t r = ::read(event_fd_, &count, sizeof count);
    (void)r;
  }
  for (size_t i = 0; i < extra.size(); ++i) extra[i].revents = n > 0 ? fds[2 + i].revents : 0;
  if (n > 0) {
    std::vector<struct pollfd> rest(fds.begin() + static_cast<long>(first), fds.end());
    group.handle_ready(rest);
  }
  return sigs;
}

void PollWaiter::wake() {
  uint64_t one = 1;
  ssize_t n = ::write(event_fd_, &one, sizeof one);
  (void)n;
}

// ---- EventQueue ----

void EventQueue::push(SupervisorEvent e) {
  {
    std::lock_guard lock(mu_);
    events_.push_back(std::move(e));
  }
  waiter_.wake();
}

std::vector<SupervisorEvent> EventQueue::take() {
  std::lock_guard lock(mu_);
  std::vector<SupervisorEvent> out;
  out.swap(events_);
  return out;
}

rendezvous::CoordinatorEvents EventQueue::coordinator_events(RunDir& dir) {
  using K = SupervisorEvent::Kind;
  rendezvous::CoordinatorEvents ev;
  RunDir* d = &dir;
  ev.on_report = [this, d](int rank, const std::string& json) {
    d->append_metrics(json);
    push({K::Report, rank, 0, json, {}});
  };
  ev.on_log = [this](const rendezvous::LogLineView& l) { push({K::Log, l.rank, 0, {}, l}); };
  ev.on_hang = [this](int rank, const std::string& why) { push({K::Hang, rank, 0, why, {}}); };
  ev.on_leave = [this](int rank, int code, const std::string& reason) {
    push({K::Leave, rank, code, reason, {}});
  };
  ev.on_warning = [this](const std::string& w) { push({K::Warning, -1, 0, w, {}}); };
  return ev;
}

// ---- CoordinatorControl ----

void CoordinatorControl::abort(const std::string& reason) {
  c_.abort(reason);
}
void CoordinatorControl::begin_round(int round) {
  c_.begin_round(round);
}
std::vector<int> CoordinatorControl::missing_ranks() {
  return c_.missing_ranks();
}
bool CoordinatorControl::any_joined() {
  return !c_.joined_ranks().empty();
}
rendezvous::CoordinatorStats CoordinatorControl::stats() {
  return c_.stats();
}
std::optional<int64_t> CoordinatorControl::last_checkpoint() {
  auto& store = c_.store();
  if (!store.check({kCheckpointSavedKey})) return std::nullopt;
  try {
    return std::stoll(store.get(kCheckpointSavedKey));
  } catch (const std::exception&) {
    return std::nullopt;  // not a number: no checkpoint to go by
  }
}

// ---- Supervisor ----

Supervisor::Supervisor(SupervisorOptions options, WorkerGroup& group, RendezvousControl& rendezvous,
                       Waiter& waiter, EventQueue& events, Console& console, RunDir& dir)
    : opt_(std::move(options)),
      group_(group),
      rdzv_(rendezvous),
      waiter_(waiter),
      events_(events),
      console_(console),
      dir_(dir),
      grace_(opt_.term_grace),
      restarts_(opt_.max_restarts) {}

std::string Supervisor::rank_name(int rank) const {
  if (rank >= opt_.world_size)
    return fmt::format("parameter server {} (rank {})", rank - opt_.world_size, rank);
  return fmt::format("rank {}", rank);
}

void Supervisor::stop_group(int sig, const std::string& reason) {
  rdzv_.abort(reason);
  group_.signal(sig);  // forwarded as is: a Python program sees KeyboardInterrupt on SIGINT
  grace_.arm(waiter_.now());
}

void Supervisor::fail(Failure f) {
  // The round is being stopped to take hosts in (elastic): its workers' ends are that stop's.
  if (regroup_since_ && !interrupt_sig_) return;
  // A SIGKILL before the supervisor sent one is not the stop's own (the OOM killer, a user):
  // it can be the cause that a peer's echo only reported first.
  const bool foreign_kill = f.exit_code == 128 + SIGKILL && !sent_kill_ && failure_ &&
                            is_consequence(failure_->exit_code);
  if (failure_ && !interrupt_sig_ &&
      (replaces_root_cause(failure_->exit_code, f.exit_code) || foreign_kill)) {
    // The first failure was only its echo (a peer's "connection reset"): this one is the cause.
    dir_.log(fmt::format("{} on {} {}: the root cause (rank {} only saw it)", rank_name(f.rank),
                         f.host, f.what, failure_->rank));
    f.unix_us = failure_->unix_us;
    f.mono_s = failure_->mono_s;
    failure_ = std::move(f);
    return;
  }
  if (failure_ || interrupt_sig_) return;
  std::string reason = fmt::format("{} on {} {}", rank_name(f.rank), f.host, f.what);
  dir_.log(reason + ": aborting the job");
  missing_at_failure_ = rdzv_.missing_ranks();
  joined_at_failure_ = rdzv_.any_joined();
  f.unix_us = unix_micros();
  f.mono_s = mono();
  failure_ = std::move(f);
  stop_group(SIGTERM, reason);
}

void Supervisor::interrupt(int sig) {
  if (interrupt_sig_ || failure_) {
    // A second signal while stopping (or a signal during a restart): no more grace, no restart.
    dir_.log(fmt::format("{} again: killing every worker", signal_name(sig)));
    no_restart_ = true;
    restart_at_.reset();
    sent_kill_ = true;
    group_.signal(SIGKILL);
    return;
  }
  interrupt_sig_ = sig;
  dir_.log(fmt::format("received {}: stopping every worker", signal_name(sig)));
  const std::string what = group_.multi_host()
                               ? fmt::format("the workers on {} host(s)", group_.running())
                               : fmt::format("{} worker(s)", group_.running());
  console_.message(fmt::format("ptrain: {} received, stopping {}", signal_name(sig), what), true);
  stop_group(sig, fmt::format("the launcher received {}", signal_name(sig)));
}

void Supervisor::handle_group_events() {
  for (auto& e : group_.poll()) {
    const std::string host = e.host.empty() ? group_.host_of(e.rank) : e.host;
    switch (e.kind) {
      case GroupEvent::Kind::Started:
        dir_.log(fmt::format(
            "{} started on {}: pid {}{}", rank_name(e.rank), host, e.pid,
            restarts_.round() ? fmt::format(" (round {})", restarts_.round()) : std::string()));
        break;
      case GroupEvent::Kind::Exited:
        if (e.rank >= 0 && e.rank < opt_.world_size)
          exit_codes_[static_cast<size_t>(e.rank)] = e.status.shell_code();
        if (!e.text.empty()) {
          dir_.log(fmt::format("{} on {} could not start: {}", rank_name(e.rank), host, e.text));
          fail({e.rank, host, -1, e.status.shell_code(), "could not start: " + e.text});
          break;
        }
        dir_.log(fmt::format("{} on {} (pid {}) ended: {}", rank_name(e.rank), host, e.pid,
                             e.status.describe()));
        if (!e.status.ok())
          fail({e.rank, host, e.pid, e.status.shell_code(),
                e.status.signal ? "was killed by " + e.status.describe()
                                : "exited with " + e.status.describe()});
        break;
      case GroupEvent::Kind::Lost: {
        Failure f{e.rank, host, e.pid, kExitRemote, e.text};
        f.host_lost = true;
        fail(std::move(f));
        break;
      }
      case GroupEvent::Kind::Message:
        console_.message(fmt::format("[{}] {}", host, e.text), true);
        dir_.log(fmt::format("{}: {}", host, e.text));
        break;
      case GroupEvent::Kind::Note:
        dir_.log(fmt::format("{}: {}", host, e.text));
        break;
    }
  }
}

void Supervisor::handle_events() {
  using K = SupervisorEvent::Kind;
  for (auto& e : events_.take()) {
    switch (e.kind) {
      case K::Report:
        if (auto step = console_.report(e.text, elapsed()))
          if (auto s = restarts_.on_report(mono(), *step))
            dir_.log(fmt::format("round {}: training again at step {}, {:.3f} s after the {}",
                                 restarts_.round(), *step, *s,
                                 grew_ ? "previous round was stopped" : "failure"));
        break;
      case K::Hang:
        fail({e.rank, group_.host_of(e.rank), group_.pid_of(e.rank), kExitTimeout,
              "hung: " + e.text});
        break;
      case K::Leave:
        dir_.log(fmt::format("{} left with exit code {}{}{}", rank_name(e.rank), e.code,
                             e.text.empty() ? "" : ": ", e.text));
        break;
      case K::Warning:
        dir_.log("warning: " + e.text);
        console_.message("ptrain: warning: " + e.text, true);
        break;
      case K::Log:
        group_.on_streamed_line(e.line);
        console_.worker_line(e.line.rank, e.line.node, e.line.is_stderr, e.line.text);
        break;
    }
  }
}

std::string Supervisor::missing_text(const std::vector<int>& ranks) const {
  // "rank(s) 1, 2 on a, rank(s) 5 on b", hosts in the order of their first missing rank.
  std::vector<std::string> order;
  std::map<std::string, std::vector<int>> by_host;
  for (int r : ranks) {
    std::string h = group_.host_of(r);
    if (!by_host.count(h)) order.push_back(h);
    by_host[h].push_back(r);
  }
  std::string out;
  for (const auto& h : order)
    out += fmt::format("{}rank(s) {} on {}", out.empty() ? "" : ", ", join_ints(by_host.at(h)), h);
  return out;
}

std::string Supervisor::root_cause_block(const Failure& f) const {
  std::string who = f.pid > 0
                        ? fmt::format("{} on host {} (pid {})", rank_name(f.rank), f.host, f.pid)
                        : fmt::format("{} on host {}", rank_name(f.rank), f.host);
  std::string block = fmt::format("ptrain: job failed: {} {}\n", who, f.what);
  // Named whenever the rendezvous was in use (built-in workers, or a command running them).
  if (!missing_at_failure_.empty() && (opt_.builtin || joined_at_failure_))
    block += fmt::format("ptrain: rendezvous incomplete: {} never joined\n",
                         missing_text(missing_at_failure_));
  if (f.rank >= 0) {
    std::string log = group_.log_path(f.rank);
    auto lines = tail_lines(log, 20);
    if (lines.empty()) {
      block += fmt::format("ptrain: no output from {} reached {}\n", rank_name(f.rank), log);
    } else {
      block += fmt::format("ptrain: last {} line(s) of {}:\n", lines.size(), log);
      for (const auto& l : lines) block += "  " + l + "\n";
    }
    block += group_.log_note(f.rank);
  }
  block += fmt::format("ptrain: exit code {}; run folder {}", f.exit_code, dir_.path());
  return block;
}

void Supervisor::start_round(int round) {
  exit_codes_.assign(static_cast<size_t>(opt_.world_size), INT_MIN);
  group_.start(round);
  if (opt_.builtin) rendezvous_check_ = waiter_.now() + opt_.join_timeout + kJoinCheckGrace;
  handle_group_events();
}

std::vector<std::string> Supervisor::lost_hosts(const Failure& f) const {
  // A host is lost for good when it failed before its ranks joined the round: its session
  // ended (the agent died, ssh could not reach it), or the rendezvous timed out without its
  // ranks (the join check, or a waiting rank's own join timeout: every host with missing ranks).
  // A host that fails after its ranks joined gets the next round to come back.
  std::vector<std::string> out;
  const bool session_ended = f.host_lost && f.exit_code == kExitRemote;
  if (!session_ended && f.exit_code != kExitTimeout) return out;
  for (int r : missing_at_failure_) {
    if (r >= opt_.world_size) continue;
    std::string h = group_.host_of(r);
    if (session_ended && h != f.host) continue;  // only the session that ended
    if (std::find(out.begin(), out.end(), h) == out.end()) out.push_back(h);
  }
  return out;
}

bool Supervisor::try_shrink(const Failure& f) {
  if (!opt_.elastic) return false;
  auto lost = lost_hosts(f);
  if (lost.empty()) return false;
  std::string names;
  for (const auto& h : lost) names += (names.empty() ? "" : ", ") + h;
  ReshapeResult r = group_.shrink(lost);
  if (!r.refused.empty()) {
    dir_.log(fmt::format("not shrinking: host {} lost, but {}", names, r.refused));
    console_.message(fmt::format("ptrain: not shrinking: host {} lost, but {}", names, r.refused),
                     true);
    return false;
  }
  const size_t hosts = group_.hosts().size();
  std::string line = fmt::format("shrinking to {} host{}: host {} lost ({})", hosts,
                                 hosts == 1 ? "" : "s", names, f.what);
  dir_.log(fmt::format("{}; {} worker(s) from the next round", line, r.world_size));
  console_.message("ptrain: " + line, true);
  next_world_size_ = r.world_size;  // the failed round's ranks keep their names until it ends
  return true;
}

void Supervisor::check_joining() {
  if (!opt_.elastic || failure_ || interrupt_sig_ || regroup_since_ || group_.running() == 0)
    return;
  const auto now = waiter_.now();
  if (!next_join_check_ || now >= *next_join_check_) {
    next_join_check_ = now + kJoinPollInterval;
    std::vector<std::string> hosts;
    for (auto& h : group_.joining()) {
      if (std::find(refused_joins_.begin(), refused_joins_.end(), h) != refused_joins_.end())
        continue;
      if (opt_.builtin && !opt_.checkpoints) {
        // Growing restarts from a checkpoint: without one the job would start over.
        const std::string why = fmt::format(
            "host {} can join, but the job writes no checkpoints (checkpoint.every: 0) to resume "
            "from, so it stays out",
            h);
        dir_.log(why);
        console_.message("ptrain: " + why, true);
        refused_joins_.push_back(h);
        continue;
      }
      hosts.push_back(std::move(h));
    }
    if (hosts != joining_) {
      joining_ = std::move(hosts);
      join_after_step_.reset();
      if (!joining_.empty()) {
        join_after_step_ = rdzv_.last_checkpoint().value_or(-1);
        const std::string names = join_words(joining_);
        dir_.log(
            opt_.builtin
                ? fmt::format("host {} can join: re-forming the job at the next checkpoint (the "
                              "newest is {})",
                              names,
                              *join_after_step_ < 0 ? std::string("none yet")
                                                    : fmt::format("step {}", *join_after_step_))
                : fmt::format("host {} can join: re-forming the job now", names));
      }
    }
  }
  if (joining_.empty()) return;
  int64_t step = 0;
  if (opt_.builtin) {
    auto saved = rdzv_.last_checkpoint();
    if (!saved || *saved <= *join_after_step_) return;
    // The last steps' checkpoint: the job is about to end on its own.
    if (opt_.total_steps > 0 && *saved >= opt_.total_steps) return;
    step = *saved;
  }
  regroup_hosts_ = std::exchange(joining_, {});
  join_after_step_.reset();
  regroup_since_ = mono();
  regroup_step_ = step;
  const std::string names = join_words(regroup_hosts_);
  const std::string line =
      opt_.builtin ? fmt::format("host {} joins: re-forming the job from the checkpoint of step {}",
                                 names, step)
                   : fmt::format("host {} joins: re-forming the job", names);
  dir_.log(line + "; stopping this round");
  console_.message("ptrain: " + line, true);
  stop_group(SIGTERM, fmt::format("the job is re-formed to take in host {}", names));
}

bool Supervisor::regroup_if_due() {
  const std::string names = join_words(regroup_hosts_);
  // Every worker finished before the stop reached it: the job is done, nobody joins.
  const bool finished =
      std::all_of(exit_codes_.begin(), exit_codes_.end(), [](int c) { return c == 0; });
  if (interrupt_sig_ || finished) {
    if (finished && !interrupt_sig_)
      dir_.log(fmt::format("the job finished before host {} could join", names));
    regroup_since_.reset();
    return false;
  }
  group_.drain(Millis(1000));
  handle_events();
  ReshapeResult r = group_.grow(regroup_hosts_);
  if (!r.refused.empty()) {
    dir_.log(fmt::format("not growing: host {} joins, but {}", names, r.refused));
    console_.message(fmt::format("ptrain: not growing: host {} joins, but {}", names, r.refused),
                     true);
    refused_joins_.insert(refused_joins_.end(), regroup_hosts_.begin(), regroup_hosts_.end());
  } else {
    opt_.world_size = r.world_size;
  }
  const int round =
      restarts_.begin_grow_round(regroup_hosts_, regroup_step_, *regroup_since_, unix_micros());
  dir_.add_scalar("hosts", static_cast<double>(group_.hosts().size()), console_.progress().step);
  const size_t hosts = group_.hosts().size();
  const std::string line = fmt::format("growing to {} host{} ({} joins), {} worker(s)", hosts,
                                       hosts == 1 ? "" : "s", names, opt_.world_size);
  dir_.log(fmt::format("{}; starting rendezvous round {} ({:.3f} s after the round was stopped)",
                       line, round, mono() - *regroup_since_));
  if (r.refused.empty()) console_.message("ptrain: " + line, true);
  regroup_since_.reset();
  regroup_hosts_.clear();
  grew_ = true;
  grace_.reset();
  force_at_.reset();
  force_stage_ = 0;
  sent_kill_ = false;
  missing_at_failure_.clear();
  joined_at_failure_ = false;
  rdzv_.begin_round(round);
  start_round(round);
  return true;
}

bool Supervisor::restart_if_due() {
  if (regroup_since_) return regroup_if_due();
  if (!failure_ || interrupt_sig_ || no_restart_ || !restarts_.can_restart()) {
    restart_at_.reset();
    return false;
  }
  // Every worker of the failed round is gone: keep its last lines, then start the next round.
  if (!restart_at_) group_.drain(Millis(1000));
  handle_events();
  const Failure& f = *failure_;
  FailureRecord rec;
  rec.rank = f.rank;
  rec.exit_code = f.exit_code;
  rec.reason = f.what;
  rec.unix_us = f.unix_us;
  rec.mono_s = f.mono_s;
  rec.last_step = console_.progress().step;
  rec.block = root_cause_block(f);
  // Elastic: a lost host is left out of the next round, decided once per failure. A shrunk
  // round is not the failed one again, so the "same failure" refusal does not apply.
  if (!restart_at_ && !shrunk_) shrunk_ = try_shrink(f);
  if (auto why_not = restarts_.refuse_restart(rec); why_not && !shrunk_) {
    no_restart_ = true;
    dir_.log("not restarting: " + *why_not);
    console_.message("ptrain: not restarting: " + *why_not, true);
    return false;
  }
  // Back off before the next round; the loop keeps answering signals meanwhile.
  auto now = waiter_.now();
  if (!restart_at_) {
    const double backoff = restarts_.backoff_s();
    restart_at_ = now + Millis(static_cast<int64_t>(backoff * 1000));
    if (backoff > 0) dir_.log(fmt::format("next round in {:.0f} s (backoff)", backoff));
  }
  if (now < *restart_at_) return true;
  restart_at_.reset();
  restarts_.add_failure(std::move(rec));
  const int round = restarts_.begin_next_round();
  grew_ = false;
  dir_.add_scalar("restarts", round, console_.progress().step);
  // One machine: the host goes without saying.
  std::string why = group_.multi_host()
                        ? fmt::format("{} on {} {}", rank_name(f.rank), f.host, f.what)
                        : fmt::format("{} {}", rank_name(f.rank), f.what);
  dir_.log(
      fmt::format("restart {}/{}: {}; starting rendezvous round {} ({:.3f} s after the failure)",
                  restarts_.restarts(), restarts_.max_restarts(), why, round, mono() - f.mono_s));
  const auto hosts = group_.hosts().size();
  console_.message(fmt::format("ptrain: {}; restarting every worker{} (restart {}/{})", why,
                               hosts > 1 ? fmt::format(" on {} host(s)", hosts) : std::string(),
                               restarts_.restarts(), restarts_.max_restarts()),
                   true);
  failure_.reset();
  shrunk_ = false;
  missing_at_failure_.clear();
  joined_at_failure_ = false;
  grace_.reset();
  force_at_.reset();
  force_stage_ = 0;
  sent_kill_ = false;
  if (next_world_size_ > 0) opt_.world_size = std::exchange(next_world_size_, 0);
  rdzv_.begin_round(round);
  start_round(round);
  return true;
}

void Supervisor::on_timers() {
  auto now = waiter_.now();
  if (grace_.due(now)) {
    dir_.log(fmt::format("{} worker(s) still running after term_grace_s={}: SIGKILL",
                         group_.running(), opt_.term_grace_s));
    sent_kill_ = true;
    group_.signal(SIGKILL);
    force_at_ = now + kForceStopInterval;
  }
  if (force_at_ && now >= *force_at_) {
    ++force_stage_;
    dir_.log(fmt::format("{} unit(s) still running after SIGKILL: cutting them off (stage {})",
                         group_.running(), force_stage_));
    group_.force_stop(force_stage_);
    force_at_ = now + kForceStopInterval;
  }
  if (rendezvous_check_ && now >= *rendezvous_check_) {
    rendezvous_check_.reset();
    auto missing = rdzv_.missing_ranks();
    if (!missing.empty()) {
      Failure f{missing.front(), group_.host_of(missing.front()), group_.pid_of(missing.front()),
                kExitTimeout,
                fmt::format("never joined the rendezvous within rendezvous.timeout_s={} "
                            "(missing: {})",
                            opt_.rendezvous_timeout_s, missing_text(missing))};
      f.host_lost = true;
      fail(std::move(f));
    }
  }
}

void Supervisor::write_summary(const JobResult& r) {
  const auto& p = console_.progress();
  Json hosts = Json::array();
  for (const auto& h : group_.hosts()) hosts.push_back(h);
  Json s = {{"status", r.status},
            {"exit_code", r.exit_code},
            {"name", opt_.name},
            {"world_size", opt_.world_size},
            {"exit_codes", exit_codes_json(exit_codes_)},
            {"hosts", std::move(hosts)}};
  if (failure_) {
    s["failed_rank"] = failure_->rank;
    s["failed_host"] = failure_->host;
    s["reason"] = failure_->what;
  }
  if (interrupt_sig_) s["reason"] = "interrupted by " + signal_name(interrupt_sig_);
  add_progress(s, console_.has_progress() ? p.step : 0, opt_.total_steps, p, elapsed());
  s["restarts"] = restarts_.restarts_json();
  if (auto grows = restarts_.grows_json(); !grows.empty()) s["grows"] = std::move(grows);
  // How the ranks met the coordinator: node_joins counts the nodes' relays joining for their
  // ranks (the hierarchical path), rank_joins the ranks that joined it themselves.
  auto st = rdzv_.stats();
  s["rendezvous"] = {{"rank_joins", st.join_rpcs - st.node_join_rpcs},
                     {"node_joins", st.node_join_rpcs}};
  dir_.write_file("summary.json", dump_line(s) + "\n");
  dir_.finish_mlflow(r.exit_code == 0);
}

void Supervisor::write_start_failure(RunDir& dir, const std::string& name, int world_size,
                                     const std::vector<std::string>& hosts, int exit_code,
                                     const std::string& reason) {
  Json h = Json::array();
  for (const auto& x : hosts) h.push_back(x);
  Json s = {
      {"status", "failed"},
      {"exit_code", exit_code},
      {"name", name},
      {"world_size", world_size},
      {"exit_codes", exit_codes_json(std::vector<int>(static_cast<size_t>(world_size), INT_MIN))},
      {"hosts", std::move(h)},
      {"reason", reason},
      {"restarts", Json::array()}};
  dir.write_file("summary.json", dump_line(s) + "\n");
  dir.finish_mlflow(false);
}

JobResult Supervisor::run() {
  start_s_ = mono();
  start_round(0);
  while (group_.running() > 0 || restart_if_due()) {
    auto now = waiter_.now();
    Millis wait = opt_.tick;
    for (const auto& t : {grace_.deadline(), force_at_, rendezvous_check_, restart_at_})
      if (t) wait = std::min(wait, until(*t, now));
    wait = std::max(wait, Millis(0));
    for (int sig : waiter_.wait(group_, wait)) interrupt(sig);
    handle_events();
    handle_group_events();
    on_timers();
    check_joining();
    console_.tick(elapsed());
  }
  group_.drain(Millis(1000));
  handle_events();
  handle_group_events();
  console_.finish();

  JobResult result;
  result.run_dir = dir_.path();
  if (failure_) {
    result.exit_code = failure_->exit_code;
    result.status = "failed";
    std::string block = restarts_.history_block() + root_cause_block(*failure_);
    console_.message(block, true);
    dir_.log(block);
  } else if (interrupt_sig_) {
    result.exit_code = 128 + interrupt_sig_;
    result.status = "interrupted";
  } else {
    result.exit_code = 0;
    result.status = "succeeded";
  }
  dir_.log(fmt::format("job {}: exit code {}", result.status, result.exit_code));
  write_summary(result);
  return result;
}

}  // namespace ptrain::launch
