#include "ptrain/launch/ssh.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <thread>

#include "ptrain/core/error.h"

extern char** environ;

namespace ptrain::launch {

namespace {

std::string last_line(const std::string& text) {
  std::istringstream in(text);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty() && line.find_first_not_of(" \t\r") != std::string::npos) last = line;
  while (!last.empty() && (last.back() == '\r' || last.back() == ' ')) last.pop_back();
  return last;
}

std::string first_line(const std::string& text) {
  return text.substr(0, text.find('\n'));
}

}  // namespace

SshOptions SshOptions::from_spec(const spec::SshSpec& s, const std::string& config_override) {
  SshOptions o;
  o.user = s.user;
  o.port = s.port;
  o.identity = s.identity;
  o.options = s.options;
  o.config = config_override.empty() ? s.config : config_override;
  return o;
}

std::string shell_quote(const std::string& text) {
  bool plain = !text.empty();
  for (char c : text)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || std::strchr("/._-=:,+@%", c)))
      plain = false;
  if (plain) return text;
  std::string out = "'";
  for (char c : text) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

std::string shell_join(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) {
    if (!out.empty()) out += ' ';
    out += shell_quote(w);
  }
  return out;
}

std::vector<std::string> ssh_argv(const SshOptions& o, const std::string& host,
                                  const std::string& remote_command) {
  std::vector<std::string> argv{o.ssh_program};
  if (!o.config.empty()) argv.insert(argv.end(), {"-F", o.config});
  auto secs = std::max<int64_t>(1, (o.connect_timeout.count() + 999) / 1000);
  argv.insert(argv.end(), {"-o", "BatchMode=yes", "-o", fmt::format("ConnectTimeout={}", secs),
                           "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"});
  if (!o.user.empty()) argv.insert(argv.end(), {"-l", o.user});
  if (o.port > 0) argv.insert(argv.end(), {"-p", std::to_string(o.port)});
  if (!o.identity.empty()) argv.insert(argv.end(), {"-i", o.identity});
  for (const auto& opt : o.options) argv.insert(argv.end(), {"-o", opt});
  argv.insert(argv.end(), {"-T", host, "--", remote_command});
  return argv;
}

CommandResult run_command(const std::vector<std::string>& argv, const std::string& input,
                          Millis timeout) {
  ProcessOptions po;
  po.argv = argv;
  po.pipe_input = true;
  for (char** e = ::environ; e && *e; ++e) po.env.emplace_back(*e);
  CommandResult r;
  ChildProcess child;
  try {
    child = ChildProcess::spawn(po);
  } catch (const SpawnError& e) {
    r.status.code = e.exit_code();
    r.err = e.what();
    return r;
  }
  int in = child.stdin_fd();
  ::fcntl(in, F_SETFL, ::fcntl(in, F_GETFL) | O_NONBLOCK);
  size_t written = 0;
  if (input.empty()) child.close_stdin();
  Deadline deadline(timeout);
  auto old_pipe = ::signal(SIGPIPE, SIG_IGN);
  while (child.stdout_fd() >= 0 || child.stderr_fd() >= 0) {
    if (deadline.expired()) {
      r.timed_out = true;
      break;
    }
    std::vector<pollfd> fds;
    if (child.stdin_fd() >= 0) fds.push_back({child.stdin_fd(), POLLOUT, 0});
    if (child.stdout_fd() >= 0) fds.push_back({child.stdout_fd(), POLLIN, 0});
    if (child.stderr_fd() >= 0) fds.push_back({child.stderr_fd(), POLLIN, 0});
    int n = ::poll(fds.data(), fds.size(), static_cast<int>(deadline.remaining().count()) + 1);
    if (n <= 0) continue;
    for (const auto& p : fds) {
      if (!p.revents) continue;
      if (p.fd == child.stdin_fd()) {
        ssize_t w = ::write(p.fd, input.data() + written, input.size() - written);
        if (w > 0) written += static_cast<size_t>(w);
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == input.size())
          child.close_stdin();
        continue;
      }
      bool is_out = p.fd == child.stdout_fd();
      char buf[65536];
      ssize_t got = ::read(p.fd, buf, sizeof buf);
      if (got > 0) {
        (is_out ? r.out : r.err).append(buf, static_cast<size_t>(got));
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        is_out ? child.close_stdout() : child.close_stderr();
      }
    }
  }
  ::signal(SIGPIPE, old_pipe);
  child.close_stdin();
  if (r.timed_out) {
    child.signal_group(SIGKILL);
    child.wait(Millis(5000));
  } else if (auto st = child.wait(deadline.remaining() + Millis(1000))) {
    r.status = *st;
  } else {
    r.timed_out = true;
    child.signal_group(SIGKILL);
    child.wait(Millis(5000));
  }
  return r;
}

