// `ptrain tls init DIR`: makes a job's CA and certificate for nodes started independently
// (`ptrain node --tls-dir DIR` on each, with DIR copied to every node).
#include <fmt/format.h>

#include "command.h"
#include "ptrain/launch/job_tls.h"

namespace ptrain::cli {
namespace {

Action setup_tls(CLI::App& sub) {
  auto dir = std::make_shared<std::string>();
  sub.require_subcommand(1);
  CLI::App* init = sub.add_subcommand(
      "init", "Write a fresh job CA and certificate (ca.pem, cert.pem, key.pem; 0600) into DIR");
  init->add_option("dir", *dir, "Folder to create (0700); it must not hold a certificate yet")
      ->required();
  return [dir] {
    launch::init_tls_dir(*dir);
    fmt::print(stderr,
               "ptrain: wrote a job certificate into {}; copy the folder to every node and give "
               "`ptrain node --tls-dir {}` (with rendezvous.tls: on or auto)\n",
               *dir, *dir);
    return 0;
  };
}

}  // namespace

PTRAIN_COMMAND({"tls", "Make the job certificate for `ptrain node` (tls init DIR)", false, 15,
                setup_tls})

}  // namespace ptrain::cli
