#include "ptrain/rendezvous/memory_store.h"

#include <fmt/format.h>

#include <charconv>

#include "ptrain/core/error.h"

namespace ptrain::rendezvous {

std::string describe_keys(const std::vector<std::string>& keys, size_t max_named) {
  std::string out;
  for (size_t i = 0; i < keys.size() && i < max_named; ++i) {
    if (i) out += ", ";
    out += "'" + keys[i] + "'";
  }
  if (keys.size() > max_named) out += fmt::format(" and {} more", keys.size() - max_named);
  return out;
}

static void check_value_size(const std::string& key, size_t size) {
  if (size > kMaxValueBytes)
    throw ConfigError(fmt::format("store value for '{}' is {} bytes, over the {} MiB limit", key,
                                  size, kMaxValueBytes >> 20));
}

void MemoryStore::set(const std::string& key, const Bytes& value) {
  check_value_size(key, value.size());
  {
    std::lock_guard<std::mutex> lock(mu_);
    data_[key] = value;
  }
  cv_.notify_all();
}

void MemoryStore::wait_locked(std::unique_lock<std::mutex>& lock,
                              const std::vector<std::string>& keys, Millis timeout) {
  auto all_present = [&] {
    for (const auto& k : keys)
      if (!data_.count(k)) return false;
    return true;
  };
  if (!cv_.wait_for(lock, timeout, all_present)) {
    std::vector<std::string> missing;
    for (const auto& k : keys)
      if (!data_.count(k)) missing.push_back(k);
    throw TimeoutError(fmt::format("store: timed out after {} ms waiting for {}", timeout.count(),
                                   describe_keys(missing)));
  }
}

Bytes MemoryStore::get(const std::string& key, Millis timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  wait_locked(lock, {key}, timeout);
  return data_[key];
}

int64_t MemoryStore::add(const std::string& key, int64_t delta) {
  int64_t value = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = data_.find(key);
    if (it != data_.end()) {
      auto [p, ec] =
          std::from_chars(it->second.data(), it->second.data() + it->second.size(), value);
      if (ec != std::errc())
        throw ConfigError(fmt::format("store: add on '{}' whose value is not an integer", key));
    }
    value += delta;
    data_[key] = std::to_string(value);
  }
  cv_.notify_all();
  return value;
}

Bytes MemoryStore::compare_set(const std::string& key, const std::optional<Bytes>& expected,
                               const Bytes& desired) {
  check_value_size(key, desired.size());
  Bytes result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = data_.find(key);
    bool match = expected ? (it != data_.end() && it->second == *expected) : it == data_.end();
    if (match) data_[key] = desired;
    result = data_.count(key) ? data_[key] : Bytes();
  }
  cv_.notify_all();
  return result;
}

void MemoryStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  wait_locked(lock, keys, timeout);
}

std::vector<Bytes> MemoryStore::multi_get(const std::vector<std::string>& keys, Millis timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  wait_locked(lock, keys, timeout);
  std::vector<Bytes> out;
  out.reserve(keys.size());
  for (const auto& k : keys) out.push_back(data_[k]);
  return out;
}

bool MemoryStore::check(const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& k : keys)
    if (!data_.count(k)) return false;
  return true;
}

void MemoryStore::erase(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  data_.erase(key);
}

}  // namespace ptrain::rendezvous
