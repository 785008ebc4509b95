// `ptrain node`: the per-node entry point (torchrun's shape), for schedulers that start one
// process per node themselves (srun, a Kubernetes JobSet, a shell loop). Node 0 hosts the
// coordinator and the supervisor; every node, node 0 included, runs the same `ptrain agent` that
// `ptrain launch` starts over ssh. The agent's setup, its event lines and the supervisor's signal
// commands travel through the coordinator's store instead of an ssh session (NodeRelay).
#pragma once

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "ptrain/core/time.h"
#include "ptrain/launch/launcher.h"
#include "ptrain/spec/job_spec.h"

namespace ptrain::launch {

struct NodeLaunchOptions {
  int nnodes = 1;
  int node_rank = 0;
  // `ptrain node --join`: this node joins a running elastic job (nodes.min_nodes below nnodes)
  // in the next free place, taken in at a checkpoint while the job has fewer than nnodes nodes.
  bool join = false;
  std::string coordinator;  // HOST:PORT; empty = rendezvous.bind (or 127.0.0.1):rendezvous.port
  int procs_per_node = 0;   // > 0: overrides nodes.procs_per_node (PET_NPROC_PER_NODE)
  std::string token;        // the job token (PTRAIN_TOKEN or --token-file); never argv
  std::string spec_yaml;    // the resolved spec (job.yaml)
  // rendezvous.tls: the folder `ptrain tls init` wrote, the same identity on every node
  // (--tls-dir or $PTRAIN_TLS_DIR); empty: none (plaintext unless rendezvous.tls is on).
  std::string tls_dir;
  std::string local_binary;  // this ptrain; empty = /proc/self/exe
  std::FILE* out = stdout;
  int tty = -1;  // as LauncherOptions::tty
};

// Where a node's settings come from when no flag gives them: the environment of a scheduler.
struct NodeEnvironment {
  int nnodes = -1;  // -1: not set
  int node_rank = -1;
  int procs_per_node = -1;
  std::string coordinator;  // HOST:PORT, or HOST: (port from the spec)
  std::string source;       // "kubernetes", "slurm" or empty
};

// Reads PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT (PyTorchJob and
// JobSet; PyTorchJob's RANK and WORLD_SIZE count pods there, so they stand in for the node rank
// and count when PET_* are absent), or SLURM_NODEID, SLURM_NNODES, SLURM_JOB_NODELIST and
// SLURM_JOB_ID (first host = coordinator; port 15000 + job id % 20000 when the spec sets none).
// `env` maps names to values (tests pass their own). Throws ConfigError for a value that is not
// a number or a node list that does not parse.
NodeEnvironment node_environment(const std::map<std::string, std::string>& env, int spec_port = 0);
// The process environment as such a map.
std::map<std::string, std::string> process_environment();

// Checks the options (one ConfigError line each: a node rank outside 0..nnodes-1, no token, no
// coordinator port) before anything starts.
void check_node_options(const NodeLaunchOptions& options, const spec::JobSpec& spec);

// Runs this node's part of the job to its end: node 0 supervises the whole job and returns its
// result; the other nodes join (retrying until rendezvous.timeout_s), run their agents and return
// the job's exit code as node 0 published it.
JobResult run_node(spec::JobSpec spec, NodeLaunchOptions options);

}  // namespace ptrain::launch
