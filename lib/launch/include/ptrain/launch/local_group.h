// The worker group of one machine: an Agent's processes behind the WorkerGroup interface
// (supervisor.h). `ptrain run` supervises one; each host's `ptrain agent` drives one too.
#pragma once

#include <string>
#include <vector>

#include "ptrain/launch/agent.h"
#include "ptrain/launch/supervisor.h"

namespace ptrain::launch {

class LocalWorkerGroup : public WorkerGroup {
 public:
  explicit LocalWorkerGroup(AgentOptions options) : agent_(std::move(options)) {}

  void start(int round) override;
  void signal(int sig) override;
  void add_poll_fds(std::vector<struct pollfd>& fds) const override { agent_.add_poll_fds(fds); }
  void handle_ready(const std::vector<struct pollfd>& fds) override { agent_.handle_ready(fds); }
  std::vector<GroupEvent> poll() override;
  int running() const override { return agent_.running(); }
  void drain(Millis timeout) override { agent_.drain(timeout); }
  std::string host_of(int) const override { return agent_.options().node; }
  pid_t pid_of(int rank) const override { return agent_.pid_of(rank); }
  std::vector<std::string> hosts() const override { return {agent_.options().node}; }
  std::string log_path(int rank) const override { return agent_.log_path(rank); }

  Agent& agent() { return agent_; }

 private:
  Agent agent_;
  std::vector<GroupEvent> pending_;
};

}  // namespace ptrain::launch
