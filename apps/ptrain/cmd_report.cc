// `ptrain report [RUN_DIR] [--dir ROOT]`: writes RUN_DIR/report.html (launch/report.h) and prints
// its path; without RUN_DIR, this user's newest run (as `ptrain logs` finds it).
#include <fmt/format.h>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/launch/report.h"
#include "ptrain/launch/run_dir.h"

namespace ptrain::cli {
namespace {

struct ReportArgs {
  std::string run_dir;
  std::string root;
};

Action setup_report(CLI::App& sub) {
  auto args = std::make_shared<ReportArgs>();
  sub.add_option("run_dir", args->run_dir,
                 "Run folder (default: your newest run, or the newest under --dir)");
  sub.add_option("--dir", args->root, "Folder holding the runs (logging.dir)");
  return [args] {
    std::string dir = args->run_dir;
    if (dir.empty()) {
      auto newest = args->root.empty() ? launch::last_run() : launch::newest_run(args->root);
      if (!newest && args->root.empty()) newest = launch::newest_run("runs");
      if (!newest)
        throw ConfigError(args->root.empty() ? std::string("no run of yours was found")
                                             : fmt::format("no run folder under '{}'", args->root),
                          "pass RUN_DIR or --dir with the spec's logging.dir");
      dir = *newest;
    }
    fmt::print("{}\n", launch::write_report(dir));
    return 0;
  };
}

}  // namespace

PTRAIN_COMMAND({"report", "Write a run's report.html (charts, spec, mesh, root cause)", false, 45,
                setup_report})

}  // namespace ptrain::cli
