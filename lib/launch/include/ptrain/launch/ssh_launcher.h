// `ptrain launch`: one job across SSH hosts. Checks every host first (nothing starts anywhere
// when one is bad), runs the coordinator here, starts `ptrain agent` on each host over ssh,
// supervises them (first failure or Ctrl-C stops every remote worker) and writes the run folder
// (streamed rank logs, metrics.jsonl, summary.json) like `ptrain run`.
#pragma once

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/launch/launcher.h"
#include "ptrain/launch/ssh.h"
#include "ptrain/spec/job_spec.h"

namespace ptrain::launch {

struct SshLaunchOptions {
  std::vector<spec::HostSlots> hosts;  // from --hosts, --hostfile, --slurm or the spec
  SshOptions ssh;
  std::string spec_yaml;     // the resolved spec (job.yaml)
  std::string local_binary;  // this ptrain; empty = /proc/self/exe
  std::FILE* out = stdout;
  int tty = -1;  // as LauncherOptions::tty
  Millis preflight_timeout = kDefaultPreflightTimeout;
  std::string resume_dir;  // non-empty: continue this run folder instead of creating one
};

class SshLauncher {
 public:
  SshLauncher(spec::JobSpec spec, SshLaunchOptions options);
  ~SshLauncher();
  SshLauncher(const SshLauncher&) = delete;
  SshLauncher& operator=(const SshLauncher&) = delete;

  // Runs the job to its end. Throws ConfigError/RemoteError, with one line per bad host, when
  // the job cannot start; then nothing was started on any host.
  JobResult run();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptrain::launch
