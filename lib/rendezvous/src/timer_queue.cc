#include "timer_queue.h"

namespace ptrain::rendezvous::detail {

TimerQueue::TimerQueue() : thread_([this] { loop(); }) {}

TimerQueue::~TimerQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

TimerQueue::Id TimerQueue::schedule(Clock::time_point when, std::function<void()> fn) {
  Id id;
  bool earliest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = next_id_++;
    auto it = order_.emplace(when, id);
    entries_.emplace(id, std::make_pair(it, std::move(fn)));
    earliest = it == order_.begin();
  }
  if (earliest) cv_.notify_all();
  return id;
}

bool TimerQueue::cancel(Id id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  order_.erase(it->second.first);
  entries_.erase(it);
  return true;
}

void TimerQueue::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (order_.empty()) {
      cv_.wait(lock);
      continue;
    }
    auto when = order_.begin()->first;
    if (Clock::now() < when) {
      cv_.wait_until(lock, when);
      continue;
    }
    Id id = order_.begin()->second;
    order_.erase(order_.begin());
    auto node = entries_.extract(id);
    lock.unlock();
    node.mapped().second();
    lock.lock();
  }
}

}  // namespace ptrain::rendezvous::detail
