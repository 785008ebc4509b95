// Test harness: N ranks as threads over one MemoryStore, each with its own communicator of the
// backend under test ("gloo" or "shm").
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ptrain/comm/gloo.h"
#include "ptrain/comm/shm.h"
#include "ptrain/rendezvous/memory_store.h"

namespace ptrain::comm::testing {

inline std::unique_ptr<Communicator> make_gloo(std::shared_ptr<rendezvous::Store> store,
                                               const std::string& name, int rank, int size,
                                               CommOptions options = {}) {
  GlooOptions gloo;
  gloo.comm = options;
  return create_gloo_communicator(
      {name, rank, size}, std::make_shared<rendezvous::PrefixStore>("comm/" + name, store), gloo);
}

inline std::unique_ptr<Communicator> make_comm(const std::string& backend,
                                               std::shared_ptr<rendezvous::Store> store,
                                               const std::string& name, int rank, int size,
                                               CommOptions options = {}) {
  if (backend == "gloo") return make_gloo(std::move(store), name, rank, size, options);
  ShmOptions shm;
  shm.comm = options;
  shm.tag = "test";
  return create_shm_communicator(
      {name, rank, size}, std::make_shared<rendezvous::PrefixStore>("comm/" + name, store), shm);
}

// The backends every collective test runs over.
inline const std::vector<std::string>& host_backends() {
  static const std::vector<std::string> all{"gloo", "shm"};
  return all;
}

// Runs body(rank) on n threads; returns each rank's failure (nullptr on success).
inline std::vector<std::exception_ptr> run_ranks(int n, const std::function<void(int)>& body) {
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

// Rethrows the first failure, so a test fails with the rank's own message.
inline void expect_all_ok(const std::vector<std::exception_ptr>& errors) {
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

inline std::string message_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  }
  return {};
}

}  // namespace ptrain::comm::testing
