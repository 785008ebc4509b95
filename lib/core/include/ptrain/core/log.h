// Logging setup: one spdlog logger for the process, with a level from --log-level or the spec.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace ptrain {

// level: trace|debug|info|warn|error|off. Throws ConfigError on any other word.
void init_logging(const std::string& level = "info", const std::string& name = "ptrain");
spdlog::level::level_enum parse_log_level(const std::string& level);

}  // namespace ptrain
