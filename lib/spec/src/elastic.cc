#include "ptrain/spec/elastic.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace ptrain::spec {
namespace {

int slots_of(const JobSpec& spec, const HostSlots& h) {
  return h.slots ? h.slots : spec.nodes.procs_per_node;
}

// Subsets are enumerated up to this many hosts; beyond, hosts are dropped from the end.
constexpr size_t kEnumerateHosts = 16;

}  // namespace

int min_nodes(const JobSpec& spec) {
  return spec.nodes.min_nodes > 0 ? spec.nodes.min_nodes
                                  : static_cast<int>(spec.nodes.hosts.size());
}

Reshape reshape_for_hosts(const JobSpec& spec, const std::vector<HostSlots>& hosts) {
  Reshape out;
  const int min = min_nodes(spec);
  const int n = static_cast<int>(hosts.size());
  if (n < min) {
    out.reason =
        fmt::format("{} host{} left, fewer than nodes.min_nodes = {}", n, n == 1 ? "" : "s", min);
    return out;
  }
  const ParallelSpec& p = spec.parallel;
  if (!spec.launcher_only() && p.data_mode == "async") {
    out.reason = "data_mode: async jobs do not shrink (their parameter servers live on the hosts)";
    return out;
  }
  int world = 0;
  for (const auto& h : hosts) world += slots_of(spec, h);
  const int tp_pp = p.tensor * p.pipeline;
  if (world % tp_pp != 0) {
    out.reason = fmt::format(
        "the {} workers left do not form whole tensor x pipeline = {} x {} groups, so the mesh "
        "cannot be re-formed",
        world, p.tensor, p.pipeline);
    return out;
  }
  const int data = world / tp_pp;
  // data x grad_accum is the number of (rank, accumulation step) slices of the global batch.
  const int slices = p.data * spec.train.grad_accum;
  if (!spec.launcher_only() && slices % data != 0) {
    out.reason = fmt::format(
        "the global batch of {} splits into data x grad_accum = {} x {} = {} slices, which {} "
        "data ranks cannot share evenly",
        spec.data.batch_size, p.data, spec.train.grad_accum, slices, data);
    return out;
  }
  out.ok = true;
  out.spec = spec;
  out.spec.nodes.hosts = hosts;
  out.spec.nodes.hostfile.clear();
  out.spec.parallel.data = data;
  if (!spec.launcher_only()) out.spec.train.grad_accum = slices / data;
  return out;
}

std::vector<int> shrink_world_sizes(const JobSpec& spec) {
  const auto& all = spec.nodes.hosts;
  const size_t n = all.size();
  const int min = min_nodes(spec);
  std::set<int, std::greater<int>> worlds;
  auto consider = [&](const std::vector<HostSlots>& hosts) {
    Reshape r = reshape_for_hosts(spec, hosts);
    if (r.ok) worlds.insert(r.spec.world_size());
  };
  if (n <= kEnumerateHosts) {
    for (uint32_t mask = 1; mask < (1u << n) - 1; ++mask) {
      std::vector<HostSlots> hosts;
      for (size_t i = 0; i < n; ++i)
        if (mask & (1u << i)) hosts.push_back(all[i]);
      if (static_cast<int>(hosts.size()) >= min) consider(hosts);
    }
  } else {
    for (size_t k = static_cast<size_t>(std::max(min, 1)); k < n; ++k)
      consider(std::vector<HostSlots>(all.begin(), all.begin() + static_cast<long>(k)));
  }
  return {worlds.begin(), worlds.end()};
}

}  // namespace ptrain::spec
