// Attacks on a parameter server: it runs in its own process (this binary re-executed with
// PTRAIN_PS_ATTACK_SERVE set), so its peak resident memory (VmHWM in /proc/PID/status) measures
// what the attack cost it, not what the attacking client holds.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "ptrain.grpc.pb.h"
#include "ptrain/core/error.h"
#include "ptrain/optim/optimizer.h"
#include "ptrain/parallel/param_server.h"
#include "ptrain/rendezvous/token.h"
#include "ptrain/tensor/ops.h"
#include "support/served_self.h"

extern char** environ;

namespace ptrain::parallel {
namespace {

constexpr const char* kServeEnv = "PTRAIN_PS_ATTACK_SERVE";  // the shard's floats
constexpr const char* kTokenEnv = "PTRAIN_PS_ATTACK_TOKEN";

// The served process: a parameter server (one worker, SGD, a shard of $kServeEnv floats, all
// 1.0) on 127.0.0.1:0 whose port goes to stdout; it stops when its stdin closes (the test ended
// or died). Runs before main, so no test of this binary runs in it.
[[maybe_unused]] const bool kServed = [] {
  const char* floats = std::getenv(kServeEnv);
  if (!floats) return false;
  {
    const size_t n = std::stoul(floats);
    optim::ParamLayout layout;
    layout.add("w", 0, n, false);
    auto sgd = std::make_unique<optim::Sgd>(tensor::cpu_ops(), layout, optim::Shard::whole(layout));
    ParamServerOptions po;
    po.workers = 1;
    po.token = std::getenv(kTokenEnv) ? std::getenv(kTokenEnv) : rendezvous::make_token();
    ParamServer server(po, std::move(sgd), std::vector<float>(n, 1.0f));
    server.start();
    std::printf("%s\n", server.address().c_str());
    std::fflush(stdout);
    char c;
    while (::read(0, &c, 1) > 0) {
    }
  }
  std::_Exit(0);
}();

using ptrain::testing::peak_rss_bytes;

// This binary, serving a parameter server in a child process.
class ServedParamServer {
 public:
  ServedParamServer(const std::string& token, size_t floats)
      : served_({std::string(kServeEnv) + "=" + std::to_string(floats),
                 std::string(kTokenEnv) + "=" + token}) {}
  pid_t pid() const { return served_.pid(); }
  const std::string& address() const { return served_.first_line(); }

