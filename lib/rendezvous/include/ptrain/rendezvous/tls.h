// Mutual TLS for every gRPC channel and server of a job (coordinator, store, parameter servers,
// log streams): the launcher makes a per-job CA and one certificate it signs, every process of
// the job presents that certificate and accepts only peers that present one signed by the CA.
// Also the server hardening every ptrain gRPC server gets (token check on the headers, handshake
// and idle timeouts, a memory quota, a stream cap).
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ptrain::rendezvous {

// The name in every job certificate (subjectAltName DNS). Clients check the server's certificate
// against it instead of the host name they dialled: the job's CA is what identifies the job, and
// hosts are reached under whatever name or address the host list gives.
inline constexpr const char* kTlsServerName = "ptrain.job";
// A job's certificates are valid this long (and from 5 minutes before they were made, for
// clock skew); a job that runs longer than this must be restarted with fresh ones.
inline constexpr std::chrono::hours kTlsValidity{24 * 14};
// The variable that points a worker at the folder with its ca.pem, cert.pem and key.pem.
inline constexpr const char* kTlsDirEnv = "PTRAIN_TLS_DIR";

// PEM text of a job's CA certificate and of the certificate + private key every process uses.
struct TlsIdentity {
  std::string ca_pem, cert_pem, key_pem;
};

// A fresh per-job CA (EC P-256, self-signed) and one certificate signed by it (EC P-256,
// serverAuth + clientAuth, SAN kTlsServerName). The CA's private key is discarded: nothing can
// sign another certificate for this job. Throws IoError when OpenSSL fails.
TlsIdentity make_job_tls(std::chrono::seconds validity = kTlsValidity);

// Writes ca.pem, cert.pem and key.pem into `dir` (created 0700; files 0600, whatever the umask).
void write_tls_files(const std::string& dir, const TlsIdentity& identity);
// Reads them back; IoError naming the file that is missing or unreadable.
TlsIdentity read_tls_files(const std::string& dir);

// The identity this process's channels and servers use; nullopt = plaintext. Until set, it is
// read once from $PTRAIN_TLS_DIR (the workers and parameter servers of a TLS job).
void set_process_tls(std::optional<TlsIdentity> identity);
bool process_tls_enabled();

// rendezvous.tls: "on", "off" or "auto" (on when any of `hosts` is not a loopback address or
// name: 127.0.0.0/8, ::1, localhost).
bool tls_wanted(const std::string& mode, const std::vector<std::string>& hosts);
bool is_loopback_host(const std::string& host);
// "unix:PATH": a node-local socket (the node relay's).
bool is_unix_address(const std::string& address);

// Credentials for a client channel of this process to `target` (host:port); with TLS also sets
// the server-name override on `args`. Without TLS a target on 127.0.0.1, ::1 or localhost gets
// gRPC's local credentials (still plaintext), which let the server check the token before the
// body. A "unix:" target always gets local credentials (UDS), TLS or not: the socket is
// node-local and lives in the run folder, so only this user's processes reach it.
std::shared_ptr<grpc::ChannelCredentials> channel_credentials(grpc::ChannelArguments& args,
                                                              const std::string& target);

// What a ptrain server accepts before any handler runs.
struct ServerLimits {
  std::string token;  // checked on the request headers (x-ptrain-token) before the body is read
  // Called (on a gRPC thread) for each call refused there: "missing" or "wrong".
  std::function<void(const char* why)> on_reject;
  int64_t max_message_bytes = 64 << 20;  // the largest request body accepted
  // The memory the server may spend on requests (gRPC resource quota).
  int64_t memory_bytes = int64_t{2} << 30;
  int max_concurrent_streams = 64;      // per connection
  int64_t handshake_timeout_ms = 5000;  // a connection that has not finished its handshake
  // A connection without any call for this long is closed (clients reconnect on their next call).
  int64_t max_idle_ms = 30000;
  // Open TCP connections at most (0: three quarters of the descriptor limit, RLIMIT_NOFILE); at
  // the cap the oldest connection that has sent nothing for a second makes room, or the new one is
  // closed at once. Unix sockets have no cap (only this user reaches them).
  int max_connections = 0;
  std::function<void(const std::string&)> on_warning;  // connections refused at the cap
};

namespace detail {
class ConnectionGate;
}

// The TCP listeners of one server: ptrain accepts its connections itself (libgrpc 1.51 has no
// connection cap) and hands them to gRPC. Keep it as long as the server.
class ServerListeners {
 public:
  ServerListeners();
  ~ServerListeners();
  ServerListeners(const ServerListeners&) = delete;
  ServerListeners& operator=(const ServerListeners&) = delete;
  // Stops accepting; call it before Server::Shutdown (gRPC does not end at once a connection
  // handed to a server that is shutting down). The destructor does it too.
  void stop_accepting();
  // Stops accepting and ends every connection still open (gRPC's server does not end connections
  // from an external acceptor itself); call it just before Server::Shutdown, once the calls the
  // server answers at shutdown have been ended.
  void stop();
  // Connections open, refused and ended at the cap, over all listeners.
  int open_connections() const;
  uint64_t refused_connections() const;
  uint64_t evicted_connections() const;

 private:
  friend void add_listening_port(grpc::ServerBuilder&, const std::string&, int*,
                                 const ServerLimits&, ServerListeners*);
  std::vector<std::unique_ptr<detail::ConnectionGate>> gates_;
};

// Credentials for a server of this process (mutual TLS, or plaintext: local credentials on
// 127.0.0.1, ::1 or localhost, the addresses gRPC's local TCP credentials accept, insecure
// elsewhere; a "unix:" address always gets local credentials, UDS), and the limits above, added
// to `builder`. With TLS, on those addresses and on a unix socket the token is checked on the
// headers before the body is read (an AuthMetadataProcessor); the handlers check it again (the
// only check for plaintext elsewhere).
// A TCP address is accepted through `listeners` (which must outlive the server); *port is set
// at once, or stays 0 when the address cannot be bound.
void configure_server(grpc::ServerBuilder& builder, const std::string& listen, int* port,
                      const ServerLimits& limits, ServerListeners* listeners);
// One more address for a server configured above, with the credentials that address gets.
void add_listening_port(grpc::ServerBuilder& builder, const std::string& listen, int* port,
                        const ServerLimits& limits, ServerListeners* listeners);

}  // namespace ptrain::rendezvous
