// The Store every rank uses in a real job: a client of the coordinator's key-value service.
// Blocking calls (get, wait, multi_get) wait on the server, not by polling.
#pragma once

#include <memory>
#include <string>

#include "ptrain/core/time.h"
#include "ptrain/rendezvous/store.h"

namespace ptrain::rendezvous {

namespace detail {
class Connection;
}

class GrpcStore : public Store {
 public:
  // Connects lazily; rpc_deadline bounds every non-blocking call, blocking calls get their own
  // timeout plus rpc_deadline. Unreachable coordinator -> RemoteError naming the address.
  GrpcStore(std::string address, std::string token, Millis rpc_deadline = kDefaultRpcDeadline);
  GrpcStore(std::shared_ptr<detail::Connection> conn, Millis rpc_deadline = kDefaultRpcDeadline);
  ~GrpcStore() override;

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
  std::shared_ptr<detail::Connection> conn_;
  Millis rpc_deadline_;
};

}  // namespace ptrain::rendezvous
