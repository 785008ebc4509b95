#include "ptrain/data/safetensors.h"

#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <optional>
#include <variant>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "mapped_file.h"
#include "ptrain/core/error.h"
#include "ptrain/data/json.h"

namespace ptrain::data {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

// product(shape) * elem; false on overflow.
bool byte_size(const std::vector<int64_t>& shape, size_t elem, uint64_t* out) {
  uint64_t n = elem;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  *out = n;
  return true;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t n, uint64_t hash) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    hash ^= p[i];
    hash *= 0x100000001b3ull;
  }
  return hash;
}

uint64_t xxh3_64(const void* data, size_t n) {
  return XXH3_64bits(data, n);
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------- writer

void SafetensorsWriter::add(TensorRef tensor) {
  if (tensor.name.empty() || tensor.name == "__metadata__") {
    throw ConfigError(fmt::format("safetensors: invalid tensor name '{}'", tensor.name));
  }
  for (const auto& t : tensors_) {
    if (t.name == tensor.name) {
      throw ConfigError(fmt::format("safetensors: duplicate tensor name '{}'", tensor.name));
    }
  }
  uint64_t bytes;
  if (!byte_size(tensor.shape, dtype_size(tensor.dtype), &bytes)) {
    throw ConfigError(fmt::format("safetensors: tensor '{}' has an invalid shape {}", tensor.name,
                                  shape_str(tensor.shape)));
  }
  PTRAIN_CHECK(bytes == 0 || tensor.data != nullptr, "tensor '{}' has no data", tensor.name);
  tensors_.push_back(std::move(tensor));
}

void SafetensorsWriter::add(std::string name, const float* data, std::vector<int64_t> shape) {
  add(TensorRef{std::move(name), DType::kF32, std::move(shape), data});
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

std::string SafetensorsWriter::header() const {
  Json h = Json::object();
  if (!metadata_.empty()) {
    Json& meta = h["__metadata__"] = Json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    uint64_t bytes = 0;
    byte_size(t.shape, dtype_size(t.dtype), &bytes);
    h[t.name] = {{"dtype", std::string(safetensors_dtype_name(t.dtype))},
                 {"shape", t.shape},
                 {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = h.dump();
  } catch (const Json::type_error& e) {  // 316: a name or metadata string that is not UTF-8
    throw ConfigError(
        fmt::format("safetensors: a tensor name or metadata string is not valid "
                    "UTF-8 ({})",
                    e.what()));
  }
  while (text.size() % 8 != 0) text += ' ';
  return text;
}

namespace {

void put_u64le(uint64_t v, char out[8]) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

}  // namespace

std::string SafetensorsWriter::serialize() const {
  std::string h = header();
  std::string out(8, '\0');
  put_u64le(h.size(), out.data());
  out += h;
  for (const auto& t : tensors_) {
    uint64_t bytes = 0;
    byte_size(t.shape, dtype_size(t.dtype), &bytes);
    out.append(static_cast<const char*>(t.data), bytes);
  }
  return out;
}

namespace {

// Pieces below kDirectBytes are gathered into one buffer of kBufferBytes; larger ones are
// written from their own memory, at most kMaxWrite per call.
constexpr size_t kBufferBytes = 8u << 20;
constexpr size_t kDirectBytes = 1u << 20;
constexpr size_t kMaxWrite = size_t{1} << 30;

class FileSink {
 public:
  FileSink(int fd, const std::string& path) : fd_(fd), path_(path) {
    state_ = XXH3_createState();
    PTRAIN_CHECK(state_ != nullptr, "out of memory for the checksum state");
    XXH3_64bits_reset(state_);
    buffer_.reserve(kBufferBytes);
  }
  ~FileSink() { XXH3_freeState(state_); }
  FileSink(const FileSink&) = delete;
  FileSink& operator=(const FileSink&) = delete;

  void put(const void* data, size_t n) {
    if (n == 0) return;
    XXH3_64bits_update(state_, data, n);
    total_ += n;
    if (n >= kDirectBytes) {
      flush();
      write_all(static_cast<const char*>(data), n);
      return;
    }
    if (buffer_.size() + n > kBufferBytes) flush();
    buffer_.insert(buffer_.end(), static_cast<const char*>(data),
                   static_cast<const char*>(data) + n);
  }
  void flush() {
    write_all(buffer_.data(), buffer_.size());
    buffer_.clear();
  }
  uint64_t total() const { return total_; }
  uint64_t digest() const { return XXH3_64bits_digest(state_); }

 private:
  void write_all(const char* p, size_t n) {
    while (n > 0) {
      ssize_t w = ::write(fd_, p, std::min(n, kMaxWrite));
      if (w < 0) {
        if (errno == EINTR) continue;
        throw IoError(fmt::format("cannot write '{}': {}", path_, std::strerror(errno)),
                      errno == ENOSPC ? "the disk is full" : "");
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
  }

  int fd_;
  const std::string& path_;
  XXH3_state_t* state_ = nullptr;
  std::vector<char> buffer_;
  uint64_t total_ = 0;
};

}  // namespace

uint64_t SafetensorsWriter::write_fd(int fd, const std::string& path, uint64_t* xxh3) const {
  FileSink sink(fd, path);
  std::string h = header();
  char len[8];
  put_u64le(h.size(), len);
  sink.put(len, 8);
  sink.put(h.data(), h.size());
  for (const auto& t : tensors_) {
    uint64_t bytes = 0;
    byte_size(t.shape, dtype_size(t.dtype), &bytes);
    sink.put(t.data, bytes);
  }
  sink.flush();
  if (xxh3 != nullptr) *xxh3 = sink.digest();
  return sink.total();
}

// ---------------------------------------------------------------- reader

struct SafetensorsFile::Storage {
  std::variant<std::string, std::unique_ptr<MappedFile>> bytes;
};

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.origin_ = path;
  f.storage_ = std::make_unique<Storage>();
  auto mapped = std::make_unique<MappedFile>(path, "safetensors file");
  const uint8_t* data = mapped->data();
  size_t size = mapped->size();
  f.storage_->bytes = std::move(mapped);
  f.validate(data, size);
  return f;
}

SafetensorsFile SafetensorsFile::parse(std::string_view bytes, std::string origin) {
  SafetensorsFile f;
  f.origin_ = std::move(origin);
  f.storage_ = std::make_unique<Storage>();
  f.storage_->bytes = std::string(bytes);
  const auto& s = std::get<std::string>(f.storage_->bytes);
  f.validate(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  return f;
}

void SafetensorsFile::validate(const uint8_t* file, size_t size) {
  auto fail = [&](const std::string& what) -> void {
    throw ConfigError(fmt::format("safetensors file '{}': {}", origin_, what));
  };
  if (size < 8) fail(fmt::format("{} bytes, too short for the 8-byte header length", size));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file[i];
  if (n > kMaxSafetensorsHeader) {
    fail(fmt::format("header length {} exceeds the {}-byte limit", n, kMaxSafetensorsHeader));
  }
  if (n > size - 8) {
    fail(fmt::format("header length {} runs past the end of the file ({} bytes)", n, size));
  }
  std::string_view header(reinterpret_cast<const char*>(file + 8), n);
  Json root = parse_json(header, fmt::format("safetensors file '{}' header", origin_));
  if (!root.is_object()) fail("the header is not a JSON object");
  data_ = file + 8 + n;
  const uint64_t data_size = size - 8 - n;

  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail("__metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) fail(fmt::format("__metadata__ value of '{}' is not a string", k));
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    auto where = [&](const std::string& what) { fail(fmt::format("tensor '{}': {}", name, what)); };
    if (name.empty()) fail("a tensor has an empty name");
    if (!value.is_object()) where("entry is not an object");
    for (const auto& [k, v] : value.items()) {
      if (k != "dtype" && k != "shape" && k != "data_offsets") {
        where(fmt::format("unknown field '{}'", k));
      }
    }
    const Json* dt = json_member(value, "dtype");
    const Json* sh = json_member(value, "shape");
    const Json* off = json_member(value, "data_offsets");
    if (dt == nullptr || sh == nullptr || off == nullptr) {
      where("needs dtype, shape and data_offsets");
    }
    TensorInfo info;
    info.name = name;
    if (!dt->is_string()) where("dtype is not a string");
    const auto& dtype_text = dt->get_ref<const std::string&>();
    std::optional<DType> dtype = parse_safetensors_dtype(dtype_text);
    if (!dtype) {
      where(fmt::format("unsupported dtype '{}' (supported: F32, BF16, I32, I64, U8)", dtype_text));
    }
    info.dtype = *dtype;
    if (!sh->is_array()) where("shape is not an array");
    for (const auto& d : *sh) {
      int64_t v;
      if (!json_int64(d, &v) || v < 0) {
        where(fmt::format("shape entry '{}' is not a non-negative integer", d.dump()));
      }
      info.shape.push_back(v);
    }
    if (!off->is_array() || off->size() != 2) {
      where("data_offsets is not an array of two integers");
    }
    int64_t b, e;
    if (!json_int64((*off)[0], &b) || !json_int64((*off)[1], &e) || b < 0 || e < 0) {
      where("data_offsets are not non-negative integers");
    }
    if (b > e) where(fmt::format("data_offsets [{}, {}] end before they begin", b, e));
    info.begin = static_cast<uint64_t>(b);
    info.end = static_cast<uint64_t>(e);
    if (info.end > data_size) {
      where(fmt::format("data_offsets [{}, {}] run past the data section ({} bytes)", b, e,
                        data_size));
    }
    uint64_t bytes;
    if (!byte_size(info.shape, dtype_size(info.dtype), &bytes)) {
      where(fmt::format("shape {} is too large", shape_str(info.shape)));
    }
    if (bytes != info.end - info.begin) {
      where(fmt::format("shape {} x {} needs {} bytes but data_offsets [{}, {}] span {}",
                        shape_str(info.shape), safetensors_dtype_name(info.dtype), bytes, b, e,
                        info.end - info.begin));
    }
    tensors_.push_back(std::move(info));
  }

  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors_) {
    if (t.end > t.begin) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      fail(fmt::format("tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", by_offset[i - 1]->name,
                       by_offset[i - 1]->begin, by_offset[i - 1]->end, by_offset[i]->name,
                       by_offset[i]->begin, by_offset[i]->end));
    }
  }
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

void SafetensorsFile::read_f32(std::string_view name, float* out) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) {
    throw ConfigError(fmt::format("safetensors file '{}' has no tensor '{}'", origin_, name));
  }
  const uint8_t* p = bytes(*t);
  int64_t n = t->numel();
  if (t->dtype == DType::kF32) {
    std::memcpy(out, p, static_cast<size_t>(n) * 4);
  } else if (t->dtype == DType::kBF16) {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      uint32_t w = static_cast<uint32_t>(h) << 16;
      std::memcpy(&out[i], &w, 4);
    }
  } else {
    throw ConfigError(fmt::format("safetensors file '{}': tensor '{}' is {}, expected F32", origin_,
                                  name, safetensors_dtype_name(t->dtype)));
  }
}

void SafetensorsFile::read_as_f32(std::string_view name, float* out) const {
  const TensorInfo* t = find(name);
  if (t == nullptr ||
      (t->dtype != DType::kI64 && t->dtype != DType::kI32 && t->dtype != DType::kU8))
    return read_f32(name, out);
  const uint8_t* p = bytes(*t);
  const int64_t n = t->numel();
  for (int64_t i = 0; i < n; ++i) {
    if (t->dtype == DType::kI64) {
      int64_t v;
      std::memcpy(&v, p + 8 * i, 8);
      out[i] = static_cast<float>(v);
    } else if (t->dtype == DType::kI32) {
      int32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      out[i] = static_cast<float>(v);
    } else {
      out[i] = static_cast<float>(p[i]);
    }
  }
}

}  // namespace ptrain::data
