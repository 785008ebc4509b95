// Monotonic time helpers and the Deadline every blocking call takes.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace ptrain {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

// Named defaults for blocking calls (see STYLE.md: every blocking call has a timeout).
inline constexpr Millis kDefaultStoreTimeout{std::chrono::seconds(300)};
inline constexpr Millis kDefaultRpcDeadline{std::chrono::seconds(30)};

class Deadline {
 public:
  explicit Deadline(Millis timeout) : end_(Clock::now() + timeout) {}
  static Deadline never() { return Deadline(Millis(std::chrono::hours(24 * 365))); }
  bool expired() const { return Clock::now() >= end_; }
  Millis remaining() const {
    auto left = std::chrono::duration_cast<Millis>(end_ - Clock::now());
    return left.count() > 0 ? left : Millis(0);
  }
  Clock::time_point time_point() const { return end_; }

 private:
  Clock::time_point end_;
};

// Microseconds since the Unix epoch (wall clock), for log timestamps that merge across hosts.
int64_t unix_micros();
// Seconds since an arbitrary monotonic origin, as a double.
double mono_seconds();
// "2026-11-26 23:42:07.123" in local time.
std::string format_timestamp(int64_t unix_us);

}  // namespace ptrain
