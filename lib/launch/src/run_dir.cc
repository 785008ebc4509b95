#include "ptrain/launch/run_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "ptrain/core/error.h"
#include "ptrain/core/private_file.h"
#include "ptrain/core/time.h"
#include "ptrain/launch/mlflow.h"
#include "ptrain/launch/report.h"
#include "ptrain/launch/tensorboard.h"

namespace ptrain::launch {

namespace fs = std::filesystem;

struct RunDir::Files {
  std::mutex mu;
  int metrics_fd = -1;
  int launcher_fd = -1;
  std::unique_ptr<EventWriter> events;
  std::unique_ptr<MlflowRun> mlflow;
  ~Files() {
    if (metrics_fd >= 0) ::close(metrics_fd);
    if (launcher_fd >= 0) ::close(launcher_fd);
  }
};

namespace {

std::string safe_name(const std::string& name) {
  std::string out;
  for (char c : name)
    out +=
        (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.') ? c : '_';
  return out.empty() ? "job" : out;
}

int open_append(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
  if (fd < 0) throw IoError(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  return fd;
}

void write_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // a full disk must not take the launcher down mid-run
    done += static_cast<size_t>(n);
  }
}

std::string last_run_pointer() {
  const char* cache = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  if (cache && *cache) return std::string(cache) + "/ptrain/last-run";
  if (home && *home) return std::string(home) + "/.cache/ptrain/last-run";
  return {};
}

// Records `dir` as this user's newest run (best effort: a read-only home is no error).
void record_last_run(const std::string& dir) {
  std::string pointer = last_run_pointer();
  if (pointer.empty()) return;
  std::error_code ec;
  fs::create_directories(fs::path(pointer).parent_path(), ec);
  std::string tmp = pointer + fmt::format(".{}", ::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << fs::absolute(dir, ec).lexically_normal().string() << "\n";
    if (!out) return;
  }
  if (::rename(tmp.c_str(), pointer.c_str()) != 0) fs::remove(tmp, ec);
}

}  // namespace

std::optional<std::string> last_run() {
  std::string pointer = last_run_pointer();
  if (pointer.empty()) return std::nullopt;
  std::ifstream in(pointer);
  std::string dir;
  if (!std::getline(in, dir) || dir.empty()) return std::nullopt;
  std::error_code ec;
  if (!fs::exists(fs::path(dir) / "job.yaml", ec)) return std::nullopt;
  return dir;
}

std::string format_log_line(int64_t unix_us, const std::string& text) {
  return format_timestamp(unix_us) + " " + text + "\n";
}

RunDir RunDir::create(const std::string& root, const std::string& name) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec)
    throw IoError(fmt::format("cannot create the run folder root '{}': {}", root, ec.message()),
                  "set logging.dir to a writable folder");
  time_t now = ::time(nullptr);
  struct tm tm_local;
  localtime_r(&now, &tm_local);
  char stamp[32];
  strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm_local);
  std::string base = fmt::format("{}/{}-{}", root, safe_name(name), stamp);
  for (int i = 1; i < 10000; ++i) {
    std::string candidate = i == 1 ? base : fmt::format("{}-{}", base, i);
    if (::mkdir(candidate.c_str(), 0777) == 0) {  // less the umask
      record_last_run(candidate);
      return open(candidate);
    }
    if (errno != EEXIST)
      throw IoError(
          fmt::format("cannot create run folder '{}': {}", candidate, std::strerror(errno)));
  }
  throw IoError(
      fmt::format("cannot create a run folder under '{}': too many runs named {}", root, base));
}

RunDir RunDir::open(const std::string& path) {
  if (!fs::is_directory(path)) throw IoError(fmt::format("'{}' is not a run folder", path));
  RunDir dir;
  dir.path_ = path;
  dir.files_ = std::make_shared<Files>();
  return dir;
}

std::string RunDir::rank_log(int rank) const {
  return file(fmt::format("rank-{}.log", rank));
}

void RunDir::write_file(const std::string& name, const std::string& content) const {
  std::string target = file(name);
  std::string tmp = target + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
    if (!out) throw IoError(fmt::format("cannot write {}", tmp));
  }
  if (::rename(tmp.c_str(), target.c_str()) != 0)
    throw IoError(fmt::format("cannot write {}: {}", target, std::strerror(errno)));
  // summary.json is a run's last word (both launchers write it at the end): the report goes
  // beside it. It never fails the run; why it was not written goes to launcher.log.
  if (name == "summary.json") {
    try {
      write_report(path_);
    } catch (const std::exception& e) {
      const auto* err = dynamic_cast<const Error*>(&e);
      const_cast<RunDir*>(this)->log("report.html not written: " +
                                     (err ? err->message() : std::string(e.what())));
    }
  }
}

void RunDir::write_private_file(const std::string& name, const std::string& content) const {
  ptrain::write_private_file(file(name), content);
}

void RunDir::append_metrics(const std::string& json) {
  std::lock_guard lock(files_->mu);
  if (files_->metrics_fd < 0) files_->metrics_fd = open_append(file("metrics.jsonl"));
  write_all(files_->metrics_fd, json + "\n");
  if (files_->events) files_->events->add_metrics(json, unix_micros() / 1e6);
  if (files_->mlflow) files_->mlflow->log_metrics(json, unix_micros() / 1000);
}

void RunDir::enable_mlflow(const std::string& root, const std::string& experiment,
                           const std::string& run_name,
                           const std::map<std::string, std::string>& params) {
  std::lock_guard lock(files_->mu);
  if (!files_->mlflow)
    files_->mlflow =
        std::make_unique<MlflowRun>(root, experiment, run_name, params, unix_micros() / 1000);
}

void RunDir::finish_mlflow(bool ok) {
  std::lock_guard lock(files_->mu);
  if (files_->mlflow) files_->mlflow->finish(ok, unix_micros() / 1000);
}

void RunDir::enable_tensorboard() {
  std::lock_guard lock(files_->mu);
  if (!files_->events)
    files_->events = std::make_unique<EventWriter>(file("tb"), unix_micros() / 1e6);
}

void RunDir::add_scalar(const std::string& tag, double value, int64_t step) {
  std::lock_guard lock(files_->mu);
  if (files_->events) files_->events->add_scalar(tag, value, step, unix_micros() / 1e6);
}

void RunDir::log(const std::string& text) {
  std::lock_guard lock(files_->mu);
  if (files_->launcher_fd < 0) files_->launcher_fd = open_append(file("launcher.log"));
  write_all(files_->launcher_fd, format_log_line(unix_micros(), text));
}

std::optional<std::string> newest_run(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return std::nullopt;
  std::optional<std::string> best;
  fs::file_time_type best_time;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    // job.yaml is written once, when the run starts: its time orders runs by start.
    if (!entry.is_directory(ec) || !fs::exists(entry.path() / "job.yaml", ec)) continue;
    auto t = fs::last_write_time(entry.path() / "job.yaml", ec);
    if (!best || t > best_time) {
      best = entry.path().string();
      best_time = t;
    }
  }
  return best;
}

mode_t apply_file_mode(const std::string& mode) {
  mode_t user = ::umask(077);
  if (mode != "private") ::umask(user);
  return user;
}

}  // namespace ptrain::launch
