#include "work.h"

#include <fmt/format.h>

#include "ptrain/core/error.h"

namespace ptrain::comm::detail {

void OpState::finish(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::move(error);
    done_ = true;
  }
  cv_.notify_all();
}

bool OpState::done() {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

bool OpState::wait_for(Millis timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return done_; });
}

void OpState::rethrow() {
  std::lock_guard<std::mutex> lock(mu_);
  PTRAIN_CHECK(done_, "rethrow on an unfinished op");
  if (error_) std::rethrow_exception(error_);
}

StateWork::~StateWork() {
  if (waiter_.joinable()) waiter_.join();
}

void StateWork::wait(Millis timeout) {
  if (!state_->wait_for(timeout)) {
    std::string reason = fmt::format("{} timed out after {} ms waiting for completion",
                                     state_->what(), timeout.count());
    if (abort_) abort_(reason);
    // The abort makes the op fail promptly; wait for it so that the caller may reuse buffers.
    state_->wait_for(kAbortGrace);
    throw TimeoutError(reason,
                       "a peer may have died, stalled, or issued a different operation; the "
                       "communicator is aborted");
  }
  if (waiter_.joinable()) waiter_.join();
  state_->rethrow();
}

OpQueue::OpQueue() : thread_([this] { loop(); }) {}

OpQueue::~OpQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::shared_ptr<OpState> OpQueue::submit(std::string what, std::function<void()> fn) {
  auto state = std::make_shared<OpState>(std::move(what));
  {
    std::lock_guard<std::mutex> lock(mu_);
    PTRAIN_CHECK(!stop_, "submit on a stopped queue");
    items_.push_back({state, std::move(fn)});
  }
  cv_.notify_one();
  return state;
}

void OpQueue::loop() {
  for (;;) {
    Item item;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !items_.empty(); });
      if (items_.empty()) return;
      if (stop_) {
        // Never started: fail instead of running against a communicator being destroyed.
        for (auto& pending : items_)
          pending.state->finish(std::make_exception_ptr(
              RemoteError(pending.state->what() + ": the communicator was destroyed first")));
        items_.clear();
        return;
      }
      item = std::move(items_.front());
      items_.pop_front();
    }
    std::exception_ptr error;
    try {
      item.fn();
    } catch (...) {
      error = std::current_exception();
    }
    item.state->finish(error);
  }
}

}  // namespace ptrain::comm::detail
