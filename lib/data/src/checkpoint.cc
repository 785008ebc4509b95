#include "ptrain/data/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>

#include "mapped_file.h"
#include "ptrain/core/error.h"
#include "ptrain/data/json.h"

namespace ptrain::data {

namespace fs = std::filesystem;

namespace {

constexpr const char* kManifestFormat = "ptrain-checkpoint";
constexpr int kManifestVersion = 1;

std::string join(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

std::string model_name(int64_t step) {
  return fmt::format("step-{}.safetensors", step);
}
std::string optim_name(int64_t step) {
  return fmt::format("step-{}.optim.safetensors", step);
}
std::string manifest_name(int64_t step) {
  return fmt::format("step-{}.json", step);
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    throw IoError(fmt::format("cannot open checkpoint folder '{}': {}", dir, std::strerror(errno)));
  }
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) {
    throw IoError(fmt::format("cannot fsync checkpoint folder '{}': {}", dir, std::strerror(err)));
  }
}

std::function<void(const std::string&)>& temp_hook() {
  static std::function<void(const std::string&)> hook;
  return hook;
}

// Writes `final_name` in `dir` through a temp file: write, fsync, close, rename, fsync(dir).
// `write` returns (bytes, checksum). On any failure the temp file is removed.
CheckpointFile write_atomic(
    const std::string& dir, const std::string& final_name,
    const std::function<uint64_t(int fd, const std::string& path, uint64_t* hash)>& write) {
  std::string tmp = join(dir, fmt::format(".{}.tmp-{}", final_name, ::getpid()));
  std::string final_path = join(dir, final_name);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0 && temp_hook()) temp_hook()(tmp);
  if (fd < 0) {
    throw IoError(fmt::format("cannot create '{}': {}", tmp, std::strerror(errno)),
                  "check that the checkpoint folder is writable");
  }
  CheckpointFile file;
  file.name = final_name;
  try {
    file.bytes = write(fd, tmp, &file.checksum);
    if (::fsync(fd) != 0) {
      throw IoError(fmt::format("cannot fsync '{}': {}", tmp, std::strerror(errno)));
    }
    int rc = ::close(fd);
    fd = -1;
    if (rc != 0) throw IoError(fmt::format("cannot close '{}': {}", tmp, std::strerror(errno)));
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
      throw IoError(
          fmt::format("cannot rename '{}' to '{}': {}", tmp, final_path, std::strerror(errno)));
    }
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_dir(dir);
  return file;
}

uint64_t write_string(int fd, const std::string& path, const std::string& s, uint64_t* hash) {
  *hash = xxh3_64(s.data(), s.size());
  size_t off = 0;
  while (off < s.size()) {
    ssize_t w = ::write(fd, s.data() + off, s.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IoError(fmt::format("cannot write '{}': {}", path, std::strerror(errno)),
                    errno == ENOSPC ? "the disk is full" : "");
    }
    off += static_cast<size_t>(w);
  }
  return s.size();
}

void check_finite(const CheckpointData& data) {
  for (const auto& t : data.model) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    for (uint64_t i = 0; i < n; ++i) {
      float v;
      if (t.dtype == DType::kF32) {
        std::memcpy(&v, static_cast<const char*>(t.data) + 4 * i, 4);
      } else if (t.dtype == DType::kBF16) {
        uint16_t h;
        std::memcpy(&h, static_cast<const char*>(t.data) + 2 * i, 2);
        uint32_t w = static_cast<uint32_t>(h) << 16;
        std::memcpy(&v, &w, 4);
      } else {
        break;
      }
      if (!std::isfinite(v)) {
        throw Error(fmt::format("refusing to save checkpoint step {}: model tensor '{}' holds {} "
                                "at flat index {}",
                                data.step, t.name, v, i),
                    "the training diverged; lower the learning rate or enable grad_clip");
      }
    }
  }
}

