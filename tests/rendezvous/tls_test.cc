// rendezvous.tls: with the job's identity set, the coordinator accepts only peers that present a
// certificate of the job's CA, checks the token on the headers, and nothing it exchanges (the
// token included) crosses the wire in clear. A recording TCP proxy on 127.0.0.1 sits between
// client and coordinator.
#include "ptrain/rendezvous/tls.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "ptrain.grpc.pb.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/grpc_store.h"
#include "ptrain/rendezvous/node_relay.h"
#include "test_util.h"

namespace ptrain::rendezvous {
namespace {

using ::testing::HasSubstr;

// Forwards every connection to 127.0.0.1:upstream and records the bytes of both directions.
class RecordingProxy {
 public:
  explicit RecordingProxy(int upstream) : upstream_(upstream) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listen_fd_, 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~RecordingProxy() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string recorded() {
    std::lock_guard lock(mu_);
    return bytes_;
  }

 private:
  void loop() {
    std::vector<std::pair<int, int>> pairs;  // (client, upstream)
    while (!stop_) {
      std::vector<pollfd> fds{{listen_fd_, POLLIN, 0}};
      for (auto [c, u] : pairs) {
        fds.push_back({c, POLLIN, 0});
        fds.push_back({u, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), 50) <= 0) continue;
      if (fds[0].revents & POLLIN) {
        int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        int u = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(static_cast<uint16_t>(upstream_));
        if (c >= 0 && ::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
          pairs.emplace_back(c, u);
        } else {
          if (c >= 0) ::close(c);
          ::close(u);
        }
        continue;  // the pair list changed: poll again
      }
      std::vector<std::pair<int, int>> alive;
      for (size_t i = 0; i < pairs.size(); ++i) {
        auto [c, u] = pairs[i];
        bool open = true;
        for (int dir = 0; dir < 2 && open; ++dir) {
          if (!(fds[1 + 2 * i + dir].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          int from = dir == 0 ? c : u, to = dir == 0 ? u : c;
          char buf[65536];
          ssize_t n = ::read(from, buf, sizeof buf);
          if (n <= 0) {
            open = false;
            break;
          }
          {
            std::lock_guard lock(mu_);
            bytes_.append(buf, static_cast<size_t>(n));
          }
          ssize_t done = 0;
          while (done < n) {
            ssize_t w = ::write(to, buf + done, static_cast<size_t>(n - done));
            if (w <= 0) {
              open = false;
              break;
            }
            done += w;
          }
        }
        if (open) {
          alive.emplace_back(c, u);
        } else {
          ::close(c);
          ::close(u);
        }
      }
      pairs = alive;
    }
    for (auto [c, u] : pairs) {
      ::close(c);
      ::close(u);
    }
  }

  int upstream_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::string bytes_;
};

// Sets the process identity for one test and back to plaintext after it.
class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    job_ = make_job_tls();
    set_process_tls(job_);
  }
  void TearDown() override { set_process_tls(std::nullopt); }

  // One Set through a channel with `creds`, with the right token.
  grpc::Status raw_set(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> creds,
                       grpc::ChannelArguments args, const std::string& token,
                       const std::string& value = "v") {
    auto channel = grpc::CreateCustomChannel(address, creds, args);
    auto stub = proto::Coordinator::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.AddMetadata(kTokenMetadataKey, token);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    proto::SetRequest req;
    req.set_key("intruder");
    req.set_value(value);
    proto::Empty resp;
    return stub->Set(&ctx, req, &resp);
  }

  static std::shared_ptr<grpc::ChannelCredentials> ssl(const TlsIdentity& id, bool with_cert) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = id.ca_pem;
    if (with_cert) {
      o.pem_private_key = id.key_pem;
      o.pem_cert_chain = id.cert_pem;
    }
    return grpc::SslCredentials(o);
  }

