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

}  // namespace ptrain::launch
