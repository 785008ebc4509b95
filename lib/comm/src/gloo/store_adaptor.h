// Internal: gloo's rendezvous::Store implemented over our rendezvous::Store, so Gloo pairs
// exchange their addresses through the coordinator (or a MemoryStore in tests).
#pragma once

#include <gloo/rendezvous/store.h>

#include <memory>

#include "ptrain/rendezvous/store.h"

namespace ptrain::comm::detail {

class GlooStoreAdaptor : public gloo::rendezvous::Store {
 public:
  // `timeout` bounds get() (gloo's get has no timeout of its own).
  GlooStoreAdaptor(std::shared_ptr<rendezvous::Store> store, Millis timeout)
      : store_(std::move(store)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    store_->set(key, rendezvous::Bytes(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    auto value = store_->get(key, timeout_);
    return std::vector<char>(value.begin(), value.end());
  }
  void wait(const std::vector<std::string>& keys) override { store_->wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    store_->wait(keys, std::min<Millis>(timeout, timeout_));
  }

 private:
  std::shared_ptr<rendezvous::Store> store_;
  Millis timeout_;
};

}  // namespace ptrain::comm::detail
