// Running commands on other hosts with the system OpenSSH client (so ~/.ssh/config, agents and
// ProxyJump work): argv building, the parallel preflight of every host, the coordinator's
// address as seen from the hosts, and shipping the binary to a host's cache.
#pragma once

#include <string>
#include <vector>

#include "ptrain/core/time.h"
#include "ptrain/launch/process.h"
#include "ptrain/spec/job_spec.h"

namespace ptrain::launch {

inline constexpr Millis kDefaultSshConnectTimeout{10000};
inline constexpr Millis kDefaultPreflightTimeout{30000};

struct SshOptions {
  std::string user;                  // -l; empty = ssh's default
  int port = 0;                      // -p; 0 = ssh's default
  std::string identity;              // -i
  std::vector<std::string> options;  // extra -o Key=Value
  std::string config;                // -F
  Millis connect_timeout = kDefaultSshConnectTimeout;
  std::string ssh_program = "ssh";

  // nodes.ssh, with `--ssh-config` (when non-empty) replacing nodes.ssh.config.
  static SshOptions from_spec(const spec::SshSpec& s, const std::string& config_override = {});
};

// 'text' quoted for a POSIX shell (the remote side of ssh runs the command through one).
std::string shell_quote(const std::string& text);
// A program path as a remote shell word: `~/x` becomes "$HOME"/x so the remote shell expands it.
std::string remote_program_word(const std::string& path);
// The quoted words joined by spaces.
std::string shell_join(const std::vector<std::string>& words);

// ssh -o BatchMode=yes -o ConnectTimeout=N [...] -T host -- remote_command
std::vector<std::string> ssh_argv(const SshOptions& o, const std::string& host,
                                  const std::string& remote_command);

// A short command run to its end: exit status and output.
struct CommandResult {
  ExitStatus status;
  std::string out, err;
  bool timed_out = false;
};
// Runs argv, feeding `input` to its stdin; kills it after `timeout`.
CommandResult run_command(const std::vector<std::string>& argv, const std::string& input,
                          Millis timeout);

// The host name ssh really connects to (`ssh -G`: aliases and HostName applied).
std::string ssh_target_hostname(const SshOptions& o, const std::string& host);
// The local address the kernel uses to reach `hostname` (a UDP socket is connected, never
// sent on, and read back with getsockname). Throws IoError when the name does not resolve.
std::string route_source_address(const std::string& hostname);
// The first IPv4 address of `hostname` (itself when it is one): what a service on that host
// binds so that other hosts reach it. Throws IoError when the name does not resolve.
std::string resolve_ipv4(const std::string& hostname);

struct PreflightOptions {
  std::string remote_ptrain;     // the program on every host
  std::string expected_version;  // first line of `ptrain --version` here
  int gpus_needed = 0;           // per host (0 = no GPU check); device cuda
  Millis timeout = kDefaultPreflightTimeout;
};
// One host's problem, or ok.
struct HostCheck {
  std::string host;
  bool ok = false;
  std::string problem;  // one line: what and how to fix
};
// Checks every host at once (reachable, authentication, ptrain present with the same version,
// enough GPUs); returns one result per host in order.
std::vector<HostCheck> preflight(const std::vector<std::string>& hosts, const SshOptions& ssh,
                                 const std::vector<int>& gpus_needed,
                                 const PreflightOptions& options);

// What `nodes.ship_binary` copies: the bundle folder around `binary` (bin/ptrain wrapper with
// libexec/ and lib/ beside it) when there is one, else the binary alone.
struct ShipPayload {
  std::string root;  // folder to pack, or the binary
  bool is_bundle = false;
  std::string sha256;    // of the binary (and the bundle's files)
  std::string run_path;  // the program's path relative to the cache folder
};
ShipPayload ship_payload(const std::string& binary);
// Copies the payload to HOST:~/.cache/ptrain/<sha256>/ unless it is already there; returns the
// remote program path ("~/.cache/ptrain/<sha>/..."), ready for remote commands. Throws
// RemoteError naming the host when the copy fails.
std::string ship_to_host(const SshOptions& ssh, const std::string& host, const ShipPayload& p,
                         Millis timeout);

}  // namespace ptrain::launch
