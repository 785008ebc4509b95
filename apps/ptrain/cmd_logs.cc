// `ptrain logs [RUN_DIR] [-f] [--rank R,...] [--grep PATTERN]`: the ranks' logs
// of a run merged in time order; without RUN_DIR, this user's newest run (the pointer every
// run writes, launch/run_dir.h), or the newest under --dir.
#include <fmt/format.h>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/launch/logs.h"
#include "ptrain/launch/run_dir.h"

namespace ptrain::cli {
namespace {

struct LogsArgs {
  std::string run_dir;
  std::string root;  // empty: this user's newest run
  std::vector<int> ranks;
  std::string grep;
  bool follow = false;
  double timeout_s = 0;
};

Action setup_logs(CLI::App& sub) {
  auto args = std::make_shared<LogsArgs>();
  sub.add_option("run_dir", args->run_dir,
                 "Run folder (default: your newest run, or the newest under --dir)");
  sub.add_option("--dir", args->root, "Folder holding the runs (logging.dir)");
  sub.add_option("--rank", args->ranks, "Only these ranks: --rank 0,3")->delimiter(',');
  sub.add_option("--grep", args->grep, "Only lines matching this regular expression");
  sub.add_flag("-f,--follow", args->follow, "Keep printing new lines until the run ends");
  sub.add_option("--timeout", args->timeout_s, "Stop following after this many seconds (0 = 24 h)");
  return [args] {
    std::string dir = args->run_dir;
    if (dir.empty()) {
      auto newest = args->root.empty() ? launch::last_run() : launch::newest_run(args->root);
      if (!newest && args->root.empty()) newest = launch::newest_run("runs");
      if (!newest)
        throw IoError(args->root.empty() ? std::string("no run of yours was found")
                                         : fmt::format("no run folder under '{}'", args->root),
                      "pass RUN_DIR or --dir with the spec's logging.dir");
      dir = *newest;
      fmt::print(stderr, "ptrain logs: {}\n", dir);
    }
    launch::LogsOptions options;
    options.ranks = args->ranks;
    options.grep = args->grep;
    options.follow = args->follow;
    if (args->timeout_s > 0)
      options.follow_timeout = Millis(static_cast<int64_t>(args->timeout_s * 1000));
    launch::print_logs(dir, options, stdout);
    return 0;
  };
}

}  // namespace

PTRAIN_COMMAND({"logs", "Print the merged logs of a run", false, 40, setup_logs})

}  // namespace ptrain::cli
