// `ptrain bench rdzv`: one in-process coordinator and N simulated workers (asynchronous gRPC
// calls, a few threads) that all Join and then pass one Barrier.
#pragma once

#include "ptrain/core/time.h"

namespace ptrain::rendezvous {

struct RdzvBenchOptions {
  int clients = 1024;
  int connections = 0;  // TCP connections the clients spread over; 0 = one per client
  bool tls = false;     // mutual TLS with a fresh job identity (rendezvous.tls: on)
  Millis timeout{std::chrono::seconds(120)};
};

struct RdzvBenchResult {
  double connect_s = 0;  // opening every connection (not part of the rendezvous figure)
  double join_s = 0;     // first Join sent -> last Join answered
  double total_s = 0;    // first Join sent -> last Barrier answered: the rendezvous figure
};

// Throws RemoteError/TimeoutError when a client fails or the run exceeds options.timeout.
RdzvBenchResult run_rdzv_bench(const RdzvBenchOptions& options);

}  // namespace ptrain::rendezvous
