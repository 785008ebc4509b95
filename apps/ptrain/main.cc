// ptrain: the command-line entry point. Subcommands live in cmd_*.cc and register themselves.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "build_info.h"
#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/core/log.h"
#include "ptrain/models/registry.h"
#include "ptrain/tensor/cpu_bn_pool.h"
#include "ptrain/tensor/cpu_conv.h"
#include "ptrain/tensor/cpu_kernels.h"
#include "ptrain/tensor/cuda_plugin.h"

namespace ptrain::cli {

GlobalOptions& global_options() {
  static GlobalOptions options;
  return options;
}

std::vector<CommandInfo>& command_registry() {
  static std::vector<CommandInfo> registry;
  return registry;
}

std::vector<CommandInfo>& bench_registry() {
  static std::vector<CommandInfo> registry;
  return registry;
}

static void sort_by_order(std::vector<CommandInfo>& infos) {
  std::stable_sort(infos.begin(), infos.end(),
                   [](const CommandInfo& a, const CommandInfo& b) { return a.order < b.order; });
}

static void add_commands(CLI::App& parent, std::vector<CommandInfo>& infos, Action& chosen) {
  sort_by_order(infos);
  for (auto& info : infos) {
    CLI::App* sub = parent.add_subcommand(info.name, info.description);
    if (info.hidden) sub->group("");
    auto action = std::make_shared<Action>(info.setup(*sub));
    sub->callback([action, &chosen] { chosen = *action; });
  }
}

static std::string version_string() {
  const char* yes_no[] = {"no", "yes"};
  std::string plugin;  // the CUDA backend is a plugin: say whether it is there, without loading it
  if (PTRAIN_BUILT_WITH_CUDA) {
    std::string path = ptrain::tensor::cuda_plugin_path();
    plugin = path.empty() ? "\ncuda plugin: missing (libptrain_cuda.so; CPU only)"
                          : fmt::format("\ncuda plugin: found ({})", path);
  }
  return fmt::format("ptrain {} (commit {})\nfeatures: cuda={} nccl={} gloo=yes{}", PTRAIN_VERSION,
                     PTRAIN_GIT_COMMIT, yes_no[PTRAIN_BUILT_WITH_CUDA],
                     yes_no[PTRAIN_BUILT_WITH_CUDA], plugin) +
         fmt::format(
             "\ncpu kernels: {}; GEMMs: {}; convolutions: {}; batch norm: {}; pooling: "
             "{}; bf16: {}",
             ptrain::tensor::cpu_kernels(),
             ptrain::tensor::cpu_gemm_name(ptrain::tensor::cpu_gemm_mode()),
             ptrain::tensor::cpu_conv_name(ptrain::tensor::cpu_conv_mode()),
             ptrain::tensor::cpu_path_name(ptrain::tensor::cpu_bn_mode()),
             ptrain::tensor::cpu_path_name(ptrain::tensor::cpu_pool_mode()),
             ptrain::tensor::cpu_has_bf16() ? "native" : "none (fp32 only)");
}

static int run_main(int argc, char** argv) {
  CLI::App app{"ptrain: launch and run distributed training jobs"};
  app.set_version_flag("--version", version_string);  // built when asked (it queries oneDNN)
  app.require_subcommand(1);
  app.fallthrough();
  auto& global = global_options();
  app.add_option("--log-level", global.log_level, "trace|debug|info|warn|error|off")
      ->capture_default_str();

  Action chosen;
  add_commands(app, command_registry(), chosen);
  if (!bench_registry().empty()) {
    CLI::App* bench =
        app.add_subcommand("bench", "Measurement harnesses (ratios against a baseline)");
    bench->require_subcommand(1);
    add_commands(*bench, bench_registry(), chosen);
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitConfig;
  }
  init_logging(global.log_level);
  return chosen ? chosen() : kExitConfig;
}

}  // namespace ptrain::cli

int main(int argc, char** argv) {
  try {
    ptrain::models::register_builtin_families();
    return ptrain::cli::run_main(argc, argv);
  } catch (const ptrain::Error& e) {
    fmt::print(stderr, "ptrain: error: {}\n", e.message());
    return e.exit_code();
  } catch (const std::exception& e) {
    fmt::print(stderr, "ptrain: internal error: {}\n", e.what());
    return ptrain::kExitFailure;
  }
}
