// The CPU thread pool behind parallel_for: workers sleep on a condition variable between
// regions and are started or stopped when the thread setting changes.
#include "cpu_parallel.h"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "ptrain/tensor/ops.h"

namespace ptrain::tensor::cpu {
namespace {

thread_local bool t_in_region = false;

class Pool {
 public:
  ~Pool() { resize(0); }

  std::mutex& dispatch_mutex() { return dispatch_; }

  // Runs fn(part) for part in [0, parts); part 0 on the caller. Holds dispatch_.
  void run(int parts, const std::function<void(int)>& fn) {
    const int want = std::max(cpu_threads(), parts) - 1;
    if (static_cast<int>(workers_.size()) != want) resize(want);
    std::exception_ptr first_error;
    {
      std::lock_guard<std::mutex> lock(mu_);
      task_ = &fn;
      parts_ = parts;
      pending_ = static_cast<int>(workers_.size());
      errors_.assign(workers_.size() + 1, nullptr);
      ++generation_;
    }
    wake_.notify_all();
    t_in_region = true;
    try {
      fn(0);
    } catch (...) {
      first_error = std::current_exception();
    }
    t_in_region = false;
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
    task_ = nullptr;
    if (!first_error) {
      for (auto& e : errors_) {
        if (e) {
          first_error = e;
          break;
        }
      }
    }
    lock.unlock();
    if (first_error) std::rethrow_exception(first_error);
  }

 private:
  void resize(int n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      ++generation_;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    stop_ = false;
    // Workers start from the current generation, so a region posted before one gets scheduled is
    // still seen as new.
    const uint64_t start = generation_;
    for (int i = 0; i < n; ++i) workers_.emplace_back([this, i, start] { loop(i + 1, start); });
  }

  void loop(int part, uint64_t seen) {
    t_in_region = true;
    for (;;) {
      const std::function<void(int)>* task;
      int parts;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        task = task_;
        parts = parts_;
      }
      std::exception_ptr err;
      try {
        if (part < parts) (*task)(part);
      } catch (...) {
        err = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        errors_[part] = err;
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  std::mutex dispatch_;  // one parallel region at a time
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::vector<std::exception_ptr> errors_;
  const std::function<void(int)>* task_ = nullptr;
  uint64_t generation_ = 0;
  int parts_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

int parallel_threads(int64_t n, int64_t min_per_thread) {
  if (t_in_region) return 1;
  int64_t by_size = n / std::max<int64_t>(min_per_thread, 1);
  return static_cast<int>(std::clamp<int64_t>(by_size, 1, cpu_threads()));
}

void parallel_for(int64_t n, int64_t min_per_thread,
                  const std::function<void(int64_t, int64_t)>& fn) {
  const int parts = parallel_threads(n, min_per_thread);
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  std::unique_lock<std::mutex> lock(pool().dispatch_mutex(), std::try_to_lock);
  if (!lock.owns_lock()) {  // another caller (e.g. a rank thread) holds the pool
    fn(0, n);
    return;
  }
  pool().run(parts, [&](int part) {
    int64_t begin = n * part / parts;
    int64_t end = n * (part + 1) / parts;
    if (begin < end) fn(begin, end);
  });
}

}  // namespace ptrain::tensor::cpu
