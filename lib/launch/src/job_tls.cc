#include "ptrain/launch/job_tls.h"

#include <fmt/format.h>

#include <filesystem>

#include "ptrain/core/error.h"

namespace ptrain::launch {

std::string tls_dir(const std::string& run_dir) {
  return run_dir + "/.tls";
}

namespace {

constexpr const char* kNodeTlsHint =
    "run `ptrain tls init DIR` once, copy DIR to every node (keep it private), and give "
    "`--tls-dir DIR` (or PTRAIN_TLS_DIR=DIR) to every `ptrain node`";

}  // namespace

void init_tls_dir(const std::string& dir) {
  std::error_code ec;
  for (const char* name : {"ca.pem", "cert.pem", "key.pem"})
    if (std::filesystem::exists(dir + "/" + name, ec))
      throw ConfigError(fmt::format("tls init: {} already holds a job certificate ({})", dir, name),
                        "give a new folder; remove the old one only when no job uses it");
  rendezvous::write_tls_files(dir, rendezvous::make_job_tls());
}

std::optional<rendezvous::TlsIdentity> node_tls(const std::string& mode, const std::string& dir) {
  if (mode == "off") return std::nullopt;
  if (dir.empty()) {
    if (mode == "on")
      throw ConfigError("rendezvous.tls: on, but this node was given no job certificate",
                        kNodeTlsHint);
    return std::nullopt;
  }
  try {
    return rendezvous::read_tls_files(dir);
  } catch (const IoError& e) {
    throw ConfigError(e.what(), kNodeTlsHint);
  }
}

JobTls::JobTls(const std::string& mode, const std::vector<std::string>& hosts) {
  if (rendezvous::tls_wanted(mode, hosts)) identity_ = rendezvous::make_job_tls();
  rendezvous::set_process_tls(identity_);
}

JobTls::~JobTls() {
  std::error_code ec;
  for (const auto& dir : written_) std::filesystem::remove_all(dir, ec);
}

void JobTls::install(const std::string& run_dir, std::map<std::string, std::string>& env) {
  if (!identity_) return;
  std::string dir = tls_dir(run_dir);
  rendezvous::write_tls_files(dir, *identity_);
  written_.push_back(dir);
  env[rendezvous::kTlsDirEnv] = dir;
}

}  // namespace ptrain::launch
