// The launcher's side of rendezvous.tls: makes the job's CA and certificate when the spec asks
// for TLS, uses them for this process's coordinator, and writes them (0600) into the run
// folder's private part for this host's workers, which find them through $PTRAIN_TLS_DIR.
// Remote agents get the same PEM text over their ssh session's stdin (remote_agent.h).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ptrain/rendezvous/tls.h"

namespace ptrain::launch {

// The folder of a run (or of one host's agent) that holds ca.pem, cert.pem and key.pem.
std::string tls_dir(const std::string& run_dir);

// `ptrain tls init DIR`: a fresh job CA and certificate written into DIR (created 0700, files
// 0600) for nodes started independently (`ptrain node --tls-dir DIR`). Throws ConfigError when
// DIR already holds a certificate (a job's identity is never overwritten) and IoError when it
// cannot be written.
void init_tls_dir(const std::string& dir);

// The identity of one `ptrain node` (the same on every node): read from `dir` (--tls-dir or
// $PTRAIN_TLS_DIR) unless `mode` (rendezvous.tls) is off. ConfigError for `on` without a folder,
// or a folder without the files. Empty: plaintext.
std::optional<rendezvous::TlsIdentity> node_tls(const std::string& mode, const std::string& dir);

class JobTls {
 public:
  // mode: rendezvous.tls; hosts: every address the job's channels use (bind address, hosts).
  // Off: this process is set to plaintext. On: a fresh identity, set for this process.
  JobTls(const std::string& mode, const std::vector<std::string>& hosts);
  // Removes the key files it wrote (the job is over; a restart of the run makes new ones).
  ~JobTls();
  JobTls(const JobTls&) = delete;
  JobTls& operator=(const JobTls&) = delete;

  bool enabled() const { return identity_.has_value(); }
  const std::optional<rendezvous::TlsIdentity>& identity() const { return identity_; }
  // Writes the files into tls_dir(run_dir) and points `env` (the workers' extra environment)
  // at them; nothing when TLS is off.
  void install(const std::string& run_dir, std::map<std::string, std::string>& env);

 private:
  std::optional<rendezvous::TlsIdentity> identity_;
  std::vector<std::string> written_;
};

}  // namespace ptrain::launch
