// Internal: the completion state shared between an operation and its Work handle, and the
// per-communicator FIFO worker thread that runs host-side operations in issue order.
#pragma once

#include <fmt/format.h>

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "ptrain/comm/communicator.h"
#include "ptrain/core/error.h"

namespace ptrain::comm::detail {

// Grace period a timed-out wait gives the aborted operation to let go of the caller's buffers.
inline constexpr Millis kAbortGrace{std::chrono::seconds(10)};

class OpState {
 public:
  explicit OpState(std::string what) : what_(std::move(what)) {}
  const std::string& what() const { return what_; }
  void finish(std::exception_ptr error);
  bool done();
  // True when finished within `timeout`.
  bool wait_for(Millis timeout);
  // Rethrows the failure, if any (call only when done).
  void rethrow();

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

// Aborts the communicator an op belongs to; may be gone by the time a Work times out.
using AbortFn = std::function<void(const std::string& reason)>;

// A Work over an OpState. On timeout it aborts the communicator, gives the op kAbortGrace to
// let go of its buffers, then throws TimeoutError naming the op.
class StateWork : public Work {
 public:
  StateWork(std::shared_ptr<OpState> state, AbortFn abort, std::thread waiter = {})
      : state_(std::move(state)), abort_(std::move(abort)), waiter_(std::move(waiter)) {}
  ~StateWork() override;
  bool test() override { return state_->done(); }
  void wait(Millis timeout) override;

 private:
  std::shared_ptr<OpState> state_;
  AbortFn abort_;
  std::thread waiter_;  // set for ops that complete on their own thread (point-to-point)
};

// Runs submitted operations one at a time, in submission order, on one thread.
class OpQueue {
 public:
  OpQueue();
  ~OpQueue();  // fails ops that never started, finishes the running one, joins
  OpQueue(const OpQueue&) = delete;
  OpQueue& operator=(const OpQueue&) = delete;

  std::shared_ptr<OpState> submit(std::string what, std::function<void()> fn);

 private:
  void loop();
  struct Item {
    std::shared_ptr<OpState> state;
    std::function<void()> fn;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> items_;
  bool stop_ = false;
  std::thread thread_;
};

// The pieces every host-side backend (Gloo, shm) builds its collectives from. `Core` has
// `abort(reason)`, `queue()` (an OpQueue) and `run(meta, what, body)`, which checks the op's
// metadata against the peers' and runs the body.

// Aborts `core` if it still exists when a Work times out.
template <class Core>
AbortFn abort_of(const std::shared_ptr<Core>& core) {
  return [weak = std::weak_ptr<Core>(core)](const std::string& reason) {
    if (auto c = weak.lock()) c->abort(reason);
  };
}

// Queues `body` on the core's FIFO thread (in issue order) and returns its Work.
template <class Core, class Meta>
std::unique_ptr<Work> submit_op(const std::shared_ptr<Core>& core, Meta meta, std::string what,
                                std::function<void()> body) {
  Core* c = core.get();  // the queue lives inside the core and is joined first
  auto state = core->queue().submit(
      what, [c, meta, what, body = std::move(body)] { c->run(meta, what, body); });
  return std::make_unique<StateWork>(std::move(state), abort_of(core));
}

// A point-to-point peer or root must be a rank of the group.
inline void check_peer(int peer, int size, const char* role, const std::string& what) {
  if (peer < 0 || peer >= size)
    throw ConfigError(
        fmt::format("{}: {} {} is outside the group (size {})", what, role, peer, size));
}

}  // namespace ptrain::comm::detail
