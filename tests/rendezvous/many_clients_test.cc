// 1,000 concurrent GrpcStore clients, each on its own connection, blocked in get() and wait() at
// the same time: the coordinator keeps serving and releases them all.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "ptrain/rendezvous/grpc_store.h"
#include "test_util.h"

namespace ptrain::rendezvous {
namespace {

TEST(ManyClientsTest, ThousandConcurrentWaitingClientsAreAllServed) {
  constexpr int kClients = 1000;
  CoordinatorOptions opt;
  opt.token = make_token();
  auto c = testing::start_coordinator(opt);
  std::atomic<int> ok{0};
  std::vector<std::string> errors(kClients);
  std::vector<std::string> arrived_keys, done_keys;
  std::vector<std::thread> threads;
  threads.reserve(kClients);
  for (int i = 0; i < kClients; ++i) {
    arrived_keys.push_back("arrived/" + std::to_string(i));
    done_keys.push_back("done/" + std::to_string(i));
    threads.emplace_back([&, i] {
      try {
        GrpcStore store(c->address(), opt.token);
        store.set("arrived/" + std::to_string(i), "1");
        // Every client now blocks on the server until the last one has arrived.
        if (store.get("go", Millis(60000)) != "1") throw std::runtime_error("bad go value");
        store.set("done/" + std::to_string(i), "1");
        store.wait({"done/all"}, Millis(60000));
        ok.fetch_add(1);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  c->store().wait(arrived_keys, Millis(60000));
  // While up to 1,000 calls wait on the server, a new client is still served at once.
  GrpcStore probe(c->address(), opt.token);
  EXPECT_EQ(probe.add("probe", 1), 1);
  probe.set("go", "1");
  // All of them pass get("go"), then wait("done/all") over the wire.
  probe.wait(done_keys, Millis(60000));
  probe.set("done/all", "1");
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) EXPECT_EQ(errors[i], "") << "client " << i;
  EXPECT_EQ(ok.load(), kClients);
}

}  // namespace
}  // namespace ptrain::rendezvous
