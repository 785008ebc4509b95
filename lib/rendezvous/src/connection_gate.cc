// ConnectionGate: ptrain's own accept loop in front of a gRPC server (connection_gate.h).
#include "connection_gate.h"

#include <fmt/format.h>
#include <linux/tcp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ptrain/core/error.h"

namespace ptrain::rendezvous::detail {

namespace {

using Clock = std::chrono::steady_clock;

// How long a connection may stay silent (no byte received) before a new one may take its place
// at the cap: a gRPC client sends its first bytes (TLS hello or HTTP/2 preface) at once.
constexpr auto kSilentGrace = std::chrono::seconds(1);
// At the cap, the open connections are scanned at most this often; in between, new ones are
// refused at once.
constexpr auto kScanEvery = std::chrono::milliseconds(100);

// "host:port" or "[v6]:port" split; throws IoError.
std::pair<std::string, std::string> split_listen(const std::string& listen) {
  auto colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen.size())
    throw IoError(fmt::format("listen address '{}' has no port", listen));
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  return {host, listen.substr(colon + 1)};
}

int listen_on(const addrinfo* ai, int port) {
  sockaddr_storage addr{};
  std::memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
  if (addr.ss_family == AF_INET)
    reinterpret_cast<sockaddr_in*>(&addr)->sin_port = htons(static_cast<uint16_t>(port));
  else
    reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = htons(static_cast<uint16_t>(port));
  int fd = ::socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1, zero = 0;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  // "[::]" takes IPv4 clients too, as gRPC's own listener does.
  if (ai->ai_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), ai->ai_addrlen) != 0 ||
      ::listen(fd, 4096) != 0) {
    const int e = errno;
    ::close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

int bound_port(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  return ntohs(addr.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&addr)->sin_port
                                         : reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
}

ino_t inode_of(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) ? st.st_ino : 0;
}

// Bytes the kernel has received on the connection `fd`; -1 when unknown.
int64_t bytes_received(int fd) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 ||
      len < offsetof(tcp_info, tcpi_bytes_received) + sizeof info.tcpi_bytes_received)
    return -1;
  return static_cast<int64_t>(info.tcpi_bytes_received);
}

}  // namespace

int default_max_connections() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return 65536;
  const auto n = static_cast<int64_t>(lim.rlim_cur);
  return static_cast<int>(std::max<int64_t>(64, n - std::max<int64_t>(256, n / 4)));
}

ConnectionGate::ConnectionGate(const std::string& listen, int max_connections,
                               std::function<void(const std::string&)> warn)
    : max_(max_connections > 0 ? max_connections : default_max_connections()),
      warn_(std::move(warn)) {
  auto [host, port_text] = split_listen(listen);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int rc =
          ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &res);
      rc != 0)
    throw IoError(
        fmt::format("cannot resolve the listen address {}: {}", listen, ::gai_strerror(rc)));
  int port = std::atoi(port_text.c_str());
  std::string first_error;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    int fd = listen_on(ai, port);
    if (fd < 0) {
      if (first_error.empty()) first_error = std::strerror(errno);
      continue;
    }
    if (port == 0) port = bound_port(fd);  // the others take the same one
    listeners_.push_back(fd);
  }
  ::freeaddrinfo(res);
  if (listeners_.empty())
    throw IoError(fmt::format("cannot listen on {}: {}", listen,
                              first_error.empty() ? "no address" : first_error));
  port_ = port;
  wake_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_ < 0) {
    for (int fd : listeners_) ::close(fd);
    throw IoError(fmt::format("cannot create an eventfd: {}", std::strerror(errno)));
  }
}

ConnectionGate::~ConnectionGate() {
  stop();
  for (int fd : listeners_) ::close(fd);
  if (wake_ >= 0) ::close(wake_);
}

void ConnectionGate::stop() {
  stop_accepting();
  for (const auto& o : open_)
    if (inode_of(o.fd) == o.inode) ::shutdown(o.fd, SHUT_RDWR);
  open_.clear();
  open_count_ = 0;
}

void ConnectionGate::stop_accepting() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_, &one, sizeof one);
  thread_.join();
}

void ConnectionGate::start(
    std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor) {
  acceptor_ = std::move(acceptor);
  thread_ = std::thread([this] { loop(); });
}

GateCounts ConnectionGate::counts() const {
  return {open_count_.load(), accepted_.load(), refused_.load(), evicted_.load()};
}

void ConnectionGate::loop() {
  std::vector<pollfd> polls;
  for (int fd : listeners_) polls.push_back({fd, POLLIN, 0});
  polls.push_back({wake_, POLLIN, 0});
  while (true) {
    if (::poll(polls.data(), polls.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (polls.back().revents) return;
    for (size_t i = 0; i + 1 < polls.size(); ++i) {
      if (!polls[i].revents) continue;
      for (int batch = 0; batch < 256; ++batch) {
        int fd = ::accept4(polls[i].fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
          admit(polls[i].fd, fd);
          continue;
        }
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE) {
          // Out of descriptors (files elsewhere in the process): the connection waits in the
          // backlog; look again shortly instead of spinning on it.
          ++refused_;
          ::poll(nullptr, 0, 50);
        }
        break;
      }
    }
  }
}

void ConnectionGate::maybe_warn(Clock::time_point now) {
  const uint64_t refused = refused_.load(), evicted = evicted_.load();
  if (!warn_ || now - last_warning_ < std::chrono::seconds(10) ||
      (refused == refused_at_warning_ && evicted == evicted_at_warning_))
    return;
  warn_(
      fmt::format("at its cap of {} open connections on port {}: refused {} connection(s) and "
                  "ended {} that sent nothing",
                  max_, port_, refused - refused_at_warning_, evicted - evicted_at_warning_));
  last_warning_ = now;
  refused_at_warning_ = refused;
  evicted_at_warning_ = evicted;
}

bool ConnectionGate::make_room() {
  const auto now = Clock::now();
  std::erase_if(open_, [](const Open& o) { return inode_of(o.fd) != o.inode; });
  open_count_ = static_cast<int>(open_.size());
  if (static_cast<int>(open_.size()) < max_) return true;
  // The oldest connection that has sent nothing since its first second: not a gRPC client.
  for (auto it = open_.begin(); it != open_.end(); ++it) {
    if (now - it->since < kSilentGrace) break;  // the rest are younger still
    if (bytes_received(it->fd) != 0) continue;
    // gRPC owns the descriptor: shut the connection down and let gRPC close it.
    if (inode_of(it->fd) == it->inode) ::shutdown(it->fd, SHUT_RDWR);
    open_.erase(it);
    open_count_ = static_cast<int>(open_.size());
    ++evicted_;
    return true;
  }
  return false;
}

void ConnectionGate::admit(int listener, int fd) {
  const auto now = Clock::now();
  if (static_cast<int>(open_.size()) >= max_) {
    const bool room = now >= next_scan_ && make_room();
    if (!room) {
      if (now >= next_scan_) next_scan_ = now + kScanEvery;
      ::close(fd);
      ++refused_;
      maybe_warn(now);
      return;
    }
    maybe_warn(now);
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  open_.push_back({fd, inode_of(fd), now});
  open_count_ = static_cast<int>(open_.size());
  ++accepted_;
  grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters p;
  p.listener_fd = listener;
  p.fd = fd;
  acceptor_->HandleNewConnection(&p);
}

}  // namespace ptrain::rendezvous::detail
