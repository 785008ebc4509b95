// Slurm without ssh: `ptrain launch --slurm` inside an allocation starts one `ptrain node` per
// node with srun (the node count, rank and coordinator come from SLURM_* there), and
// `ptrain submit` writes an sbatch script that does the same and submits it.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace ptrain::launch {

// `srun --nodes=N --ntasks=N --ntasks-per-node=1 --kill-on-bad-exit=1 PROGRAM node SPEC [--set
// KEY=VALUE]...`.
std::vector<std::string> srun_argv(const std::string& program, int nodes,
                                   const std::string& spec_path,
                                   const std::vector<std::string>& overrides);

// Runs the job on the allocation we are in: srun with a fresh token in its environment (never
// on argv). Throws ConfigError outside an allocation (no SLURM_JOB_ID / SLURM_JOB_NODELIST) or
// when srun is not on the PATH; returns srun's exit code. `getenv` is injectable for tests.
// `make_tls_dir`, called once those checks passed, may return a folder holding a job
// certificate (init_tls_dir, on a filesystem every node sees): the nodes get `--tls-dir` and the
// folder is removed once srun has returned.
int slurm_launch(const std::string& program, const std::string& spec_path,
                 const std::vector<std::string>& overrides,
                 const std::function<std::string()>& make_tls_dir = {},
                 const std::function<const char*(const char*)>& getenv_fn = nullptr);

struct SbatchOptions {
  std::string name;
  int nodes = 1;
  std::string partition;  // empty: the cluster's default
  std::string time;       // empty: the partition's default
  std::string program;    // ptrain on the nodes
  std::string spec_path;  // the resolved job.yaml the nodes read (in the run folder)
  std::string out_dir;    // slurm-%j.out goes here
  // A 0600 file of `export KEY='value'` lines (the spec's env: values) the script sources before
  // srun, so job.yaml keeps ${KEY} references; empty: none.
  std::string env_file;
  // rendezvous.tls: the folder with the job certificate (`ptrain tls init`, in the run folder's
  // private part, which the nodes share); passed as --tls-dir and removed when srun returns.
  // Empty: none.
  std::string tls_dir;
};

// The content of SbatchOptions::env_file for these env: values.
std::string sbatch_env_file(const std::map<std::string, std::string>& env);

// The batch script: #SBATCH lines, a token made on the first node at run time (never written to
// the script), then srun as slurm_launch runs it.
std::string sbatch_script(const SbatchOptions& options);

// Submits `script` with `sbatch --parsable`; returns the job id. Throws ConfigError when sbatch
// is not on the PATH, RemoteError when it refuses the job (its message).
std::string submit_sbatch(const std::string& script_path);

}  // namespace ptrain::launch
