// The key-value Store that every rank meets through: the coordinator serves it over gRPC
// (GrpcStore), tests use MemoryStore. Communicators bootstrap over it (Gloo addresses, NCCL ids).
// Every blocking call takes a timeout and throws TimeoutError naming the keys it waited for.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ptrain/core/time.h"

namespace ptrain::rendezvous {

using Bytes = std::string;  // values are opaque bytes

class Store {
 public:
  virtual ~Store() = default;

  virtual void set(const std::string& key, const Bytes& value) = 0;
  // Waits until the key exists, then returns its value.
  virtual Bytes get(const std::string& key, Millis timeout = kDefaultStoreTimeout) = 0;
  // Atomically adds delta to the integer stored at key (absent = 0); returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // Sets key to desired if its value equals expected (or if it is absent and expected is
  // nullopt); returns the value after the call.
  virtual Bytes compare_set(const std::string& key, const std::optional<Bytes>& expected,
                            const Bytes& desired) = 0;
  // Waits until every key exists.
  virtual void wait(const std::vector<std::string>& keys,
                    Millis timeout = kDefaultStoreTimeout) = 0;
  virtual std::vector<Bytes> multi_get(const std::vector<std::string>& keys,
                                       Millis timeout = kDefaultStoreTimeout) = 0;
  // True when every key exists now (does not wait).
  virtual bool check(const std::vector<std::string>& keys) = 0;
  virtual void erase(const std::string& key) = 0;
};

// A Store view that prefixes every key, so groups and rounds do not collide.
class PrefixStore : public Store {
 public:
  PrefixStore(std::string prefix, std::shared_ptr<Store> base)
      : prefix_(std::move(prefix) + "/"), base_(std::move(base)) {}
  void set(const std::string& k, const Bytes& v) override { base_->set(prefix_ + k, v); }
  Bytes get(const std::string& k, Millis t = kDefaultStoreTimeout) override {
    return base_->get(prefix_ + k, t);
  }
  int64_t add(const std::string& k, int64_t d) override { return base_->add(prefix_ + k, d); }
  Bytes compare_set(const std::string& k, const std::optional<Bytes>& e, const Bytes& d) override {
    return base_->compare_set(prefix_ + k, e, d);
  }
  void wait(const std::vector<std::string>& ks, Millis t = kDefaultStoreTimeout) override {
    base_->wait(prefixed(ks), t);
  }
  std::vector<Bytes> multi_get(const std::vector<std::string>& ks,
                               Millis t = kDefaultStoreTimeout) override {
    return base_->multi_get(prefixed(ks), t);
  }
  bool check(const std::vector<std::string>& ks) override { return base_->check(prefixed(ks)); }
  void erase(const std::string& k) override { base_->erase(prefix_ + k); }

 private:
  std::vector<std::string> prefixed(const std::vector<std::string>& ks) const {
    std::vector<std::string> out;
    out.reserve(ks.size());
    for (const auto& k : ks) out.push_back(prefix_ + k);
    return out;
  }
  std::string prefix_;
  std::shared_ptr<Store> base_;
};

// Largest value a Store accepts (the coordinator refuses larger ones).
inline constexpr size_t kMaxValueBytes = 64ull << 20;

}  // namespace ptrain::rendezvous
