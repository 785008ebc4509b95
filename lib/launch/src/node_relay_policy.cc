#include "ptrain/launch/node_relay_policy.h"

#include <algorithm>

#include "ptrain/core/env.h"

namespace ptrain::launch {

Millis node_relay_period(const spec::JobSpec& spec) {
  if (spec.launcher_only()) return Millis(0);
  if (env_or("PTRAIN_NODE_RELAY", "1") == "0") return Millis(0);
  auto ms = static_cast<int64_t>(spec.fault_tolerance.heartbeat_s * 1000);
  return Millis(std::max<int64_t>(ms, 1));
}

void set_node_relay(const spec::JobSpec& spec, AgentOptions& agent) {
  agent.node_relay_heartbeat = node_relay_period(spec);
  agent.relay_tree_fanout = spec.rendezvous.tree_fanout;
  agent.relay_tree_timeout = Millis(static_cast<int64_t>(spec.rendezvous.timeout_s * 1000));
}

}  // namespace ptrain::launch
