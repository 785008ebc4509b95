// The bytes of store values that the coordinator has answered but a client has not yet read:
// gRPC keeps each answer (and its serialised copy) until the client's flow control takes it in,
// so a client that asks for a large value again and again and never reads would otherwise hold
// a copy per call in the coordinator. Capped per connection and in all.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace ptrain::rendezvous::detail {

struct AnswerLimits {
  // Answers below this are not counted: ptrain's own (addresses, ids, setups, a MultiGet of
  // every rank's host at thousands of ranks) stay far below it, so the caps never refuse them.
  int64_t counted_from = int64_t{1} << 20;
  int64_t per_connection = int64_t{128} << 20;  // two values of the largest size
  // gRPC holds an answer twice until it is sent (the response and its serialised copy), so
  // unread answers cost the coordinator up to about twice this.
  int64_t total = int64_t{128} << 20;
};

class AnswerBudget {
 public:
  explicit AnswerBudget(AnswerLimits limits = {}) : limits_(limits) {}
  // Reserves `bytes` for an answer to `peer` (a connection, ServerContext::peer()); false, with
  // `why` naming the cap, when that would pass the connection's or the total cap. A connection
  // with nothing unread, and any answer while nothing is unread at all, always pass, so every
  // value can be read. Answers below counted_from always pass and reserve nothing.
  bool take(const std::string& peer, int64_t bytes, std::string* why);
  // Releases what take() reserved, once the answer was sent (or the call ended).
  void give(const std::string& peer, int64_t bytes);
  int64_t total() const;
  const AnswerLimits& limits() const { return limits_; }

 private:
  AnswerLimits limits_;
  mutable std::mutex mu_;
  int64_t total_ = 0;
  std::unordered_map<std::string, int64_t> per_peer_;
};

}  // namespace ptrain::rendezvous::detail