  TlsIdentity job_;
};

TEST(TlsMode, AutoIsOnExactlyWhenAnAddressIsNotLoopback) {
  EXPECT_FALSE(tls_wanted("auto", {"127.0.0.1", "localhost", "::1", "[::1]", "127.0.1.1"}));
  EXPECT_TRUE(tls_wanted("auto", {"127.0.0.1", "10.0.0.2"}));
  EXPECT_TRUE(tls_wanted("auto", {"node7"}));
  EXPECT_TRUE(tls_wanted("on", {"127.0.0.1"}));
  EXPECT_FALSE(tls_wanted("off", {"10.0.0.2"}));
}

TEST(TlsFiles, AreWrittenPrivateAndReadBack) {
  TlsIdentity id = make_job_tls();
  EXPECT_THAT(id.ca_pem, HasSubstr("BEGIN CERTIFICATE"));
  EXPECT_THAT(id.key_pem, HasSubstr("PRIVATE KEY"));
  char tmpl[] = "/tmp/ptrain-tls-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string dir = std::string(tmpl) + "/tls";
  ::umask(022);
  write_tls_files(dir, id);
  struct stat st {};
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat((dir + "/key.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  TlsIdentity back = read_tls_files(dir);
  EXPECT_EQ(back.key_pem, id.key_pem);
  EXPECT_EQ(back.cert_pem, id.cert_pem);
  EXPECT_EQ(back.ca_pem, id.ca_pem);
  EXPECT_THROW(read_tls_files(std::string(tmpl) + "/none"), IoError);
  std::filesystem::remove_all(tmpl);
}

TEST_F(TlsTest, ClientWithTheJobCertificateUsesTheStore) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  GrpcStore store(coordinator->address(), opt.token);
  store.set("k", "v");
  EXPECT_EQ(store.get("k", Millis(5000)), "v");
}

TEST_F(TlsTest, PlaintextClientIsRefused) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  auto st = raw_set(coordinator->address(), grpc::InsecureChannelCredentials(), {}, opt.token);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_FALSE(coordinator->store().check({"intruder"}));
}

TEST_F(TlsTest, ClientWithAnotherJobsCertificateIsRefused) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  TlsIdentity other = make_job_tls();
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(kTlsServerName);
  // Trusting the job's CA but presenting the other job's certificate.
  TlsIdentity mixed{job_.ca_pem, other.cert_pem, other.key_pem};
  auto st = raw_set(coordinator->address(), ssl(mixed, true), args, opt.token);
  EXPECT_NE(st.error_code(), grpc::StatusCode::OK) << st.error_message();
  EXPECT_NE(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);  // refused at the handshake
  // Entirely the other job's identity: its CA does not know our server either.
  st = raw_set(coordinator->address(), ssl(other, true), args, opt.token);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_FALSE(coordinator->store().check({"intruder"}));
}

TEST_F(TlsTest, ClientWithoutACertificateIsRefused) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(kTlsServerName);
  auto st = raw_set(coordinator->address(), ssl(job_, false), args, opt.token);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_FALSE(coordinator->store().check({"intruder"}));
}

TEST_F(TlsTest, WrongTokenIsRefusedOnTheHeadersAndWarned) {
  std::mutex mu;
  std::vector<std::string> warnings;
  CoordinatorOptions opt;
  opt.token = make_token();
  CoordinatorEvents ev;
  ev.on_warning = [&](const std::string& w) {
    std::lock_guard lock(mu);
    warnings.push_back(w);
  };
  auto coordinator = testing::start_coordinator(opt, ev);
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(kTlsServerName);
  args.SetMaxSendMessageSize(64 << 20);
  // A body close to the limit: refused before the handler (no INVALID_ARGUMENT, no store entry).
  auto st = raw_set(coordinator->address(), ssl(job_, true), args, make_token(),
                    std::string(48 << 20, 'x'));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  EXPECT_FALSE(coordinator->store().check({"intruder"}));
  std::lock_guard lock(mu);
  ASSERT_FALSE(warnings.empty());
  EXPECT_THAT(warnings[0], HasSubstr("wrong job token"));
  EXPECT_THAT(warnings[0], ::testing::Not(HasSubstr(opt.token)));
}

// A node relay: TLS upward (the process's identity), local credentials on its unix socket,
// with the token checked there on the headers too.
TEST_F(TlsTest, ANodeRelayServesItsSocketAndReachesTheCoordinatorOverTls) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  char tmpl[] = "/tmp/ptrain-tls-relay-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  {
    NodeRelayOptions ro;
    ro.node = "node0";
    ro.ranks = {0};
    RelayServer relay(coordinator->address(), opt.token, ro, std::string(tmpl) + "/r0.sock",
                      Millis(0));
    ASSERT_EQ(relay.address().rfind("unix:", 0), 0u);
    GrpcStore store(relay.address(), opt.token);
    store.set("through-the-relay", "v");
    EXPECT_EQ(coordinator->store().get("through-the-relay", Millis(5000)), "v");
    auto st = raw_set(relay.address(), grpc::experimental::LocalCredentials(UDS), {}, make_token());
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
    EXPECT_FALSE(coordinator->store().check({"intruder"}));
  }
  std::filesystem::remove_all(tmpl);
}

