// The launcher of one job: owns the coordinator, the run directory and the agents; runs the event
// loop that supervises the workers (first failure aborts all, signals are forwarded, hung workers
// count as failed) and writes summary.json. `ptrain run` uses it with one in-process agent.
#pragma once

#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "ptrain/spec/job_spec.h"

namespace ptrain::launch {

struct LauncherOptions {
  std::string spec_yaml;       // the resolved spec written to job.yaml and sent on Join
  std::string worker_program;  // the ptrain binary for built-in workers; empty = this executable
  std::FILE* out = stdout;     // console (progress, worker lines)
  int tty = -1;                // 1/0 forces the live progress line on/off; -1 = isatty(out)
  std::string resume_dir;      // non-empty: continue this run folder instead of creating one
};

// The outcome of a job; exit_code is what `ptrain run` exits with.
struct JobResult {
  int exit_code = 0;
  std::string status;  // "succeeded", "failed", "interrupted"
  std::string run_dir;
};

// A port nobody listens on now on `addr`, for a PyTorch program's own store (MASTER_PORT): the
// program binds it later, as with torchrun (ptrain's coordinator binds port 0 instead). Throws
// IoError when none can be bound.
int free_tcp_port(const std::string& addr);
// True when something accepts TCP connections on addr:port now (the port is taken).
bool tcp_port_taken(const std::string& addr, int port);
// parallel.server_port: throws ConfigError naming the first port server_port + i (i < servers)
// that is taken on `address_of(i)`.
void check_server_ports(int server_port, int servers,
                        const std::function<std::string(int)>& address_of);

class Launcher {
 public:
  Launcher(spec::JobSpec spec, LauncherOptions options);
  ~Launcher();
  Launcher(const Launcher&) = delete;
  Launcher& operator=(const Launcher&) = delete;

  // Runs the job to its end. Throws (ConfigError, IoError) only for what stops it from starting:
  // an unusable run folder, a busy explicit port.
  JobResult run();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptrain::launch
