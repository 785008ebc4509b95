// The address a rank advertises to its Gloo peers, derived from the coordinator's address.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "ptrain/comm/gloo.h"
#include "ptrain/core/error.h"

namespace ptrain::comm {

namespace {
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// "host:port", "[v6]:port" or "host" -> host, port ("" when absent).
std::pair<std::string, std::string> split_host_port(const std::string& address) {
  if (!address.empty() && address[0] == '[') {
    auto close = address.find(']');
    if (close == std::string::npos)
      throw ConfigError(fmt::format("coordinator address '{}': missing ']'", address));
    std::string port =
        close + 1 < address.size() && address[close + 1] == ':' ? address.substr(close + 2) : "";
    return {address.substr(1, close - 1), port};
  }
  auto colon = address.rfind(':');
  if (colon == std::string::npos || address.find(':') != colon) return {address, ""};
  return {address.substr(0, colon), address.substr(colon + 1)};
}
}  // namespace

std::string gloo_host_for(const std::string& coordinator_address) {
  auto [host, port] = split_host_port(coordinator_address);
  if (host.empty() || host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1")
    return "127.0.0.1";
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* result = nullptr;
  int rc = ::getaddrinfo(host.c_str(), port.empty() ? "9" : port.c_str(), &hints, &result);
  if (rc != 0)
    throw ConfigError(
        fmt::format("cannot resolve coordinator host '{}': {}", host, gai_strerror(rc)));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(result, &::freeaddrinfo);
  // A connected UDP socket sends nothing; it only asks the kernel for the route's source.
  Fd sock{PTRAIN_SYSCALL(::socket(result->ai_family, SOCK_DGRAM, 0))};
  PTRAIN_SYSCALL(::connect(sock.fd, result->ai_addr, result->ai_addrlen));
  sockaddr_storage local{};
  socklen_t len = sizeof(local);
  PTRAIN_SYSCALL(::getsockname(sock.fd, reinterpret_cast<sockaddr*>(&local), &len));
  char text[INET6_ADDRSTRLEN] = {};
  const void* src =
      local.ss_family == AF_INET6
          ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr)
          : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr);
  PTRAIN_CHECK(::inet_ntop(local.ss_family, src, text, sizeof(text)) != nullptr, "inet_ntop");
  return text;
}

}  // namespace ptrain::comm
