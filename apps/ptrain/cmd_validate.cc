// `ptrain validate job.yaml [--set k=v]... [--json]`: checks a spec and prints the resolved plan
// (or the resolved spec as JSON) without running anything.
#include <fmt/format.h>

#include <cstdio>

#include "command.h"
#include "ptrain/parallel/pipeline.h"
#include "ptrain/spec/plan.h"
#include "ptrain/spec/spec.h"

namespace ptrain::cli {
namespace {

struct ValidateOptions {
  std::string file;
  std::vector<std::string> overrides;
  bool json = false;
  bool schedule = false;
};

Action setup_validate(CLI::App& sub) {
  auto opts = std::make_shared<ValidateOptions>();
  sub.add_option("spec", opts->file, "job spec (YAML)")->required();
  sub.add_option("--set", opts->overrides, "override a field: key.path=value (repeatable)")
      ->allow_extra_args(false);
  sub.add_flag("--json", opts->json, "print the resolved spec as JSON instead of the plan");
  sub.add_flag("--schedule", opts->schedule,
               "also print the pipeline schedule of every stage (its list of operations)");
  return [opts] {
    spec::JobSpec job = spec::load_file(opts->file, opts->overrides);
    if (opts->json)
      fmt::print("{}", spec::to_json(job));
    else
      fmt::print("{}", spec::format_plan(spec::make_plan(job)));
    if (opts->schedule && !opts->json)
      fmt::print("{}",
                 parallel::format_schedule(parallel::parse_schedule_kind(job.parallel.schedule),
                                           job.parallel.pipeline, job.parallel.microbatches));
    std::fflush(stdout);
    return 0;
  };
}

}  // namespace

PTRAIN_COMMAND({"validate", "Check a job spec and print the resolved plan", false, 10,
                setup_validate})

}  // namespace ptrain::cli
