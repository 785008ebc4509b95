// The supervision policy of one job, shared by `ptrain run` and `ptrain launch`: signals and
// their forwarding, the event queue fed by the coordinator's threads, first failure → abort →
// grace → SIGKILL, restart rounds (RestartLog), hang and rendezvous checks, the root-cause block,
// summary.json and the exit code. It drives a WorkerGroup (local processes, or SSH agents), in
// the shape of torchrun's SimpleElasticAgent: start a round, signal it, poll it, stop it.
// The clock and the waiting are a Waiter, so the policy runs under a fake clock in tests.
// Not thread-safe except push(): one thread runs the loop.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ptrain/core/time.h"
#include "ptrain/launch/console.h"
#include "ptrain/launch/launcher.h"
#include "ptrain/launch/process.h"
#include "ptrain/launch/restart.h"
#include "ptrain/launch/run_dir.h"
#include "ptrain/launch/worker.h"
#include "ptrain/rendezvous/client.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/spec/job_spec.h"

struct pollfd;

namespace ptrain::launch {

// How long after rendezvous.timeout_s the supervisor names the ranks that never joined (both
// launchers: the coordinator's own join timeout fires first, this only catches silent cases).
inline constexpr Millis kJoinCheckGrace{5000};
// After the SIGKILL that ends the grace period, how long a group gets to report its last
// workers before it is cut off harder (an SSH session closed, then killed).
inline constexpr Millis kForceStopInterval{5000};

// Something a worker group saw happen.
struct GroupEvent {
  enum class Kind {
    Started,  // rank `rank` runs as `pid`
    Exited,   // rank `rank` ended with `status`; `text` = spawn error when it never started
    Lost,     // the group lost rank `rank`'s host (`text` says how); counts as its failure
    Message,  // a line of the group's own (an agent's stderr): `text`, from `host`
    Note,     // the same, for launcher.log only
  } kind = Kind::Message;
  int rank = -1;
  pid_t pid = -1;
  ExitStatus status;
  std::string text;
  std::string host;
};

// What WorkerGroup::shrink or grow did: the new world size, or why the group cannot change.
struct ReshapeResult {
  int world_size = 0;   // > 0: the next round runs this many worker ranks
  std::string refused;  // non-empty: the group stays as it is
};

// The workers of one job: everything the supervisor needs to know about where and how they run.
class WorkerGroup {
 public:
  virtual ~WorkerGroup() = default;
  // Starts every worker for rendezvous round `round` (what the previous round left is gone).
  virtual void start(int round) = 0;
  // Sends `sig` to every worker (SIGCONT follows a stop signal, so a stopped worker can act).
  virtual void signal(int sig) = 0;
  // After SIGKILL did not end the group: `stage` 1, 2, ... cuts it off harder (SSH: close the
  // session, then kill ssh). Local processes need nothing beyond SIGKILL.
  virtual void force_stop(int stage) { (void)stage; }
  // Descriptors to wait on, and the handler for the ready ones.
  virtual void add_poll_fds(std::vector<struct pollfd>& fds) const = 0;
  virtual void handle_ready(const std::vector<struct pollfd>& fds) = 0;
  // Events since the last call, in order (exits are reaped here).
  virtual std::vector<GroupEvent> poll() = 0;
  // Units still running (processes, or agents); the job ends when none is left.
  virtual int running() const = 0;
  // Waits up to `timeout` for the last output of ended workers.
  virtual void drain(Millis timeout) { (void)timeout; }
  // Where rank `rank` runs (parameter servers are ranks world_size + i).
  virtual std::string host_of(int rank) const = 0;
  virtual pid_t pid_of(int rank) const = 0;
  // The hosts of the group, in node order.
  virtual std::vector<std::string> hosts() const = 0;
  // The rank's log file on this machine (a copy streamed from its host, for SSH).
  virtual std::string log_path(int rank) const = 0;
  // Extra root-cause lines for `rank` ("the full log is on host b: ..."), or empty.
  virtual std::string log_note(int rank) const {
    (void)rank;
    return {};
  }
  // A log line the coordinator received for a rank (StreamLogs).
  virtual void on_streamed_line(const rendezvous::LogLineView& line) { (void)line; }
  // True when ranks run on several machines: the restart line then names the host.
  virtual bool multi_host() const { return false; }
  // Elastic jobs (nodes.min_nodes), between rounds: re-forms the job without the `lost` hosts,
  // so that the next start() runs on the others (fewer data ranks, more gradient accumulation,
  // the same global batch). Refused, with the reason, where the job cannot be re-formed.
  virtual ReshapeResult shrink(const std::vector<std::string>& lost) {
    (void)lost;
    return {0, "this kind of worker group cannot shrink"};
  }
  // Elastic jobs, while a round runs: the hosts that are ready to join it (a lost host that
  // answers again, a node that asked to join), only those the job can be re-formed with. Called
  // about once a second; a group that must ask the hosts does so in the background.
  virtual std::vector<std::string> joining() { return {}; }
  // Between rounds: re-forms the job with `hosts` (from joining()) added, so that the next
  // start() runs on them too (more data ranks, less gradient accumulation, the same global batch).
  virtual ReshapeResult grow(const std::vector<std::string>& hosts) {
    (void)hosts;
    return {0, "this kind of worker group cannot grow"};
  }
};

// The coordinator as the policy sees it.
class RendezvousControl {
 public:
  virtual ~RendezvousControl() = default;
  virtual void abort(const std::string& reason) = 0;
  virtual void begin_round(int round) = 0;
  virtual std::vector<int> missing_ranks() = 0;
  virtual bool any_joined() = 0;
  // What the coordinator served so far (summary.json's "rendezvous").
  virtual rendezvous::CoordinatorStats stats() { return {}; }
  // The step of the newest checkpoint that is complete on disk (rank 0 publishes it once the
  // write is done), or nullopt while the job has written none.
  virtual std::optional<int64_t> last_checkpoint() { return std::nullopt; }
};

// The clock and the blocking wait of the loop.
class Waiter {
 public:
  virtual ~Waiter() = default;
  virtual Clock::time_point now() = 0;
  // Waits up to `timeout` for a signal, a wake() or a ready descriptor of `group` (handled
  // through group.handle_ready); returns the signals that arrived (never SIGCHLD).
  virtual std::vector<int> wait(WorkerGroup& group, Millis timeout) = 0;
  // Thread-safe: makes a wait() in progress return.
  virtual void wake() = 0;
};

// The real waiter: blocks SIGCHLD, SIGINT, SIGTERM and SIGHUP (construct it before any thread
// starts, so every thread inherits the mask), reads them through a signalfd, and polls it with
// an eventfd and the group's descriptors. Ignores SIGPIPE while it lives.
class PollWaiter : public Waiter {
 public:
  PollWaiter();
  ~PollWaiter() override;
  PollWaiter(const PollWaiter&) = delete;
  PollWaiter& operator=(const PollWaiter&) = delete;
  Clock::time_point now() override { return Clock::now(); }
  std::vector<int> wait(WorkerGroup& group, Millis timeout) override;
  // The same, polling `extra` descriptors too (their revents are filled in).
  std::vector<int> wait(WorkerGroup& group, Millis timeout, std::vector<struct pollfd>& extra);
  void wake() override;
  // For loops that poll more than a group (the remote agent): the signals pending now.
  std::vector<int> read_signals();
  int signal_fd() const { return signal_fd_; }