std::string ssh_target_hostname(const SshOptions& o, const std::string& host) {
  std::vector<std::string> argv{o.ssh_program};
  if (!o.config.empty()) argv.insert(argv.end(), {"-F", o.config});
  if (!o.user.empty()) argv.insert(argv.end(), {"-l", o.user});
  if (o.port > 0) argv.insert(argv.end(), {"-p", std::to_string(o.port)});
  for (const auto& opt : o.options) argv.insert(argv.end(), {"-o", opt});
  argv.insert(argv.end(), {"-G", host});
  CommandResult r = run_command(argv, "", Millis(10000));
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("hostname ", 0) == 0) return line.substr(9);
  return host;
}

std::string route_source_address(const std::string& hostname) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(hostname.c_str(), "9", &hints, &res);
  if (rc != 0)
    throw IoError(fmt::format("cannot resolve host `{}`: {}", hostname, ::gai_strerror(rc)),
                  "check the host name, or set rendezvous.bind to the address hosts can reach");
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(res, ::freeaddrinfo);
  for (addrinfo* a = res; a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    bool ok = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
              ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
    ::close(fd);
    if (!ok) continue;
    char buf[INET6_ADDRSTRLEN] = {};
    const void* addr =
        local.ss_family == AF_INET
            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr)
            : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr);
    if (::inet_ntop(local.ss_family, addr, buf, sizeof buf)) return buf;
  }
  throw IoError(fmt::format("no route to host `{}`", hostname),
                "set rendezvous.bind to the address the hosts can reach");
}

std::string resolve_ipv4(const std::string& hostname) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(hostname.c_str(), nullptr, &hints, &res);
  if (rc != 0 || !res)
    throw IoError(fmt::format("cannot resolve host `{}` to an IPv4 address: {}", hostname,
                              rc ? ::gai_strerror(rc) : "no address"),
                  "check the host name in --hosts / nodes.hosts");
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(res, ::freeaddrinfo);
  char buf[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr, buf, sizeof buf);
  return buf;
}

std::string remote_program_word(const std::string& path) {
  if (path.rfind("~/", 0) != 0) return shell_quote(path);
  std::string word = "\"$HOME\"/";
  word += shell_quote(path.substr(2));
  return word;
}

namespace {

HostCheck check_one(const std::string& host, const SshOptions& ssh, int gpus,
                    const PreflightOptions& o) {
  HostCheck c;
  c.host = host;
  std::string cmd = remote_program_word(o.remote_ptrain) + " --version";
  if (gpus > 0) cmd += " && echo ptrain-gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')";
  CommandResult r = run_command(ssh_argv(ssh, host, cmd), "", o.timeout);
  std::string err = last_line(r.err);
  if (r.timed_out) {
    c.problem = fmt::format("no answer within {} s", o.timeout.count() / 1000);
    return c;
  }
  if (r.status.code == 255 || r.status.signal) {
    if (err.find("Permission denied") != std::string::npos)
      c.problem = fmt::format(
          "authentication refused ({}); check nodes.ssh.user/identity or "
          "your ssh agent",
          err);
    else if (err.find("Host key verification failed") != std::string::npos)
      c.problem = "host key verification failed; add the host to known_hosts (ssh " + host + ")";
    else
      c.problem = fmt::format("unreachable ({})", err.empty() ? r.status.describe() : err);
    return c;
  }
  if (r.status.code == 127 || r.status.code == 126) {
    c.problem = fmt::format(
        "ptrain missing at `{}` ({}); install it there, set "
        "nodes.remote_ptrain, or use nodes.ship_binary: true",
        o.remote_ptrain, err.empty() ? r.status.describe() : err);
    return c;
  }
  if (!r.status.ok()) {
    c.problem =
        fmt::format("`{} --version` failed with {}: {}", o.remote_ptrain, r.status.describe(), err);
    return c;
  }
  std::string version = first_line(r.out);
  if (version != first_line(o.expected_version)) {
    c.problem = fmt::format(
        "ptrain at `{}` is `{}`, the launcher is `{}`; install the same "
        "version or use nodes.ship_binary: true",
        o.remote_ptrain, version, first_line(o.expected_version));
    return c;
  }
  if (gpus > 0) {
    auto pos = r.out.find("ptrain-gpus=");
    int have = pos == std::string::npos ? 0 : std::atoi(r.out.c_str() + pos + 12);
    if (have < gpus) {
      c.problem =
          fmt::format("{} GPU(s) visible (nvidia-smi -L), {} needed for device cuda", have, gpus);
      return c;
    }
  }
  c.ok = true;
  return c;
}

}  // namespace