 private:
  ptrain::testing::ServedSelf served_;
};

// `attackers` Push calls of `body` gradient bytes at once, each on a connection of its own (so
// no one connection's flow control serialises them); attacker i sends `token_of(i)` ("" = none).
std::vector<grpc::StatusCode> push_all(const std::string& address, int attackers, size_t body,
                                       const std::function<std::string(int)>& token_of) {
  proto::PushRequest big;
  big.set_worker(0);
  big.set_lr(1.0f);
  big.set_grads(std::string(body, '\x7f'));  // 0x7f7f7f7f: a huge float gradient
  std::vector<grpc::StatusCode> codes(size_t(attackers), grpc::StatusCode::OK);
  std::vector<std::thread> threads;
  for (int i = 0; i < attackers; ++i)
    threads.emplace_back([&, i] {
      grpc::ChannelArguments a;
      a.SetMaxSendMessageSize(int(body) + (1 << 20));
      a.SetInt("ptrain.attacker", i);  // a channel (connection) of its own
      const std::string token = token_of(i);
      auto ch =
          grpc::CreateCustomChannel(address,
                                    token.empty() ? grpc::InsecureChannelCredentials()
                                                  : grpc::experimental::LocalCredentials(LOCAL_TCP),
                                    a);
      auto stub = proto::ParamServer::NewStub(ch);
      grpc::ClientContext ctx;
      if (!token.empty()) ctx.AddMetadata(rendezvous::kTokenMetadataKey, token);
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      proto::PushResponse resp;
      codes[size_t(i)] = stub->Push(&ctx, big, &resp).error_code();
    });
  for (auto& t : threads) t.join();
  return codes;
}

// One authenticated push of gradient 1.0 (SGD, lr 0.5) and a pull: the job's own traffic.
std::vector<float> push_and_pull(const std::string& address, const std::string& token,
                                 size_t floats, int64_t step) {
  ParamClient client(0, address, token);
  std::vector<float> grads(floats, 1.0f), params(floats, -1.0f);
  client.push(0, step, 0.5f, grads.data(), floats, false);
  client.pull(0, step + 1, params.data(), floats, Millis(30000));
  return params;
}

constexpr int kAttackers = 8;
constexpr int64_t kMiB = int64_t{1} << 20;

// Pushes of exactly the shard's size (60 MiB), so within the server's message limit: only the
// token check on the headers keeps the bodies out. Buffering them would cost 8 x 60 MiB.
TEST(ParamServerAttack, ShardSizedPushesWithoutTheTokenAreRefusedBeforeTheirBody) {
  const std::string token = rendezvous::make_token();
  constexpr size_t kFloats = size_t{15} << 20;  // 60 MiB of gradients
  ServedParamServer served(token, kFloats);
  ASSERT_GT(served.pid(), 0);
  ASSERT_FALSE(served.address().empty()) << "the served parameter server did not report its port";
  // One authenticated push first, so the baseline holds the cost of a legitimate one.
  auto params = push_and_pull(served.address(), token, kFloats, 0);
  ASSERT_EQ(params.front(), 0.5f);
  const int64_t before = peak_rss_bytes(served.pid());
  ASSERT_GT(before, 0);

  auto codes = push_all(served.address(), kAttackers, kFloats * sizeof(float), [](int i) {
    return i % 2 ? rendezvous::make_token() : std::string();  // a wrong token, or none
  });
  for (int i = 0; i < kAttackers; ++i)
    EXPECT_EQ(codes[size_t(i)], grpc::StatusCode::UNAUTHENTICATED) << "attacker " << i;

  const int64_t growth = peak_rss_bytes(served.pid()) - before;
  std::printf("peak RSS %lld MiB before, growth %lld MiB\n", static_cast<long long>(before >> 20),
              static_cast<long long>(growth >> 20));
  EXPECT_LT(growth, 256 * kMiB) << "the server's peak RSS grew by " << (growth >> 20)
                                << " MiB under " << kAttackers << " x "
                                << (kFloats * sizeof(float) >> 20) << " MiB unauthenticated Pushes";
  // It still serves the job, and applied none of the intruders' gradients (one more SGD step
  // of 0.5 from 0.5).
  params = push_and_pull(served.address(), token, kFloats, 1);
  EXPECT_EQ(params.front(), 0.0f);
  EXPECT_EQ(params.back(), 0.0f);
}

// Pushes far larger than the shard (60 MiB for a 4 MiB shard), from clients with the token (a
// worker gone wrong), are refused by the message limit. gRPC reads a message before it compares
// its size with the limit, so what bounds the memory they take is the server's quota (256 MiB
// for a shard this small), not the limit.
TEST(ParamServerAttack, PushesLargerThanTheShardAreRefusedWithinTheMemoryQuota) {
  const std::string token = rendezvous::make_token();
  constexpr size_t kFloats = size_t{1} << 20;  // 4 MiB of gradients
  ServedParamServer served(token, kFloats);
  ASSERT_GT(served.pid(), 0);
  ASSERT_FALSE(served.address().empty()) << "the served parameter server did not report its port";
  auto params = push_and_pull(served.address(), token, kFloats, 0);
  ASSERT_EQ(params.front(), 0.5f);
  const int64_t before = peak_rss_bytes(served.pid());
  ASSERT_GT(before, 0);

  const size_t body = size_t(60 * kMiB);
  auto codes = push_all(served.address(), kAttackers, body, [&](int) { return token; });
  for (int i = 0; i < kAttackers; ++i)
    EXPECT_EQ(codes[size_t(i)], grpc::StatusCode::RESOURCE_EXHAUSTED) << "client " << i;

  const int64_t growth = peak_rss_bytes(served.pid()) - before;
  std::printf("peak RSS %lld MiB before, growth %lld MiB\n", static_cast<long long>(before >> 20),
              static_cast<long long>(growth >> 20));
  EXPECT_LT(growth, 320 * kMiB) << "the server's peak RSS grew by " << (growth >> 20)
                                << " MiB under " << kAttackers << " x " << (body >> 20)
                                << " MiB Pushes for a " << (kFloats * sizeof(float) >> 20)
                                << " MiB shard";
  params = push_and_pull(served.address(), token, kFloats, 1);
  EXPECT_EQ(params.front(), 0.0f);
}

}  // namespace
}  // namespace ptrain::parallel
