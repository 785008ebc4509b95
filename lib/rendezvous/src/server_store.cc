#include "server_store.h"

#include <fmt/format.h>

#include <charconv>
#include <condition_variable>

#include "ptrain/core/error.h"
#include "ptrain/rendezvous/memory_store.h"

namespace ptrain::rendezvous::detail {

static void check_value_size(const std::string& key, size_t size) {
  if (size > kMaxValueBytes)
    throw ConfigError(fmt::format("store value for '{}' is {} bytes, over the {} MiB limit", key,
                                  size, kMaxValueBytes >> 20));
}

ServerStore::~ServerStore() {
  cancel_all("the coordinator shut down");
}

void ServerStore::run(std::vector<Completion>& completions) {
  for (auto& [done, outcome] : completions) done(std::move(outcome));
  completions.clear();
}

void ServerStore::unpark_locked(Waiter& w) {
  if (w.parked_on.empty()) return;
  auto it = parked_.find(w.parked_on);
  if (it != parked_.end()) {
    it->second.erase(w.pos);
    if (it->second.empty()) parked_.erase(it);
  }
  w.parked_on.clear();
}

void ServerStore::advance_locked(const std::shared_ptr<Waiter>& w, std::vector<Completion>& out) {
  while (w->next < w->keys.size() && data_.count(w->keys[w->next])) ++w->next;
  if (w->next < w->keys.size()) {
    const std::string& key = w->keys[w->next];
    auto& list = parked_[key];
    w->parked_on = key;
    w->pos = list.insert(list.end(), w);
    return;
  }
  // All keys seen once; an erase since then would make a value disappear: check them all.
  for (size_t i = 0; i < w->keys.size(); ++i) {
    if (!data_.count(w->keys[i])) {
      w->next = i;
      advance_locked(w, out);
      return;
    }
  }
  w->finished = true;
  WaitOutcome outcome;
  outcome.values.reserve(w->keys.size());
  for (const auto& k : w->keys) outcome.values.push_back(data_[k]);
  out.emplace_back(std::move(w->done), std::move(outcome));
}

void ServerStore::key_changed_locked(const std::string& key, std::vector<Completion>& out) {
  auto it = parked_.find(key);
  if (it == parked_.end()) return;
  WaiterList list = std::move(it->second);
  parked_.erase(it);
  for (auto& w : list) {
    w->parked_on.clear();
    advance_locked(w, out);
    if (w->finished && w->timer) timers_.cancel(w->timer);
  }
}

void ServerStore::wait_async(std::vector<std::string> keys, Clock::time_point deadline, Done done) {
  auto w = std::make_shared<Waiter>();
  w->keys = std::move(keys);
  w->done = std::move(done);
  w->start = Clock::now();
  std::vector<Completion> completions;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) {
      completions.emplace_back(std::move(w->done),
                               WaitOutcome{WaitOutcome::Code::Cancelled, closed_reason_, {}});
    } else {
      advance_locked(w, completions);
      if (!w->finished) {
        std::weak_ptr<Waiter> weak = w;
        w->timer = timers_.schedule(deadline, [this, weak] {
          if (auto sp = weak.lock()) expire(sp);
        });
      }
    }
  }
  run(completions);
}

void ServerStore::expire(const std::shared_ptr<Waiter>& w) {
  Done done;
  WaitOutcome outcome;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (w->finished) return;
    w->finished = true;
    unpark_locked(*w);
    std::vector<std::string> missing;
    for (const auto& k : w->keys)
      if (!data_.count(k)) missing.push_back(k);
    auto waited = std::chrono::duration_cast<Millis>(Clock::now() - w->start);
    outcome.code = WaitOutcome::Code::Timeout;
    outcome.message = fmt::format("store: timed out after {} ms waiting for {}", waited.count(),
                                  describe_keys(missing));
    done = std::move(w->done);
  }
  done(std::move(outcome));
}

void ServerStore::cancel_all(const std::string& reason) {
  std::vector<Completion> completions;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    closed_reason_ = reason;
    for (auto& [key, list] : parked_) {
      for (auto& w : list) {
        w->finished = true;
        w->parked_on.clear();
        if (w->timer) timers_.cancel(w->timer);
        completions.emplace_back(std::move(w->done),
                                 WaitOutcome{WaitOutcome::Code::Cancelled, reason, {}});
      }
    }
    parked_.clear();
  }
  run(completions);
}

void ServerStore::set(const std::string& key, const Bytes& value) {
  check_value_size(key, value.size());
  std::vector<Completion> completions;
  {
    std::lock_guard<std::mutex> lock(mu_);
    data_[key] = value;
    key_changed_locked(key, completions);
  }
  run(completions);
}

int64_t ServerStore::add(const std::string& key, int64_t delta) {
  int64_t value = 0;
  std::vector<Completion> completions;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = data_.find(key);
    if (it != data_.end()) {
      const std::string& s = it->second;
      auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
      if (ec != std::errc() || p != s.data() + s.size())
        throw ConfigError(fmt::format("store: add on '{}' whose value is not an integer", key));
    }
    value += delta;
    data_[key] = std::to_string(value);
    key_changed_locked(key, completions);
  }
  run(completions);
  return value;
}

Bytes ServerStore::compare_set(const std::string& key, const std::optional<Bytes>& expected,
                               const Bytes& desired, bool* swapped) {
  check_value_size(key, desired.size());
  std::vector<Completion> completions;
  Bytes result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = data_.find(key);
    bool match = expected ? (it != data_.end() && it->second == *expected) : it == data_.end();
    if (match) {
      data_[key] = desired;
      key_changed_locked(key, completions);
    }
    if (swapped) *swapped = match;
    auto now = data_.find(key);
    result = now != data_.end() ? now->second : Bytes();
  }
  run(completions);
  return result;
}

Bytes ServerStore::compare_set(const std::string& key, const std::optional<Bytes>& expected,
                               const Bytes& desired) {
  return compare_set(key, expected, desired, nullptr);
}

std::vector<Bytes> ServerStore::blocking_wait(const std::vector<std::string>& keys,
                                              Millis timeout) {
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    bool ready = false;
    WaitOutcome outcome;
  };
  auto shared = std::make_shared<Shared>();
  wait_async(keys, Clock::now() + timeout, [shared](WaitOutcome outcome) {
    {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->outcome = std::move(outcome);
      shared->ready = true;
    }
    shared->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(shared->mu);
  // The timer always ends the wait; the extra second only guards against a stopped timer thread.
  if (!shared->cv.wait_for(lock, timeout + Millis(1000), [&] { return shared->ready; }))
    throw TimeoutError(fmt::format("store: timed out after {} ms waiting for {}", timeout.count(),
                                   describe_keys(keys)));
  switch (shared->outcome.code) {
    case WaitOutcome::Code::Ok:
      return std::move(shared->outcome.values);
    case WaitOutcome::Code::Timeout:
      throw TimeoutError(shared->outcome.message);
    case WaitOutcome::Code::Cancelled:
      break;
  }
  throw RemoteError("store: wait cancelled: " + shared->outcome.message);
}

Bytes ServerStore::get(const std::string& key, Millis timeout) {
  return blocking_wait({key}, timeout).at(0);
}

void ServerStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  blocking_wait(keys, timeout);
}

std::vector<Bytes> ServerStore::multi_get(const std::vector<std::string>& keys, Millis timeout) {
  return blocking_wait(keys, timeout);
}

bool ServerStore::check(const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& k : keys)
    if (!data_.count(k)) return false;
  return true;
}

void ServerStore::erase(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  data_.erase(key);
}

}  // namespace ptrain::rendezvous::detail
