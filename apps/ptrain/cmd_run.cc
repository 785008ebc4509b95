// `ptrain run job.yaml [--set k=v]... [--dry-run]`: runs a job on this machine and exits with its
// status (the first failing worker's exit code, 128+N for a signal, 130/143/129 on interrupt).
// `ptrain run --resume RUN_DIR [--set k=v]...` continues a run that ended in the same folder
// (its job.yaml plus the overrides); the trainer resumes from its newest complete checkpoint.
#include <fmt/format.h>

#include <filesystem>

#include "command.h"
#include "ptrain/comm/shm.h"
#include "ptrain/core/error.h"
#include "ptrain/launch/launcher.h"
#include "ptrain/spec/plan.h"
#include "ptrain/spec/spec.h"

namespace ptrain::cli {
namespace {

struct RunArgs {
  std::string spec_path;
  std::vector<std::string> overrides;
  bool dry_run = false;
  bool trace = false;
  std::string resume_dir;
};

Action setup_run(CLI::App& sub) {
  auto args = std::make_shared<RunArgs>();
  sub.add_option("spec", args->spec_path, "Job spec (YAML)");
  sub.add_option("--resume", args->resume_dir,
                 "Continue the run in RUN_DIR (its job.yaml, its checkpoints)");
  sub.add_option("--set", args->overrides, "Override a spec key: --set train.steps=10")
      ->allow_extra_args(false);
  sub.add_flag("--dry-run", args->dry_run, "Validate and print the plan without running");
  sub.add_flag("--trace", args->trace,
               "Write RUN_DIR/trace.json (Chrome trace / Perfetto) with every rank's spans");
  return [args] {
    if (!args->resume_dir.empty()) {
      if (!args->spec_path.empty())
        throw ConfigError("give either a job spec or --resume RUN_DIR, not both",
                          "--resume reuses RUN_DIR/job.yaml; change it with --set key=value");
      args->spec_path = args->resume_dir + "/job.yaml";
      if (!std::filesystem::is_regular_file(args->spec_path))
        throw ConfigError(fmt::format("--resume {}: no job.yaml there", args->resume_dir),
                          "name a run folder written by `ptrain run` (runs/<name>-<time>/)");
    } else if (args->spec_path.empty()) {
      throw ConfigError("no job spec given", "ptrain run job.yaml, or ptrain run --resume RUN_DIR");
    }
    spec::JobSpec spec = spec::load_file(args->spec_path, args->overrides);
    if (args->dry_run) {
      fmt::print("{}", spec::format_plan(spec::make_plan(spec)));
      return 0;
    }
    if (args->trace) spec.env["PTRAIN_TRACE"] = "1";  // the trainer reads it from the spec
    // Shared-memory segments a crashed earlier run left behind (creator gone) are removed.
    comm::sweep_stale_shm_segments();
    launch::LauncherOptions options;
    options.spec_yaml = spec::to_yaml_redacted(spec);
    options.resume_dir = args->resume_dir;
    if (!args->resume_dir.empty() && spec.checkpoint.resume == "never")
      fmt::print(stderr,
                 "ptrain: warning: checkpoint.resume is never: the run starts again from step 0 "
                 "(use --set checkpoint.resume=auto to continue from its checkpoints)\n");
    launch::Launcher launcher(std::move(spec), options);
    return launcher.run().exit_code;
  };
}

}  // namespace

PTRAIN_COMMAND({"run", "Run a job on this machine", false, 10, setup_run})

}  // namespace ptrain::cli
