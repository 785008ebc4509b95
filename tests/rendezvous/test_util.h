// Helpers for rendezvous tests: a coordinator on 127.0.0.1:0 and a bounded wait for a condition.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>

#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/token.h"

namespace ptrain::rendezvous::testing {

inline std::unique_ptr<Coordinator> start_coordinator(CoordinatorOptions opt,
                                                      CoordinatorEvents ev = {}) {
  if (opt.token.empty()) opt.token = make_token();
  if (opt.mesh.size() != opt.world_size) opt.mesh = MeshShape{opt.world_size, 1, 1};
  auto c = std::make_unique<Coordinator>(std::move(opt), std::move(ev));
  c->start();
  return c;
}

// A flag other threads set; wait_for() returns whether it was set within the timeout.
class Latch {
 public:
  void set() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      set_ = true;
    }
    cv_.notify_all();
  }
  bool wait_for(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

}  // namespace ptrain::rendezvous::testing
