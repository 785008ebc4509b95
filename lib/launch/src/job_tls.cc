#include "ptrain/launch/job_tls.h"

#include <filesystem>

namespace ptrain::launch {

std::string tls_dir(const std::string& run_dir) {
  return run_dir + "/.tls";
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
