// A process that outlives its parent only to kill what the parent started. The agent spawns
// each worker as the leader of its own process group, with PR_SET_PDEATHSIG, so a worker dies
// with the agent even on SIGKILL; but a worker's own children (a shell's background jobs, a
// data loader's processes) get no such signal. The watchdog is forked once per agent, learns
// every worker's process group through a pipe, and when the pipe ends without a goodbye — the
// agent died, SIGKILL included — it sends SIGKILL to every group it knows, then exits.
#pragma once

#include <sys/types.h>

#include <string>

namespace ptrain::launch {

// The watchdog's loop on descriptor `fd` (the `ptrain watchdog` subcommand runs it on stdin):
// returns when the goodbye arrives, or after killing every group once the pipe ends.
int group_watchdog_main(int fd);

class GroupWatchdog {
 public:
  GroupWatchdog() = default;
  ~GroupWatchdog();  // the goodbye: the watchdog exits without killing anything
  GroupWatchdog(const GroupWatchdog&) = delete;
  GroupWatchdog& operator=(const GroupWatchdog&) = delete;

  // Starts the watchdog process (once; later calls do nothing): `program watchdog` (ptrain)
  // with an empty environment, or a plain fork of this process when `program` is empty.
  // Throws IoError when it cannot.
  void start(const std::string& program);
  // Process group `pgid` is to be killed if this process dies; forget() when it has no member
  // left.
  void watch(pid_t pgid);
  void forget(pid_t pgid);

 private:
  void send(char op, pid_t pgid);
  int fd_ = -1;     // write end of the pipe
  pid_t pid_ = -1;  // the watchdog
};

}  // namespace ptrain::launch
