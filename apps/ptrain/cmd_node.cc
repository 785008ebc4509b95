// `ptrain node job.yaml --nnodes N --node-rank R [--coordinator HOST:PORT] [--token-file F]`
// (or `--join` in place of --node-rank: a node that joins a running elastic job):
// this node's part of a job started once per node by a scheduler (torchrun's shape). Without the
// flags, the node count, rank and coordinator come from the Kubernetes (PET_*, MASTER_ADDR) or
// Slurm (SLURM_*) environment. The token comes from PTRAIN_TOKEN or --token-file, never argv;
// the job certificate (rendezvous.tls) from --tls-dir or PTRAIN_TLS_DIR (`ptrain tls init`).
#include <fmt/format.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/launch/node_launcher.h"
#include "ptrain/spec/spec.h"

namespace ptrain::cli {
namespace {

struct NodeArgs {
  std::string spec_path;
  std::vector<std::string> overrides;
  int nnodes = -1;
  int node_rank = -1;
  int nproc_per_node = -1;
  std::string coordinator;
  std::string token_file;
  std::string tls_dir;
  bool join = false;
};

std::string read_token(const std::string& token_file) {
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    if (!in)
      throw ConfigError(fmt::format("--token-file: cannot read {}", token_file),
                        "give a file holding the job token (the same on every node)");
    std::stringstream text;
    text << in.rdbuf();
    std::string t = text.str();
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ')) t.pop_back();
    if (t.empty())
      throw ConfigError(fmt::format("--token-file {} is empty", token_file),
                        "write the job token into it (e.g. `openssl rand -hex 16`)");
    return t;
  }
  const char* env = std::getenv("PTRAIN_TOKEN");
  return env ? env : "";
}

Action setup_node(CLI::App& sub) {
  auto args = std::make_shared<NodeArgs>();
  sub.add_option("spec", args->spec_path, "Job spec (YAML), the same on every node")->required();
  sub.add_option("--set", args->overrides, "Override a spec key: --set train.steps=10")
      ->allow_extra_args(false);
  sub.add_option("--nnodes", args->nnodes, "Number of nodes (else PET_NNODES, SLURM_NNODES)");
  sub.add_option("--node-rank", args->node_rank,
                 "This node's rank, 0..N-1 (else PET_NODE_RANK, SLURM_NODEID)");
  sub.add_option("--nproc-per-node", args->nproc_per_node,
                 "Workers on this node (else PET_NPROC_PER_NODE, nodes.procs_per_node)");
  sub.add_option("--coordinator", args->coordinator,
                 "HOST:PORT of node 0 (else MASTER_ADDR:MASTER_PORT, the first Slurm host, or "
                 "rendezvous.bind:rendezvous.port)");
  sub.add_option("--token-file", args->token_file,
                 "File holding the job token (else PTRAIN_TOKEN)");
  sub.add_flag("--join", args->join,
               "Join a running elastic job (nodes.min_nodes) in the next free place, instead of "
               "--node-rank; taken in at its next checkpoint");
  sub.add_option("--tls-dir", args->tls_dir,
                 "Folder from `ptrain tls init` with the job certificate, the same on every node "
                 "(else PTRAIN_TLS_DIR)");
  return [args] {
    // The node count comes first (flags, else the scheduler's environment): the spec is checked
    // against nnodes hosts of procs_per_node workers, as `ptrain launch` checks it against --hosts.
    const auto environment = launch::process_environment();
    launch::NodeEnvironment env = launch::node_environment(environment);
    launch::NodeLaunchOptions o;
    o.nnodes = args->nnodes >= 0 ? args->nnodes : env.nnodes;
    o.join = args->join;
    o.node_rank = args->node_rank >= 0 ? args->node_rank : o.join ? -1 : env.node_rank;
    o.procs_per_node = args->nproc_per_node > 0 ? args->nproc_per_node : env.procs_per_node;
    if (o.nnodes < 0)
      throw ConfigError("no node count: give --nnodes N",
                        "or run under a scheduler that sets PET_NNODES or SLURM_NNODES");
    if (o.node_rank < 0 && !o.join)
      throw ConfigError("no node rank: give --node-rank R",
                        "or run under a scheduler that sets PET_NODE_RANK or SLURM_NODEID");
    std::vector<std::string> overrides = args->overrides;
    if (o.procs_per_node > 0)
      overrides.push_back(fmt::format("nodes.procs_per_node={}", o.procs_per_node));
    if (o.nnodes >= 1) {
      std::string list;
      for (int i = 0; i < o.nnodes; ++i) list += fmt::format("{}\"node-{}\"", i ? ", " : "", i);
      overrides.push_back("nodes.hosts=[" + list + "]");
    }
    spec::JobSpec spec = spec::load_file(args->spec_path, overrides);
    env = launch::node_environment(environment, spec.rendezvous.port);
    o.coordinator = !args->coordinator.empty() ? args->coordinator : env.coordinator;
    o.token = read_token(args->token_file);
    o.spec_yaml = spec::to_yaml_redacted(spec);
    const char* tls_env = std::getenv("PTRAIN_TLS_DIR");
    o.tls_dir = !args->tls_dir.empty() ? args->tls_dir : tls_env ? tls_env : "";
    return launch::run_node(std::move(spec), o).exit_code;
  };
}

}  // namespace

PTRAIN_COMMAND({"node",
                "Run this node's part of a job (one `ptrain node` per node: srun, "
                "Kubernetes, by hand)",
                false, 12, setup_node})

}  // namespace ptrain::cli
