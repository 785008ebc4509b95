// `ptrain submit job.yaml --nodes N [--partition P] [--time T]`: writes an sbatch script (and the
// resolved job.yaml) into a new run folder and submits it with sbatch; prints the job id. The job
// runs one `ptrain node` per node with srun, as `ptrain launch --slurm` does.
#include <fmt/format.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/launch/job_tls.h"
#include "ptrain/launch/process.h"
#include "ptrain/launch/run_dir.h"
#include "ptrain/launch/slurm.h"
#include "ptrain/spec/spec.h"

namespace ptrain::cli {
namespace {

struct SubmitArgs {
  std::string spec_path;
  std::vector<std::string> overrides;
  int nodes = 0;
  std::string partition, time;
};

Action setup_submit(CLI::App& sub) {
  auto args = std::make_shared<SubmitArgs>();
  sub.add_option("spec", args->spec_path, "Job spec (YAML)")->required();
  sub.add_option("--set", args->overrides, "Override a spec key: --set train.steps=10")
      ->allow_extra_args(false);
  sub.add_option("--nodes", args->nodes, "Nodes to allocate (one `ptrain node` each)")->required();
  sub.add_option("--partition", args->partition, "Slurm partition (else the default)");
  sub.add_option("--time", args->time, "Time limit, as sbatch --time (e.g. 2:00:00)");
  return [args] {
    if (args->nodes < 1)
      throw ConfigError(fmt::format("--nodes {}: a job needs at least one node", args->nodes),
                        "give --nodes N");
    std::vector<std::string> overrides = args->overrides;
    std::string list;
    for (int i = 0; i < args->nodes; ++i) list += fmt::format("{}\"node-{}\"", i ? ", " : "", i);
    overrides.push_back("nodes.hosts=[" + list + "]");
    spec::JobSpec spec = spec::load_file(args->spec_path, overrides);
    const char* path = std::getenv("PATH");
    if (launch::find_in_path("sbatch", path ? path : "/usr/bin:/bin").empty())
      throw ConfigError("submit: sbatch is not on the PATH",
                        "run it on a Slurm login node, or install slurm-client");
    std::error_code ec;
    std::string root = std::filesystem::absolute(spec.logging.dir, ec).string();
    launch::RunDir dir = launch::RunDir::create(root, spec.name);
    // env: values stay out of job.yaml and the script (${KEY} references; see sbatch_env_file).
    dir.write_file("job.yaml", spec::to_yaml_redacted(spec));
    launch::SbatchOptions o;
    o.name = spec.name;
    o.nodes = args->nodes;
    o.partition = args->partition;
    o.time = args->time;
    o.program = launch::this_executable();
    o.spec_path = dir.path() + "/job.yaml";
    o.out_dir = dir.path();
    if (!spec.env.empty()) {
      dir.write_private_file(".env", launch::sbatch_env_file(spec.env));
      o.env_file = dir.path() + "/.env";
    }
    // rendezvous.tls: the nodes of a cluster are not loopback, so auto means on.
    if (spec.rendezvous.tls != "off") {
      o.tls_dir = launch::tls_dir(dir.path());
      launch::init_tls_dir(o.tls_dir);
    }
    dir.write_file("submit.sbatch", launch::sbatch_script(o));
    const std::string script = dir.path() + "/submit.sbatch";
    ::chmod(script.c_str(), 0755);
    std::string id = launch::submit_sbatch(script);
    dir.log(fmt::format("submitted batch job {} ({} node(s))", id, args->nodes));
    fmt::print("{}\n", id);
    fmt::print(stderr, "ptrain: submitted batch job {} ({} node(s)); script {}\n", id, args->nodes,
               script);
    return 0;
  };
}

}  // namespace

PTRAIN_COMMAND({"submit", "Submit a job to Slurm (sbatch; one `ptrain node` per node)", false, 14,
                setup_submit})

}  // namespace ptrain::cli
