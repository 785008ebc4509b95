// Subcommand registry: each cmd_*.cc registers its subcommand with PTRAIN_COMMAND, so adding a
// subcommand touches only its own file.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace ptrain::cli {

// Options every subcommand sees (set by the top-level app before the subcommand runs).
struct GlobalOptions {
  std::string log_level = "info";
};
GlobalOptions& global_options();

// A subcommand's setup adds its options to `sub` and returns the action to run; the action's
// return value is the process exit code. Errors are thrown as ptrain::Error.
using Action = std::function<int()>;
using Setup = std::function<Action(CLI::App& sub)>;

struct CommandInfo {
  std::string name;
  std::string description;
  bool hidden;  // internal subcommands (agent, worker) stay out of --help
  int order;    // position in --help
  Setup setup;
};

std::vector<CommandInfo>& command_registry();
// `ptrain bench <name>` harnesses register here the same way (PTRAIN_BENCH); the `bench`
// subcommand exists only when at least one harness is built in.
std::vector<CommandInfo>& bench_registry();

struct Registrar {
  Registrar(CommandInfo info) { command_registry().push_back(std::move(info)); }
};

struct BenchRegistrar {
  BenchRegistrar(CommandInfo info) { bench_registry().push_back(std::move(info)); }
};

}  // namespace ptrain::cli

#define PTRAIN_CONCAT_INNER(a, b) a##b
#define PTRAIN_CONCAT(a, b) PTRAIN_CONCAT_INNER(a, b)
#define PTRAIN_COMMAND(...) \
  static ::ptrain::cli::Registrar PTRAIN_CONCAT(ptrain_command_, __LINE__){__VA_ARGS__};
#define PTRAIN_BENCH(...) \
  static ::ptrain::cli::BenchRegistrar PTRAIN_CONCAT(ptrain_bench_, __LINE__){__VA_ARGS__};