 private:
  int signal_fd_ = -1;
  int event_fd_ = -1;
  sigset_t old_mask_;
  void (*old_pipe_)(int) = nullptr;
};

// Term → grace → kill for a set of processes: the piece the supervisor and the remote agent
// share. stop() sends `sig` (then SIGCONT) and arms the kill; due() says when SIGKILL is owed.
class GraceTimer {
 public:
  explicit GraceTimer(Millis grace = Millis(5000)) : grace_(grace) {}
  // Arms the kill at now + grace unless it is armed already.
  void arm(Clock::time_point now) {
    if (!kill_at_) kill_at_ = now + grace_;
  }
  // True once (then disarmed) when the grace period is over.
  bool due(Clock::time_point now) {
    if (!kill_at_ || now < *kill_at_) return false;
    kill_at_.reset();
    return true;
  }
  void reset() { kill_at_.reset(); }
  const std::optional<Clock::time_point>& deadline() const { return kill_at_; }
  Millis grace() const { return grace_; }

 private:
  Millis grace_;
  std::optional<Clock::time_point> kill_at_;
};

struct SupervisorOptions {
  int world_size = 1;
  int servers = 0;          // parameter servers, ranks world_size .. world_size + servers - 1
  bool builtin = true;      // built-in workers (false: a `command:` job)
  int64_t total_steps = 0;  // for summary.json
  int max_restarts = 0;
  Millis term_grace{5000};
  Millis join_timeout{60000};  // rendezvous.timeout_s; the join check fires kJoinCheckGrace later
  Millis tick{1000};           // the longest wait (the live progress line redraws this often)
  std::string name;            // the job's name (summary.json)
  // nodes.min_nodes is below the host count: a host that is lost and does not come back within
  // a round's rendezvous is left out of the next round (WorkerGroup::shrink).
  // A host that comes back (WorkerGroup::joining) is admitted at the next checkpoint boundary:
  // the round stops once a checkpoint newer than the one of the moment it asked is complete, and
  // the next round, with the host, resumes from it. Without checkpoints (checkpoint.every 0) a
  // built-in job does not grow; a `command:` job grows at once (its program resumes itself).
  bool elastic = false;
  bool checkpoints = true;  // built-in jobs: checkpoint.every > 0
  double rendezvous_timeout_s = 60;
  double term_grace_s = 5;
};

// The policy options of a spec (fault_tolerance, rendezvous.timeout_s, world size, servers).
SupervisorOptions supervisor_options(const spec::JobSpec& spec);

// What the coordinator's threads hand to the loop.
struct SupervisorEvent {
  enum class Kind { Report, Hang, Leave, Warning, Log } kind = Kind::Warning;
  int rank = -1;
  int code = 0;
  std::string text;
  rendezvous::LogLineView line;  // Log
};

// The queue between the coordinator's threads and the loop. push() is thread-safe and wakes the
// waiter.
class EventQueue {
 public:
  explicit EventQueue(Waiter& waiter) : waiter_(waiter) {}
  void push(SupervisorEvent e);
  std::vector<SupervisorEvent> take();
  // The coordinator callbacks that feed this queue (metrics also go to dir's metrics.jsonl).
  rendezvous::CoordinatorEvents coordinator_events(RunDir& dir);

