// A single thread that runs callbacks at deadlines: it ends the server's waits (Get, Wait,
// Barrier, Join) on time without pinning one thread per waiting client.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "ptrain/core/time.h"

namespace ptrain::rendezvous::detail {

class TimerQueue {
 public:
  using Id = uint64_t;
  TimerQueue();
  ~TimerQueue();  // stops without running pending callbacks
  // Runs fn on the timer thread at `when` unless cancelled first.
  Id schedule(Clock::time_point when, std::function<void()> fn);
  // True when the callback had not started yet (it now never runs).
  bool cancel(Id id);

 private:
  void loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<Clock::time_point, Id> order_;
  std::unordered_map<
      Id, std::pair<std::multimap<Clock::time_point, Id>::iterator, std::function<void()>>>
      entries_;
  Id next_id_ = 1;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ptrain::rendezvous::detail
