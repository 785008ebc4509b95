#include "ptrain/launch/tensorboard.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ptrain/core/crc32c.h"
#include "ptrain/core/error.h"
#include "tensorboard_event.pb.h"

namespace ptrain::launch {

std::string tfrecord(const std::string& data) {
  std::string out;
  uint64_t len = data.size();
  char header[8];
  for (int i = 0; i < 8; ++i) header[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  auto put32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
  };
  out.append(header, 8);
  put32(masked_crc32c(header, 8));
  out += data;
  put32(masked_crc32c(data.data(), data.size()));
  return out;
}

EventWriter::EventWriter(const std::string& dir, double unix_s) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0 || !host[0]) std::strcpy(host, "localhost");
  path_ = fmt::format("{}/events.out.tfevents.{}.{}", dir, static_cast<int64_t>(unix_s), host);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
  if (fd_ < 0) throw IoError(fmt::format("cannot create {}: {}", path_, std::strerror(errno)));
  tensorboard::Event e;
  e.set_wall_time(unix_s);
  e.set_file_version("brain.Event:2");
  write_record(e.SerializeAsString());
}

EventWriter::~EventWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void EventWriter::write_record(const std::string& data) {
  std::string rec = tfrecord(data);
  size_t done = 0;
  while (done < rec.size()) {
    ssize_t n = ::write(fd_, rec.data() + done, rec.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // a full disk must not stop the run; the record is simply missing
    done += static_cast<size_t>(n);
  }
}

void EventWriter::add_metrics(const std::string& json, double unix_s) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) return;
  tensorboard::Event e;
  e.set_wall_time(unix_s);
  e.set_step(j["step"].get<int64_t>());
  auto* summary = e.mutable_summary();
  for (const auto& [key, value] : j.items()) {
    if (key == "step" || key == "total_steps" || !value.is_number()) continue;
    auto* v = summary->add_value();
    v->set_tag(key);
    v->set_simple_value(value.get<float>());
  }
  if (summary->value_size() > 0) write_record(e.SerializeAsString());
}

void EventWriter::add_scalar(const std::string& tag, double value, int64_t step, double unix_s) {
  tensorboard::Event e;
  e.set_wall_time(unix_s);
  e.set_step(step);
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  write_record(e.SerializeAsString());
}

}  // namespace ptrain::launch