 private:
  Waiter& waiter_;
  std::mutex mu_;
  std::vector<SupervisorEvent> events_;
};

class Supervisor {
 public:
  Supervisor(SupervisorOptions options, WorkerGroup& group, RendezvousControl& rendezvous,
             Waiter& waiter, EventQueue& events, Console& console, RunDir& dir);

  // Runs the job to its end: starts round 0, supervises, restarts, writes summary.json.
  JobResult run();
  // summary.json for a job that stopped before any worker started (the coordinator could not
  // start): status failed, the error's exit code and reason.
  static void write_start_failure(RunDir& dir, const std::string& name, int world_size,
                                  const std::vector<std::string>& hosts, int exit_code,
                                  const std::string& reason);

  const RestartLog& restarts() const { return restarts_; }

 private:
  struct Failure {
    int rank = -1;
    std::string host;
    pid_t pid = -1;
    int exit_code = 1;
    std::string what;
    int64_t unix_us = 0;
    double mono_s = 0;
    // The host went away (its agent's session ended) or its ranks never joined the round.
    bool host_lost = false;
  };
  void handle_group_events();
  void handle_events();
  void fail(Failure f);
  void interrupt(int sig);
  void stop_group(int sig, const std::string& reason);
  bool restart_if_due();
  void on_timers();
  std::string rank_name(int rank) const;
  std::string root_cause_block(const Failure& f) const;
  std::string missing_text(const std::vector<int>& ranks) const;
  void write_summary(const JobResult& r);
  void start_round(int round);
  std::vector<std::string> lost_hosts(const Failure& f) const;
  bool try_shrink(const Failure& f);
  void check_joining();
  bool regroup_if_due();
  double mono() { return std::chrono::duration<double>(waiter_.now().time_since_epoch()).count(); }
  double elapsed() { return mono() - start_s_; }

  SupervisorOptions opt_;
  WorkerGroup& group_;
  RendezvousControl& rdzv_;
  Waiter& waiter_;
  EventQueue& events_;
  Console& console_;
  RunDir& dir_;

  double start_s_ = 0;
  std::vector<int> exit_codes_;
  std::optional<Failure> failure_;
  std::vector<int> missing_at_failure_;
  bool joined_at_failure_ = false;
  int interrupt_sig_ = 0;
  GraceTimer grace_;
  std::optional<Clock::time_point> force_at_;
  int force_stage_ = 0;
  bool sent_kill_ = false;  // this round's workers got SIGKILL from us
  std::optional<Clock::time_point> rendezvous_check_;
  std::optional<Clock::time_point> restart_at_;
  RestartLog restarts_;
  bool no_restart_ = false;  // a signal while stopping: the job ends, whatever max_restarts says
  int next_world_size_ = 0;  // > 0: the world size of the next (shrunk) round
  bool shrunk_ = false;      // the group shrank for the current failure (the next round differs)
  // Growing (elastic): the hosts waiting to join, the checkpoint step when they asked (the round
  // stops after a newer one), and, once the round is being stopped for them, the hosts and when.
  std::vector<std::string> joining_;
  std::optional<int64_t> join_after_step_;
  std::vector<std::string> regroup_hosts_;
  std::optional<double> regroup_since_;
  int64_t regroup_step_ = 0;
  bool grew_ = false;  // the current round was started to grow (not for a failure)
  std::optional<Clock::time_point> next_join_check_;
  std::vector<std::string> refused_joins_;  // told once: the job cannot take them
};

// The rendezvous control of a real coordinator.
class CoordinatorControl : public RendezvousControl {
 public:
  explicit CoordinatorControl(rendezvous::Coordinator& c) : c_(c) {}
  void abort(const std::string& reason) override;
  void begin_round(int round) override;
  std::vector<int> missing_ranks() override;
  bool any_joined() override;
  rendezvous::CoordinatorStats stats() override;
  std::optional<int64_t> last_checkpoint() override;

 private:
  rendezvous::Coordinator& c_;
};

}  // namespace ptrain::launch
