// The worker group of `ptrain launch`: one ssh session per host running `ptrain agent`, behind
// the WorkerGroup interface (supervisor.h). The agents report their workers' starts and exits
// over the session; the workers' lines reach the coordinator, which hands them to
// on_streamed_line for the local copy of each rank log.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ptrain/launch/hosts.h"
#include "ptrain/launch/remote_agent.h"
#include "ptrain/launch/ssh.h"
#include "ptrain/launch/supervisor.h"

namespace ptrain::launch {

// Elastic jobs: re-forms the job on `hosts` (some of the job's hosts) and returns its new host
// plan and world size, or throws ConfigError with the reason it cannot; with `dry_run` it only
// checks. The SSH and per-node groups get one from their launcher.
using GroupReshape = std::function<std::pair<std::vector<HostPlan>, int>(
    const std::vector<std::string>& hosts, bool dry_run)>;

// Re-forms with `reshape` on `next`: `plan` and `world` take the new shape, or the refusal is
// returned (and they stay).
ReshapeResult apply_reshape(const GroupReshape& reshape, const std::vector<std::string>& next,
                            std::vector<HostPlan>& plan, int& world);
// Whether the job could be re-formed on `next`.
bool can_reshape(const GroupReshape& reshape, const std::vector<std::string>& next);
// The hosts of a plan, in order.
std::vector<std::string> plan_host_names(const std::vector<HostPlan>& plan);

struct SshGroupOptions {
  std::vector<HostPlan> plan;
  SshOptions ssh;
  std::string program;  // ptrain on the hosts
  std::string log_level = "info";
  std::string run_dir;  // the launcher's run folder (local copies of the rank logs)
  int world_size = 1;
  // host index → the hosts' parameter servers (global server indices), for host_of().
  std::map<int, std::vector<int>> servers_of_host;
  // The setup of host `i`'s agent for round `round` (the coordinator's expect() is done there).
  std::function<RemoteAgentSetup(size_t i, int round)> setup;
  // Elastic jobs (GroupReshape). Unset: the group never changes shape.
  GroupReshape reshape;
  // Elastic jobs: whether a host that was left out answers again (ssh, ptrain, its version).
  // Runs on a background thread, one host at a time.
  std::function<bool(const std::string& host)> probe;
  Millis probe_interval{2000};  // between two rounds of probes
};

// One line of a `ptrain agent`'s event stream (`ptrain launch` over ssh, `ptrain node` through the
// store) as the event it means for the supervisor, keeping the host's tally: the pid of each
// started rank, the ranks that ended, whether the agent said it is done. Nothing for "done".
std::optional<GroupEvent> agent_line_event(const std::string& host, const std::string& line,
                                           std::map<int, pid_t>& pids, std::set<int>& finished,
                                           bool& done);

class SshWorkerGroup : public WorkerGroup {
 public:
  explicit SshWorkerGroup(SshGroupOptions options);
  ~SshWorkerGroup() override;

  void start(int round) override;
  void signal(int sig) override;
  void force_stop(int stage) override;
  void add_poll_fds(std::vector<struct pollfd>& fds) const override;
  void handle_ready(const std::vector<struct pollfd>& fds) override;
  std::vector<GroupEvent> poll() override;
  int running() const override;
  std::string host_of(int rank) const override;
  pid_t pid_of(int rank) const override;
  std::vector<std::string> hosts() const override;
  std::string log_path(int rank) const override;
  std::string log_note(int rank) const override;
  void on_streamed_line(const rendezvous::LogLineView& line) override;
  bool multi_host() const override { return true; }
  ReshapeResult shrink(const std::vector<std::string>& lost) override;
  // The hosts left out by shrink() that answered the last probe, if the job can take them.
  std::vector<std::string> joining() override;
  ReshapeResult grow(const std::vector<std::string>& hosts) override;

 private:
  struct Session;
  void send(Session& s, const std::string& data);
  void flush_input(Session& s);
  void read_session(Session& s, bool is_err);
  void on_agent_line(Session& s, const std::string& line);
  void on_session_end(Session& s);
  SshGroupOptions opt_;
  std::vector<std::unique_ptr<Session>> sessions_;
  std::vector<GroupEvent> pending_;
  std::map<int, int> log_fds_;
  // Elastic: the hosts shrink() left out, and the background probe of them.
  std::vector<std::string> left_out_;
  struct Prober;
  std::unique_ptr<Prober> prober_;
};

}  // namespace ptrain::launch
