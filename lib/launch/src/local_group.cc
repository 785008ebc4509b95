#include "ptrain/launch/local_group.h"

#include <signal.h>

namespace ptrain::launch {

void LocalWorkerGroup::start(int round) {
  agent_.spawn_all(round);
  const auto& o = agent_.options();
  auto started = [&](int rank) {
    if (pid_t pid = agent_.pid_of(rank); pid > 0) {
      GroupEvent e;
      e.kind = GroupEvent::Kind::Started;
      e.rank = rank;
      e.pid = pid;
      e.host = o.node;
      pending_.push_back(std::move(e));
    }
  };
  for (int r = o.first_rank; r < o.first_rank + o.local_world_size; ++r) started(r);
  for (int i : agent_.server_list()) started(o.world_size + i);
}

void LocalWorkerGroup::signal(int sig) {
  agent_.signal_all(sig);
  if (sig != SIGKILL && sig != SIGCONT) agent_.signal_all(SIGCONT);  // a stopped worker must run
}

std::vector<GroupEvent> LocalWorkerGroup::poll() {
  std::vector<GroupEvent> out = std::move(pending_);
  pending_.clear();
  for (auto& x : agent_.reap()) {
    GroupEvent e;
    e.kind = GroupEvent::Kind::Exited;
    e.rank = x.rank;
    e.pid = x.pid;
    e.status = x.status;
    e.text = x.spawn_error;
    e.host = agent_.options().node;
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace ptrain::launch