TEST_F(TlsTest, NeitherTokenNorValuesCrossTheWireInClear) {
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  RecordingProxy proxy(coordinator->port());
  {
    GrpcStore store(proxy.address(), opt.token);
    store.set("visible-key", "value-that-must-not-show");
    EXPECT_EQ(store.get("visible-key", Millis(5000)), "value-that-must-not-show");
  }
  std::string wire = proxy.recorded();
  EXPECT_GT(wire.size(), 500u);  // the handshake and the calls went through the proxy
  EXPECT_EQ(wire.find(opt.token), std::string::npos);
  EXPECT_EQ(wire.find("value-that-must-not-show"), std::string::npos);
  EXPECT_EQ(wire.find("x-ptrain-token"), std::string::npos);
}

TEST_F(TlsTest, ThousandsOfConnectionsThatNeverHandshakeAreClosedAndTheJobGoesOn) {
  // The soft descriptor limit up to the hard one: each connection costs a descriptor here and
  // one in the coordinator (same process).
  rlimit lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  lim.rlim_cur = lim.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &lim);
  const int n = static_cast<int>(std::min<rlim_t>(3000, (lim.rlim_cur - 200) / 2));
  ASSERT_GE(n, 100);
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(coordinator->port()));
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << i;
    fds.push_back(fd);
  }
  // They send nothing; the server ends each after its handshake timeout (10 s).
  auto start = std::chrono::steady_clock::now();
  size_t closed = 0;
  std::vector<bool> done(fds.size(), false);
  while (closed < fds.size() &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(30)) {
    std::vector<pollfd> p;
    std::vector<size_t> idx;
    for (size_t i = 0; i < fds.size(); ++i)
      if (!done[i]) {
        p.push_back({fds[i], POLLIN, 0});
        idx.push_back(i);
      }
    if (::poll(p.data(), p.size(), 200) <= 0) continue;
    for (size_t j = 0; j < p.size(); ++j) {
      if (!p[j].revents) continue;
      char buf[256];
      if (::read(fds[idx[j]], buf, sizeof buf) <= 0) {
        done[idx[j]] = true;
        ++closed;
      }
    }
  }
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(closed, fds.size()) << "after " << took << " s";
  EXPECT_LT(took, 25.0);
  for (int fd : fds) ::close(fd);
  // The coordinator still serves the job.
  GrpcStore store(coordinator->address(), opt.token);
  store.set("k", "v");
  EXPECT_EQ(store.get("k", Millis(5000)), "v");
}

TEST(TlsOff, OnLoopbackAWrongTokenIsStillRefusedOnTheHeaders) {
  set_process_tls(std::nullopt);
  std::mutex mu;
  std::vector<std::string> warnings;
  CoordinatorOptions opt;
  opt.token = make_token();
  CoordinatorEvents ev;
  ev.on_warning = [&](const std::string& w) {
    std::lock_guard lock(mu);
    warnings.push_back(w);
  };
  auto coordinator = testing::start_coordinator(opt, ev);
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(64 << 20);
  auto channel =
      grpc::CreateCustomChannel(coordinator->address(), grpc::InsecureChannelCredentials(), args);
  auto stub = proto::Coordinator::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.AddMetadata(kTokenMetadataKey, make_token());
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  proto::SetRequest req;
  req.set_key("intruder");
  req.set_value(std::string(48 << 20, 'x'));
  proto::Empty resp;
  auto st = stub->Set(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  EXPECT_FALSE(coordinator->store().check({"intruder"}));
  std::lock_guard lock(mu);
  ASSERT_FALSE(warnings.empty());
  // The header check answered, not the Set handler (whose warning names the method).
  EXPECT_THAT(warnings[0], HasSubstr("rejected a call (on its headers)"));
}

TEST(TlsOff, TheRecordingProxySeesTheTokenOfAPlaintextJob) {
  // The control for the test above: the proxy does record what plaintext gRPC sends.
  set_process_tls(std::nullopt);
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  RecordingProxy proxy(coordinator->port());
  {
    GrpcStore store(proxy.address(), opt.token);
    store.set("visible-key", "value-that-must-not-show");
  }
  std::string wire = proxy.recorded();
  EXPECT_NE(wire.find(opt.token), std::string::npos);
  EXPECT_NE(wire.find("value-that-must-not-show"), std::string::npos);
}

}  // namespace
}  // namespace ptrain::rendezvous