std::string manifest_json(const CheckpointManifest& m) {
  Json files = Json::array();
  for (const auto& f : m.files) {
    files.push_back({{"name", f.name},
                     {"bytes", f.bytes},
                     {f.checksum_kind, fmt::format("{:016x}", f.checksum)}});
  }
  Json manifest = {{"format", kManifestFormat},
                   {"version", kManifestVersion},
                   {"step", m.step},
                   {"files", std::move(files)},
                   {"metadata", m.metadata}};
  try {
    return manifest.dump(2) + "\n";
  } catch (const Json::type_error& e) {  // 316: a string that is not UTF-8
    throw ConfigError(fmt::format("checkpoint step {}: a metadata string is not valid UTF-8 ({})",
                                  m.step, e.what()));
  }
}

// "step-<digits>.json" -> step; false otherwise.
bool parse_manifest_name(const std::string& name, int64_t* step) {
  constexpr std::string_view prefix = "step-", suffix = ".json";
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) ||
      !name.ends_with(suffix)) {
    return false;
  }
  std::string_view digits(name.data() + prefix.size(), name.size() - prefix.size() - suffix.size());
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
  }
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *step);
  return ec == std::errc() && ptr == digits.data() + digits.size();
}

uint64_t hash_file(const std::string& path, const std::string& kind) {
  MappedFile f(path, "checkpoint file");
  return kind == "fnv1a64" ? fnv1a64(f.data(), f.size()) : xxh3_64(f.data(), f.size());
}

void remove_checkpoint(const std::string& dir, int64_t step) {
  // Manifest first, so a half-removed checkpoint never looks complete.
  for (const auto& name : {manifest_name(step), model_name(step), optim_name(step)}) {
    std::string p = join(dir, name);
    if (::unlink(p.c_str()) != 0 && errno != ENOENT) {
      spdlog::warn("cannot remove old checkpoint file '{}': {}", p, std::strerror(errno));
    }
  }
}

}  // namespace

std::string CheckpointManifest::manifest_path() const {
  return join(dir, manifest_name(step));
}
std::string CheckpointManifest::model_path() const {
  return join(dir, model_name(step));
}
std::string CheckpointManifest::optim_path() const {
  return join(dir, optim_name(step));
}

CheckpointManifest save_checkpoint(const std::string& dir, const CheckpointData& data,
                                   const CheckpointOptions& options) {
  if (data.step < 0) throw ConfigError(fmt::format("checkpoint step {} is negative", data.step));
  if (options.refuse_nonfinite) check_finite(data);

  SafetensorsWriter model, optim;
  for (const auto& t : data.model) model.add(t);
  for (const auto& t : data.optim) optim.add(t);
  model.set_metadata("format", "pt");  // what Hugging Face loaders expect
  model.set_metadata("step", std::to_string(data.step));
  optim.set_metadata("step", std::to_string(data.step));
  // The model's shape travels inside its file too, so the file alone can be loaded (generate).
  // So is its tokenizer: `ptrain generate` decodes with it.
  for (const char* key : {"config", "tokenizer"})
    if (auto it = data.metadata.find(key); it != data.metadata.end())
      model.set_metadata(key, it->second);

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    throw IoError(fmt::format("cannot create checkpoint folder '{}': {}", dir, ec.message()));
  }

  CheckpointManifest m;
  m.dir = dir;
  m.step = data.step;
  m.metadata = data.metadata;
  // Saving a step again: retire its old manifest first so it cannot vouch for new files.
  std::string old_manifest = m.manifest_path();
  if (::unlink(old_manifest.c_str()) == 0) fsync_dir(dir);

  auto writer_fn = [](const SafetensorsWriter& w) {
    return [&w](int fd, const std::string& path, uint64_t* hash) {
      return w.write_fd(fd, path, hash);
    };
  };
  m.files.push_back(write_atomic(dir, model_name(data.step), writer_fn(model)));
  m.files.push_back(write_atomic(dir, optim_name(data.step), writer_fn(optim)));
  std::string json = manifest_json(m);
  write_atomic(dir, manifest_name(data.step),
               [&json](int fd, const std::string& path, uint64_t* hash) {
                 return write_string(fd, path, json, hash);
               });

  if (options.keep > 0) {
    auto steps = list_checkpoints(dir);
    int kept = 0;
    for (int64_t s : steps) {
      if (s == data.step || kept < options.keep) {
        ++kept;
        continue;
      }
      remove_checkpoint(dir, s);
    }
  }
  return m;
}

