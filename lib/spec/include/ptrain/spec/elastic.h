// Elastic jobs (nodes.min_nodes): the spec of a job re-formed on fewer hosts. The data-parallel
// degree shrinks with the workers and grad_accum grows by the same factor, so every optimizer
// step still reads the same global batch (the sampler gives rank d, microbatch m the same rows
// for any split of data x grad_accum) and the loss curve stays the one of the full job.
#pragma once

#include <string>
#include <vector>

#include "ptrain/spec/job_spec.h"

namespace ptrain::spec {

// nodes.min_nodes, or the host count when it is not set.
int min_nodes(const JobSpec& spec);

struct Reshape {
  bool ok = false;
  std::string reason;  // why the job cannot run on those hosts (when !ok)
  JobSpec spec;        // the job on those hosts (when ok)
};

// The job on `hosts` (what is left of its hosts): nodes.hosts replaced, parallel.data =
// workers / (tensor x pipeline), train.grad_accum scaled so data x grad_accum is unchanged.
// Refused, with the reason, when fewer than min_nodes hosts are left, the workers left do not
// form whole tensor x pipeline groups, the global batch does not split over the new data
// degree, or the job runs parameter servers (data_mode: async).
Reshape reshape_for_hosts(const JobSpec& spec, const std::vector<HostSlots>& hosts);

// The world sizes the job can shrink to, largest first: for each host count from min_nodes up
// to one fewer than the job has, the worker counts of the host subsets that reshape_for_hosts
// accepts. Empty when min_nodes is the host count.
std::vector<int> shrink_world_sizes(const JobSpec& spec);

}  // namespace ptrain::spec
