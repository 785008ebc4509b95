// An in-process Store for tests and for threads of one process (ranks as threads).
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>

#include "ptrain/rendezvous/store.h"

namespace ptrain::rendezvous {

class MemoryStore : public Store {
 public:
  void set(const std::string& key, const Bytes& value) override;
  Bytes get(const std::string& key, Millis timeout = kDefaultStoreTimeout) override;
  int64_t add(const std::string& key, int64_t delta) override;
  Bytes compare_set(const std::string& key, const std::optional<Bytes>& expected,
                    const Bytes& desired) override;
  void wait(const std::vector<std::string>& keys, Millis timeout = kDefaultStoreTimeout) override;
  std::vector<Bytes> multi_get(const std::vector<std::string>& keys,
                               Millis timeout = kDefaultStoreTimeout) override;
  bool check(const std::vector<std::string>& keys) override;
  void erase(const std::string& key) override;

 private:
  // Waits with lock held until every key exists; throws TimeoutError naming the missing keys.
  void wait_locked(std::unique_lock<std::mutex>& lock, const std::vector<std::string>& keys,
                   Millis timeout);
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Bytes> data_;
};

// Shared by MemoryStore and the coordinator: "a, b and 3 more" for error messages.
std::string describe_keys(const std::vector<std::string>& keys, size_t max_named = 4);

}  // namespace ptrain::rendezvous