std::vector<int64_t> list_checkpoints(const std::string& dir) {
  std::vector<int64_t> steps;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return steps;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    int64_t step;
    if (parse_manifest_name(entry.path().filename().string(), &step)) steps.push_back(step);
  }
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

CheckpointManifest validate_checkpoint(const std::string& manifest_path) {
  auto fail = [&](const std::string& what) -> void {
    throw ConfigError(fmt::format("checkpoint manifest '{}': {}", manifest_path, what));
  };
  CheckpointManifest m;
  fs::path parent = fs::path(manifest_path).parent_path();
  m.dir = (parent.empty() ? fs::path(".") : parent).string();
  int64_t name_step = -1;
  bool named = parse_manifest_name(fs::path(manifest_path).filename().string(), &name_step);

  MappedFile file(manifest_path, "checkpoint manifest");
  std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
  Json root = parse_json(text, fmt::format("checkpoint manifest '{}'", manifest_path));
  const Json* format = json_member(root, "format");
  const Json* version = json_member(root, "version");
  const Json* step = json_member(root, "step");
  const Json* files = json_member(root, "files");
  const Json* metadata = json_member(root, "metadata");
  int64_t v = 0;
  if (format == nullptr || !format->is_string() || *format != kManifestFormat) {
    fail(fmt::format("not a {} manifest", kManifestFormat));
  }
  if (version == nullptr || !json_int64(*version, &v) || v != kManifestVersion) {
    fail(fmt::format("unsupported version (expected {})", kManifestVersion));
  }
  if (step == nullptr || !json_int64(*step, &m.step) || m.step < 0) fail("missing or bad step");
  if (named && name_step != m.step) {
    fail(fmt::format("records step {} but is named for step {}", m.step, name_step));
  }
  if (files == nullptr || !files->is_array() || files->empty()) fail("no files");
  for (const auto& f : *files) {
    const Json* name = json_member(f, "name");
    const Json* bytes = json_member(f, "bytes");
    CheckpointFile cf;
    const Json* hash = json_member(f, "xxh3_64");
    if (hash == nullptr && (hash = json_member(f, "fnv1a64")) != nullptr)
      cf.checksum_kind = "fnv1a64";  // written before XXH3
    int64_t b = 0;
    if (name == nullptr || !name->is_string() || bytes == nullptr || !json_int64(*bytes, &b) ||
        b < 0 || hash == nullptr || !hash->is_string()) {
      fail("a files entry needs name, bytes and a checksum (xxh3_64, or fnv1a64)");
    }
    cf.name = name->get<std::string>();
    if (cf.name.empty() || cf.name.find('/') != std::string::npos) {
      fail(fmt::format("bad file name '{}'", cf.name));
    }
    cf.bytes = static_cast<uint64_t>(b);
    const auto& hex = hash->get_ref<const std::string&>();
    auto [ptr, ec] = std::from_chars(hex.data(), hex.data() + hex.size(), cf.checksum, 16);
    if (hex.size() != 16 || ec != std::errc() || ptr != hex.data() + hex.size()) {
      fail(fmt::format("bad checksum '{}' for '{}'", hex, cf.name));
    }
    m.files.push_back(std::move(cf));
  }
  if (metadata != nullptr) {
    if (!metadata->is_object()) fail("metadata is not an object");
    for (const auto& [k, val] : metadata->items()) {
      if (!val.is_string()) fail(fmt::format("metadata '{}' is not a string", k));
      m.metadata[k] = val.get<std::string>();
    }
  }
  for (const auto& f : m.files) {
    std::string path = join(m.dir, f.name);
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      throw ConfigError(fmt::format("checkpoint file '{}' (listed in '{}') is missing: {}", path,
                                    manifest_path, std::strerror(errno)));
    }
    if (static_cast<uint64_t>(st.st_size) != f.bytes) {
      throw ConfigError(fmt::format("checkpoint file '{}' is {} bytes, its manifest says {}", path,
                                    st.st_size, f.bytes));
    }
    uint64_t h = hash_file(path, f.checksum_kind);
    if (h != f.checksum) {
      throw ConfigError(
          fmt::format("checkpoint file '{}' has checksum {:016x}, its manifest says "
                      "{:016x} ({}; the file is corrupt)",
                      path, h, f.checksum, f.checksum_kind));
    }
    SafetensorsFile::open(path);  // structure check
  }
  return m;
}

