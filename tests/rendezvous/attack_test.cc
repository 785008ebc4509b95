// Attacks from a client without the job token: the coordinator runs in its own process (this
// binary re-executed with PTRAIN_ATTACK_SERVE set), so its peak resident memory (VmHWM in
// /proc/PID/status) measures what the attack cost it, not what the attacking client holds.
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
#include <deque>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "ptrain.grpc.pb.h"
#include "ptrain/rendezvous/coordinator.h"
#include "ptrain/rendezvous/token.h"
#include "support/served_self.h"

extern char** environ;

namespace ptrain::rendezvous {
namespace {

constexpr const char* kServeEnv = "PTRAIN_ATTACK_SERVE";
constexpr const char* kTokenEnv = "PTRAIN_ATTACK_TOKEN";

// The served process: a coordinator on 127.0.0.1:0 whose port goes to stdout; it stops when
// its stdin closes (the test ended or died). Runs before main, so no test of this binary runs in
// it.
[[maybe_unused]] const bool kServed = [] {
  if (!std::getenv(kServeEnv)) return false;
  {
    CoordinatorOptions opt;
    opt.token = std::getenv(kTokenEnv) ? std::getenv(kTokenEnv) : make_token();
    opt.mesh = MeshShape{1, 1, 1};
    Coordinator coordinator(opt);
    coordinator.start();
    std::printf("%d\n", coordinator.port());
    std::fflush(stdout);
    char c;
    while (::read(0, &c, 1) > 0) {
    }
  }
  std::_Exit(0);
}();

using testing::peak_rss_bytes;

// This binary, serving a coordinator in a child process.
class ServedCoordinator {
 public:
  explicit ServedCoordinator(const std::string& token)
      : served_({std::string(kServeEnv) + "=1", std::string(kTokenEnv) + "=" + token}) {
    port_ = std::atoi(served_.first_line().c_str());
  }
  pid_t pid() const { return served_.pid(); }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  testing::ServedSelf served_;
  int port_ = 0;
};

grpc::Status set_value(proto::Coordinator::Stub& stub, const std::string& token,
                       const proto::SetRequest& req, std::chrono::seconds deadline) {
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata(kTokenMetadataKey, token);
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  proto::Empty resp;
  return stub.Set(&ctx, req, &resp);
}

// A Get of `key` read in full into `value`.
grpc::Status get_value(proto::Coordinator::Stub& stub, const std::string& token,
                       const std::string& key, std::string* value) {
  grpc::ClientContext ctx;
  ctx.AddMetadata(kTokenMetadataKey, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  proto::GetRequest req;
  req.set_key(key);
  proto::GetResponse resp;
  grpc::Status st = stub.Get(&ctx, req, &resp);
  *value = std::move(*resp.mutable_value());
  return st;
}

TEST(Attack, OversizedSetsWithoutTheTokenAreNotBufferedByTheCoordinator) {
  const std::string token = make_token();
  ServedCoordinator served(token);
  ASSERT_GT(served.pid(), 0);
  ASSERT_GT(served.port(), 0) << "the served coordinator did not report its port";
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(100 << 20);
  // Warm up with one authenticated call, so the baseline holds the server's steady state.
  auto channel = grpc::CreateCustomChannel(served.address(),
                                           grpc::experimental::LocalCredentials(LOCAL_TCP), args);
  auto stub = proto::Coordinator::NewStub(channel);
  proto::SetRequest small;
  small.set_key("k");
  small.set_value("v");
  ASSERT_TRUE(set_value(*stub, token, small, std::chrono::seconds(30)).ok());
  const int64_t before = peak_rss_bytes(served.pid());
  ASSERT_GT(before, 0);

  // 8 x 60 MiB (480 MiB) at once, half without a token, half with a wrong one; each on its own
  // connection, so no one connection's flow control serialises them.
  constexpr int kAttackers = 8;
  constexpr int64_t kBody = int64_t{60} << 20;
  proto::SetRequest big;
  big.set_key("intruder");
  big.set_value(std::string(static_cast<size_t>(kBody), 'x'));
  std::vector<grpc::StatusCode> codes(kAttackers, grpc::StatusCode::OK);
  std::vector<std::thread> attackers;
  for (int i = 0; i < kAttackers; ++i)
    attackers.emplace_back([&, i] {
      grpc::ChannelArguments a;
      a.SetMaxSendMessageSize(100 << 20);
      a.SetInt("ptrain.attacker", i);  // a channel (connection) of its own
      auto ch = grpc::CreateCustomChannel(served.address(), grpc::InsecureChannelCredentials(), a);
      auto s = proto::Coordinator::NewStub(ch);
      codes[i] =
          set_value(*s, i % 2 ? make_token() : "", big, std::chrono::seconds(30)).error_code();
    });
  for (auto& t : attackers) t.join();
  for (int i = 0; i < kAttackers; ++i)
    EXPECT_NE(codes[i], grpc::StatusCode::OK) << "attacker " << i;

  const int64_t after = peak_rss_bytes(served.pid());
  const int64_t growth = after - before;
  // Buffering the bodies would cost at least kAttackers x kBody (480 MiB); refusing them on the
  // headers costs flow-control windows.
  std::printf("peak RSS growth %lld MiB\n", static_cast<long long>(growth >> 20));
  EXPECT_LT(growth, int64_t{256} << 20)
      << "the coordinator's peak RSS grew by " << (growth >> 20) << " MiB (from " << (before >> 20)
      << " MiB) under " << kAttackers << " x " << (kBody >> 20) << " MiB unauthenticated Sets";
  // It still serves the job, and stored nothing of the intruders.
  EXPECT_TRUE(set_value(*stub, token, small, std::chrono::seconds(30)).ok());
  grpc::ClientContext ctx;
  ctx.AddMetadata(kTokenMetadataKey, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  proto::CheckRequest check;
  check.add_keys("intruder");
  proto::CheckResponse present;
  ASSERT_TRUE(stub->Check(&ctx, check, &present).ok());
  EXPECT_FALSE(present.all_present());
}

// Polls VmHWM of `pid` until it has not changed for `quiet` (or `limit` passed): the server has
// done what the calls in flight make it do.
int64_t settled_peak_rss(pid_t pid, std::chrono::milliseconds quiet = std::chrono::seconds(1),
                         std::chrono::seconds limit = std::chrono::seconds(20)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  int64_t last = peak_rss_bytes(pid);
  auto since = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const int64_t now = peak_rss_bytes(pid);
    if (now != last) {
      last = now;
      since = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - since >= quiet) {
      break;
    }
  }
  return last;
}

// Calls that a client starts and whose responses it never reads: the requests go out, and the
// client's connection takes in no more of a response than its flow-control window. Read (and
// ended) when this goes away.
class UnreadGets {
 public:
  UnreadGets(const std::string& address, const std::string& token, const std::string& key,
             int calls, int connections) {
    for (int c = 0; c < connections; ++c) {
      grpc::ChannelArguments a;
      a.SetMaxReceiveMessageSize(100 << 20);
      a.SetInt("ptrain.slow_reader", c);  // a connection of its own
      stubs_.push_back(proto::Coordinator::NewStub(
          grpc::CreateCustomChannel(address, grpc::experimental::LocalCredentials(LOCAL_TCP), a)));
    }
    proto::GetRequest req;
    req.set_key(key);
    req.set_timeout_ms(1000);
    calls_.resize(size_t(calls));
    for (int i = 0; i < calls; ++i) {
      auto& call = calls_[size_t(i)];
      call.ctx.AddMetadata(kTokenMetadataKey, token);
      call.ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
      call.reader = stubs_[size_t(i % connections)]->PrepareAsyncGet(&call.ctx, req, &cq_);
      call.reader->StartCall();
      // The request goes out with the first batch of operations; this one reads no message.
      call.reader->ReadInitialMetadata(&call);
    }
  }
  ~UnreadGets() {
    for (auto& call : calls_) {
      call.ctx.TryCancel();
      call.reader->Finish(&call.resp, &call.status, &call);
    }
    void* tag;
    bool ok;
    for (size_t done = 0; done < 2 * calls_.size() && cq_.Next(&tag, &ok);) ++done;
    cq_.Shutdown();
    while (cq_.Next(&tag, &ok)) {
    }
  }

 private:
  struct Call {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientAsyncResponseReader<proto::GetResponse>> reader;
    proto::GetResponse resp;
    grpc::Status status;
  };
  grpc::CompletionQueue cq_;
  std::vector<std::unique_ptr<proto::Coordinator::Stub>> stubs_;
  std::deque<Call> calls_;
};

// A job member that asks for a large value again and again and never reads the answers: the
// coordinator must not keep a serialised copy of the value for each unread answer, and it goes
// on serving everyone else promptly.
TEST(Attack, UnreadGetsOfALargeValueDoNotHoldTheCoordinatorsMemory) {
  const std::string token = make_token();
  ServedCoordinator served(token);
  ASSERT_GT(served.pid(), 0);
  ASSERT_GT(served.port(), 0) << "the served coordinator did not report its port";
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(100 << 20);
  args.SetMaxReceiveMessageSize(100 << 20);
  auto channel = grpc::CreateCustomChannel(served.address(),
                                           grpc::experimental::LocalCredentials(LOCAL_TCP), args);
  auto stub = proto::Coordinator::NewStub(channel);
  constexpr int64_t kValue = int64_t{60} << 20;
  proto::SetRequest big;
  big.set_key("big");
  big.set_value(std::string(static_cast<size_t>(kValue), 'x'));
  ASSERT_TRUE(set_value(*stub, token, big, std::chrono::seconds(30)).ok());
  std::string value;
  // One Get read in full, so the baseline holds what a served answer costs.
  ASSERT_TRUE(get_value(*stub, token, "big", &value).ok());
  ASSERT_EQ(int64_t(value.size()), kValue);
  const int64_t before = settled_peak_rss(served.pid());
  ASSERT_GT(before, 0);

  constexpr int kCalls = 16;
  int64_t growth = 0;
  double took_s = 0;
  {
    UnreadGets unread(served.address(), token, "big", kCalls, 4);
    // Another member's small calls are answered in time while the unread answers wait.
    proto::SetRequest small;
    small.set_key("k");
    small.set_value("v");
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; ++i)
      ASSERT_TRUE(set_value(*stub, token, small, std::chrono::seconds(5)).ok()) << "call " << i;
    took_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    growth = settled_peak_rss(served.pid()) - before;
  }
  std::printf("peak RSS %lld MiB before, growth %lld MiB; 20 small Sets took %.3f s\n",
              static_cast<long long>(before >> 20), static_cast<long long>(growth >> 20), took_s);
  EXPECT_LT(took_s, 5.0);
  EXPECT_LT(growth, int64_t{256} << 20)
      << "the coordinator's peak RSS grew by " << (growth >> 20) << " MiB under " << kCalls
      << " unread Gets of a " << (kValue >> 20) << " MiB value";
  // Once those calls ended, what they held is given back: the value is served again.
  const grpc::Status st = get_value(*stub, token, "big", &value);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(int64_t(value.size()), kValue);
}

}  // namespace
}  // namespace ptrain::rendezvous
