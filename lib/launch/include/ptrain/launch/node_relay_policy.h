// When a node's workers meet the coordinator through the node's relay (rendezvous/node_relay.h)
// instead of one connection each: built-in workers do; `command:` jobs keep the flat path.
#pragma once

#include "ptrain/core/time.h"
#include "ptrain/launch/agent.h"
#include "ptrain/spec/job_spec.h"

namespace ptrain::launch {

// The relay's upward heartbeat period for this job, or 0 for the flat path. PTRAIN_NODE_RELAY=0
// in the launcher's environment turns the relay off (to compare the two paths).
Millis node_relay_period(const spec::JobSpec& spec);

// The agent's relay settings for this job: the period above and the relay tree
// (rendezvous.tree_fanout; a relay waits rendezvous.timeout_s for its parent's address).
void set_node_relay(const spec::JobSpec& spec, AgentOptions& agent);

}  // namespace ptrain::launch
