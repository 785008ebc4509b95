#include "ptrain/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "ptrain/core/error.h"

namespace ptrain {

spdlog::level::level_enum parse_log_level(const std::string& level) {
  if (level == "trace") return spdlog::level::trace;
  if (level == "debug") return spdlog::level::debug;
  if (level == "info") return spdlog::level::info;
  if (level == "warn" || level == "warning") return spdlog::level::warn;
  if (level == "error") return spdlog::level::err;
  if (level == "off") return spdlog::level::off;
  throw ConfigError(fmt::format("unknown log level '{}'", level),
                    "use one of trace, debug, info, warn, error, off");
}

void init_logging(const std::string& level, const std::string& name) {
  spdlog::drop(name);
  auto logger = spdlog::stderr_color_mt(name);
  logger->set_pattern("%^%l%$: %v");
  logger->set_level(parse_log_level(level));
  spdlog::set_default_logger(logger);
}

}  // namespace ptrain
