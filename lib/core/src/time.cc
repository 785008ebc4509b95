#include "ptrain/core/time.h"

#include <fmt/format.h>

#include <ctime>

namespace ptrain {

int64_t unix_micros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double mono_seconds() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

std::string format_timestamp(int64_t unix_us) {
  time_t secs = static_cast<time_t>(unix_us / 1000000);
  struct tm tm_local;
  localtime_r(&secs, &tm_local);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm_local);
  return fmt::format("{}.{:03d}", buf, static_cast<int>((unix_us / 1000) % 1000));
}

}  // namespace ptrain
