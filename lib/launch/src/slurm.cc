#include "ptrain/launch/slurm.h"

#include <fmt/format.h>
#include <signal.h>

#include <cstdlib>
#include <filesystem>

#include "ptrain/core/error.h"
#include "ptrain/launch/hosts.h"
#include "ptrain/launch/process.h"
#include "ptrain/launch/ssh.h"
#include "ptrain/rendezvous/token.h"

extern char** environ;

namespace ptrain::launch {

namespace {

std::string path_env() {
  const char* p = std::getenv("PATH");
  return p ? p : "/usr/bin:/bin";
}

}  // namespace

std::vector<std::string> srun_argv(const std::string& program, int nodes,
                                   const std::string& spec_path,
                                   const std::vector<std::string>& overrides) {
  std::vector<std::string> argv = {"srun",
                                   fmt::format("--nodes={}", nodes),
                                   fmt::format("--ntasks={}", nodes),
                                   "--ntasks-per-node=1",
                                   "--kill-on-bad-exit=1",
                                   program,
                                   "node",
                                   spec_path};
  for (const auto& o : overrides) {
    argv.push_back("--set");
    argv.push_back(o);
  }
  return argv;
}

int slurm_launch(const std::string& program, const std::string& spec_path,
                 const std::vector<std::string>& overrides,
                 const std::function<std::string()>& make_tls_dir,
                 const std::function<const char*(const char*)>& getenv_fn) {
  auto get = [&](const char* k) -> std::string {
    const char* v = getenv_fn ? getenv_fn(k) : std::getenv(k);
    return v ? v : "";
  };
  if (get("SLURM_JOB_ID").empty() || get("SLURM_JOB_NODELIST").empty())
    throw ConfigError("--slurm: not inside a Slurm allocation (SLURM_JOB_ID is not set)",
                      "run it in `salloc -N 2` or an sbatch script, or use `ptrain submit`");
  const int nodes = static_cast<int>(expand_slurm_nodelist(get("SLURM_JOB_NODELIST")).size());
  std::string srun = find_in_path("srun", path_env());
  if (srun.empty())
    throw ConfigError("--slurm: srun is not on the PATH",
                      "load the Slurm client (e.g. `module load slurm`) or install slurm-client");
  ProcessOptions po;
  po.argv = srun_argv(program, nodes, spec_path, overrides);
  po.argv[0] = srun;
  const std::string tls_dir = make_tls_dir ? make_tls_dir() : std::string();
  if (!tls_dir.empty()) po.argv.insert(po.argv.end(), {"--tls-dir", tls_dir});
  for (char** e = ::environ; e && *e; ++e)
    if (std::string(*e).rfind("PTRAIN_TOKEN=", 0) != 0) po.env.emplace_back(*e);
  po.env.push_back("PTRAIN_TOKEN=" + rendezvous::make_token());  // srun passes it on
  po.pipe_output = false;
  po.new_process_group = false;  // Ctrl-C reaches srun, which cancels the step
  ChildProcess child = ChildProcess::spawn(po);
  // Ctrl-C and scancel stop srun, which ends the step; this process outlives it to remove the
  // job's certificate.
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGTERM, SIG_IGN);
  for (;;)
    if (auto st = child.wait(Millis(1000))) {
      if (!tls_dir.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(tls_dir, ec);
      }
      return st->shell_code();
    }
}

namespace {

// Single-quotes `s` for bash.
std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  out += '\'';
  return out;
}

}  // namespace

std::string sbatch_script(const SbatchOptions& o) {
  if (o.nodes < 1)
    throw ConfigError(fmt::format("--nodes {}: a job needs at least one node", o.nodes),
                      "give --nodes N");
  std::string s = "#!/bin/bash\n";
  s += fmt::format("#SBATCH --job-name={}\n", o.name);
  s += fmt::format("#SBATCH --nodes={}\n", o.nodes);
  s += "#SBATCH --ntasks-per-node=1\n";
  s += fmt::format("#SBATCH --output={}/slurm-%j.out\n", o.out_dir);
  if (!o.partition.empty()) s += fmt::format("#SBATCH --partition={}\n", o.partition);
  if (!o.time.empty()) s += fmt::format("#SBATCH --time={}\n", o.time);
  s += "# Written by `ptrain submit`. The job token is made here, at run time, and reaches the\n";
  s += "# nodes through srun's environment: it is never in this file or on a command line.\n";
  s += "set -euo pipefail\n";
  s += "export PTRAIN_TOKEN=\"$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')\"\n";
  if (!o.env_file.empty()) {
    s += "# job.yaml's env: values (job.yaml holds ${KEY} references), from a file only you can "
         "read.\n";
    s += fmt::format(". {}\n", quote(o.env_file));
  }
  std::vector<std::string> argv = srun_argv(o.program, o.nodes, o.spec_path, {});
  if (!o.tls_dir.empty()) argv.insert(argv.end(), {"--tls-dir", o.tls_dir});
  std::string cmd;
  for (const auto& a : argv) cmd += fmt::format(" {}", quote(a));
  if (o.tls_dir.empty()) return s + "exec" + cmd + "\n";
  // The job's key lives as long as the job: removed when the script ends, whatever its status,
  // also when scancel (SIGTERM to the script and its steps) ends it.
  return s + fmt::format("tls_dir={}\n", quote(o.tls_dir)) +
         "trap 'rm -rf \"$tls_dir\"' EXIT\ntrap 'exit 143' TERM INT\n" + cmd.substr(1) + "\n";
}

std::string sbatch_env_file(const std::map<std::string, std::string>& env) {
  std::string s;
  for (const auto& [key, value] : env) s += fmt::format("export {}={}\n", key, quote(value));
  return s;
}

std::string submit_sbatch(const std::string& script_path) {
  std::string sbatch = find_in_path("sbatch", path_env());
  if (sbatch.empty())
    throw ConfigError("submit: sbatch is not on the PATH",
                      "run it on a Slurm login node, or install slurm-client");
  CommandResult r = run_command({sbatch, "--parsable", script_path}, "", Millis(60000));
  if (r.timed_out || r.status.shell_code() != 0) {
    std::string why = r.err.empty() ? r.out : r.err;
    while (!why.empty() && why.back() == '\n') why.pop_back();
    throw RemoteError(fmt::format("sbatch refused {}: {}", script_path,
                                  r.timed_out ? "no answer within 60 s" : why));
  }
  std::string id = r.out.substr(0, r.out.find_first_of(";\n"));
  return id;
}

}  // namespace ptrain::launch
