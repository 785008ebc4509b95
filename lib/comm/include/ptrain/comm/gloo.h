// The Gloo backend (CPU, TCP): a Communicator over host buffers, bootstrapped through our
// rendezvous::Store, with a worker thread that runs collectives in issue order.
#pragma once

#include <memory>
#include <string>

#include "ptrain/comm/communicator.h"
#include "ptrain/rendezvous/store.h"

namespace ptrain::comm {

struct GlooOptions {
  CommOptions comm;
  // Address this rank listens on and advertises to its peers. Empty hostname and iface =
  // 127.0.0.1. For multi-host jobs use gloo_host_for(coordinator address).
  std::string hostname = "127.0.0.1";
  std::string iface;  // network interface name (eth0, ...); takes precedence over hostname
};

// Connects the group's ranks through `store` (pass a store already prefixed for this group; all
// ranks of the group must call this). Throws TimeoutError when a peer does not show up within
// options.comm.timeout.
std::unique_ptr<Communicator> create_gloo_communicator(const GroupInfo& group,
                                                       std::shared_ptr<rendezvous::Store> store,
                                                       const GlooOptions& options = {});

// The local address that routes to the coordinator ("host:port" or "host"): 127.0.0.1 for a
// loopback coordinator, else the source address the kernel picks for that destination.
std::string gloo_host_for(const std::string& coordinator_address);

}  // namespace ptrain::comm
