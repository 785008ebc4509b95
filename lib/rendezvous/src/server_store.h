// The coordinator's key-value store: a Store for in-process callers plus waits that finish
// through a callback (from the set() that satisfies them or from the timer thread), so a gRPC
// handler never blocks while a client waits for keys.
#pragma once

#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "ptrain/rendezvous/store.h"
#include "timer_queue.h"

namespace ptrain::rendezvous::detail {

struct WaitOutcome {
  enum class Code { Ok, Timeout, Cancelled };
  Code code = Code::Ok;
  std::string message;        // why it failed (names the missing keys)
  std::vector<Bytes> values;  // one per key, when Ok
};

class ServerStore : public Store {
 public:
  using Done = std::function<void(WaitOutcome)>;
  explicit ServerStore(TimerQueue& timers) : timers_(timers) {}
  ~ServerStore() override;

  // Calls done exactly once: with the values when every key exists (maybe right away, on this
  // thread), with Timeout at `deadline`, or with Cancelled from cancel_all().
  void wait_async(std::vector<std::string> keys, Clock::time_point deadline, Done done);
  // Finishes every pending wait with Cancelled and refuses new ones.
  void cancel_all(const std::string& reason);

  void set(const std::string& key, const Bytes& value) override;
  Bytes get(const std::string& key, Millis timeout = kDefaultStoreTimeout) override;
  int64_t add(const std::string& key, int64_t delta) override;
  Bytes compare_set(const std::string& key, const std::optional<Bytes>& expected,
                    const Bytes& desired) override;
  // Like compare_set, and tells whether it swapped.
  Bytes compare_set(const std::string& key, const std::optional<Bytes>& expected,
                    const Bytes& desired, bool* swapped);
  void wait(const std::vector<std::string>& keys, Millis timeout = kDefaultStoreTimeout) override;
  std::vector<Bytes> multi_get(const std::vector<std::string>& keys,
                               Millis timeout = kDefaultStoreTimeout) override;
  bool check(const std::vector<std::string>& keys) override;
  void erase(const std::string& key) override;

 private:
  struct Waiter;
  using WaiterList = std::list<std::shared_ptr<Waiter>>;
  struct Waiter {
    std::vector<std::string> keys;
    size_t next = 0;  // keys[0, next) are present
    Done done;
    Clock::time_point start;
    TimerQueue::Id timer = 0;
    bool finished = false;
    std::string parked_on;  // the key whose list holds this waiter
    WaiterList::iterator pos;
  };
  using Completion = std::pair<Done, WaitOutcome>;

  // With mu_ held: advances w past present keys; completes it or parks it on its next key.
  void advance_locked(const std::shared_ptr<Waiter>& w, std::vector<Completion>& out);
  void unpark_locked(Waiter& w);
  void key_changed_locked(const std::string& key, std::vector<Completion>& out);
  void expire(const std::shared_ptr<Waiter>& w);
  static void run(std::vector<Completion>& completions);
  std::vector<Bytes> blocking_wait(const std::vector<std::string>& keys, Millis timeout);

  TimerQueue& timers_;
  std::mutex mu_;
  std::unordered_map<std::string, Bytes> data_;
  std::unordered_map<std::string, WaiterList> parked_;
  bool closed_ = false;
  std::string closed_reason_;
};

}  // namespace ptrain::rendezvous::detail
