// The hosts of a multi-host job (`ptrain launch`): parsing `--hosts a:4,b:4`, Slurm's node lists
// and task counts, and the checked assignment of ranks to hosts.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "ptrain/spec/job_spec.h"

namespace ptrain::launch {

// One host of the job with the ranks it runs: [first_rank, first_rank + procs).
struct HostPlan {
  std::string host;
  int node_rank = 0;
  int slots = 0;
  int first_rank = 0;
  int procs = 0;
};

// "a:4,b:4" or "a,b" (slots 0 = procs_per_node). Throws ConfigError for an empty name or a
// slot count that is not a whole number.
std::vector<spec::HostSlots> parse_hosts_flag(const std::string& text);

// Slurm's SLURM_JOB_NODELIST syntax: "node[01-04,07],gpu-a[1-2],login" -> every name, in order,
// zero padding kept. Throws ConfigError for unbalanced brackets or bad ranges.
std::vector<std::string> expand_slurm_nodelist(const std::string& list);
// Slurm's SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE syntax: "2(x3),1" -> {2, 2, 2, 1}.
std::vector<int> expand_slurm_tasks(const std::string& text);

// The hosts of the Slurm allocation we run in. Slots: SLURM_NTASKS_PER_NODE (or
// SLURM_TASKS_PER_NODE), else SLURM_GPUS_ON_NODE, else 0 (= procs_per_node). `getenv` is
// injectable for tests. Throws ConfigError when SLURM_JOB_NODELIST is unset.
std::vector<spec::HostSlots> slurm_hosts(
    const std::function<const char*(const char*)>& getenv_fn = nullptr);

// Assigns ranks 0..world_size-1 to the hosts in order, each up to its slots (0 = procs_per_node);
// hosts left without a rank are dropped. Throws ConfigError for duplicate hosts, zero slots and
// more ranks than slots, naming the host or the counts.
std::vector<HostPlan> plan_hosts(const std::vector<spec::HostSlots>& hosts, int procs_per_node,
                                 int world_size);

}  // namespace ptrain::launch

namespace ptrain::launch {

// Where the parameter servers of an async job run: server i on `server_hosts[i % size]`, or on
// host i % hosts when that list is empty (as `ptrain launch` places them). Throws ConfigError
// for a named host that is not in `plan`, and for a host given more servers than it runs ranks.
std::vector<size_t> place_servers(const std::vector<HostPlan>& plan, int servers,
                                  const std::vector<std::string>& server_hosts);

}  // namespace ptrain::launch