std::vector<HostCheck> preflight(const std::vector<std::string>& hosts, const SshOptions& ssh,
                                 const std::vector<int>& gpus_needed,
                                 const PreflightOptions& options) {
  std::vector<HostCheck> results(hosts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < hosts.size(); ++i)
    threads.emplace_back([&, i] {
      try {
        int gpus = i < gpus_needed.size() ? gpus_needed[i] : 0;
        results[i] = check_one(hosts[i], ssh, gpus, options);
      } catch (const std::exception& e) {
        results[i] = {hosts[i], false, e.what()};
      }
    });
  for (auto& t : threads) t.join();
  return results;
}

ShipPayload ship_payload(const std::string& binary) {
  namespace fs = std::filesystem;
  ShipPayload p;
  fs::path bin = fs::canonical(binary);
  fs::path dir = bin.parent_path();
  // A bundle: <root>/libexec/ptrain with <root>/bin/ptrain (the wrapper) and <root>/lib/.
  if (dir.filename() == "libexec" && fs::exists(dir.parent_path() / "bin" / "ptrain") &&
      fs::is_directory(dir.parent_path() / "lib")) {
    p.root = dir.parent_path().string();
    p.is_bundle = true;
    p.run_path = "bin/ptrain";
  } else {
    p.root = bin.string();
    p.run_path = bin.filename().string();
  }
  CommandResult r = run_command({"sha256sum", bin.string()}, "", Millis(60000));
  if (!r.status.ok() || r.out.size() < 64)
    throw IoError(fmt::format("cannot checksum {}: {}", bin.string(), last_line(r.err)));
  p.sha256 = r.out.substr(0, 64);
  return p;
}

std::string ship_to_host(const SshOptions& ssh, const std::string& host, const ShipPayload& p,
                         Millis timeout) {
  namespace fs = std::filesystem;
  std::string dir = "\"$HOME\"/.cache/ptrain/" + p.sha256;
  std::string program = dir + "/" + shell_quote(p.run_path);
  CommandResult present = run_command(ssh_argv(ssh, host, "test -x " + program), "", timeout);
  if (present.status.code == 255)
    throw RemoteError(fmt::format("{}: cannot ship ptrain: {}", host, last_line(present.err)));
  if (!present.status.ok()) {
    // Pack here, unpack there into a temporary folder, then rename: a concurrent launch never
    // runs a half-copied binary.
    std::vector<std::string> tar{"tar", "-C"};
    if (p.is_bundle) {
      tar.insert(tar.end(), {p.root, "-cf", "-", "."});
    } else {
      fs::path b(p.root);
      tar.insert(tar.end(), {b.parent_path().string(), "-cf", "-", b.filename().string()});
    }
    CommandResult packed = run_command(tar, "", timeout);
    if (!packed.status.ok())
      throw IoError(fmt::format("cannot pack {}: {}", p.root, last_line(packed.err)));
    std::string script = fmt::format(
        "set -e; d={0}; t=\"$d.tmp.$$\"; mkdir -p \"$t\"; tar -C \"$t\" -xf -; "
        "mv -T \"$t\" \"$d\" 2>/dev/null || rm -rf \"$t\"; test -x {1}",
        dir, program);
    CommandResult copied = run_command(ssh_argv(ssh, host, script), packed.out, timeout);
    if (!copied.status.ok())
      throw RemoteError(fmt::format("{}: cannot ship ptrain to ~/.cache/ptrain/{}: {}", host,
                                    p.sha256, last_line(copied.err)));
  }
  return "~/.cache/ptrain/" + p.sha256 + "/" + p.run_path;
}

}  // namespace ptrain::launch