void set_checkpoint_temp_hook(std::function<void(const std::string& path)> hook) {
  temp_hook() = std::move(hook);
}

std::optional<CheckpointManifest> find_resume_checkpoint(const std::string& dir) {
  std::vector<std::string> problems;
  for (int64_t step : list_checkpoints(dir)) {
    std::string path = join(dir, manifest_name(step));
    try {
      return validate_checkpoint(path);
    } catch (const Error& e) {
      spdlog::warn("skipping checkpoint step {}: {}; trying an older one", step, e.what());
      problems.push_back(e.what());
    }
  }
  if (!problems.empty())
    throw ConfigError(fmt::format("no checkpoint in '{}' is usable, so the job would start over "
                                  "and overwrite them: {}",
                                  dir, fmt::join(problems, "; ")),
                      "restore the files, point checkpoint.dir elsewhere, or set "
                      "checkpoint.resume: never to start over on purpose");
  return std::nullopt;
}

std::vector<std::string> sweep_incomplete(const std::string& dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return removed;
  std::vector<int64_t> complete = list_checkpoints(dir);
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    bool temp = name.size() > 1 && name[0] == '.' && name.find(".tmp-") != std::string::npos &&
                name.rfind(".step-", 0) == 0;
    bool orphan = false;
    int64_t step = 0;
    if (!temp && name.rfind("step-", 0) == 0 &&
        std::sscanf(name.c_str(), "step-%" SCNd64, &step) == 1 &&
        std::find(complete.begin(), complete.end(), step) == complete.end())
      orphan = true;
    if (!temp && !orphan) continue;
    if (fs::remove(entry.path(), ec)) removed.push_back(name);
  }
  return removed;
}

std::string manifest_for(const std::string& path) {
  for (const char* suffix : {".optim.safetensors", ".safetensors"}) {
    std::string s(suffix);
    if (path.size() > s.size() && path.compare(path.size() - s.size(), s.size(), s) == 0)
      return path.substr(0, path.size() - s.size()) + ".json";
  }
  return path;
}

CheckpointLock::CheckpointLock(const std::string& dir, const std::string& holder) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  std::string path = join(dir, ".ptrain-lock");
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0)
    throw IoError(
        fmt::format("cannot open the checkpoint lock '{}': {}", path, std::strerror(errno)),
        "checkpoint.dir must be writable");
  std::string current;
  {
    char buf[512];
    ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    if (n > 0) current.assign(buf, static_cast<size_t>(n));
    while (!current.empty() && (current.back() == '\n' || current.back() == '\0'))
      current.pop_back();
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    ::close(fd_);
    fd_ = -1;
    if (e == EWOULDBLOCK)
      throw ConfigError(fmt::format("checkpoint.dir '{}' is in use by another job ({})", dir,
                                    current.empty() ? "holder unknown" : current),
                        "give each job its own checkpoint.dir, or wait for that job to end");
    throw IoError(fmt::format("cannot lock '{}': {}", path, std::strerror(e)));
  }
  took_over_ = !current.empty();
  previous_ = current;
  std::string text = holder + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, text.data(), text.size(), 0) < 0) {
    // The lock itself holds; the holder's name is only a courtesy for the next job's message.
  }
}

CheckpointLock::~CheckpointLock() {
  if (fd_ < 0) return;
  // An ended job leaves an empty lock file: the next one takes it without a warning.
  if (::ftruncate(fd_, 0) != 0) {
  }
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

std::optional<CheckpointManifest> find_latest_complete(const std::string& dir) {
  for (int64_t step : list_checkpoints(dir)) {
    std::string path = join(dir, manifest_name(step));
    try {
      return validate_checkpoint(path);
    } catch (const Error& e) {
      spdlog::warn("skipping checkpoint step {}: {}; trying an older one", step, e.what());
    }
  }
  return std::nullopt;
}

}  // namespace ptrain::data
