// The coordinator's cap on answered but unread store values (answer_budget.h).
#include "answer_budget.h"

#include <fmt/format.h>

namespace ptrain::rendezvous::detail {

bool AnswerBudget::take(const std::string& peer, int64_t bytes, std::string* why) {
  if (bytes < limits_.counted_from) return true;
  std::lock_guard lock(mu_);
  auto it = per_peer_.find(peer);
  const int64_t mine = it == per_peer_.end() ? 0 : it->second;
  if (mine > 0 && mine + bytes > limits_.per_connection) {
    *why = fmt::format(
        "{} MiB of earlier answers to this connection are not yet read (at most {} MiB)",
        mine >> 20, limits_.per_connection >> 20);
    return false;
  }
  if (total_ > 0 && total_ + bytes > limits_.total) {
    *why = fmt::format("{} MiB of answers to its clients are not yet read (at most {} MiB)",
                       total_ >> 20, limits_.total >> 20);
    return false;
  }
  total_ += bytes;
  per_peer_[peer] = mine + bytes;
  return true;
}

void AnswerBudget::give(const std::string& peer, int64_t bytes) {
  if (bytes < limits_.counted_from) return;
  std::lock_guard lock(mu_);
  total_ -= bytes;
  auto it = per_peer_.find(peer);
  if (it != per_peer_.end() && (it->second -= bytes) <= 0) per_peer_.erase(it);
}

int64_t AnswerBudget::total() const {
  std::lock_guard lock(mu_);
  return total_;
}

}  // namespace ptrain::rendezvous::detail
