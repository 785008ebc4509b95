// IDX and CIFAR-10 readers (images.h). zlib's gz* functions read gzip and plain files alike.
#include "ptrain/data/images.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "ptrain/core/error.h"

namespace ptrain::data {
namespace {

constexpr uint32_t kIdxImages = 0x00000803;  // u8, 3 dimensions
constexpr uint32_t kIdxLabels = 0x00000801;  // u8, 1 dimension
constexpr int64_t kCifarRecord = 1 + 3 * 32 * 32;

uint32_t be32(const std::string& s, size_t at) {
  return uint32_t(uint8_t(s[at])) << 24 | uint32_t(uint8_t(s[at + 1])) << 16 |
         uint32_t(uint8_t(s[at + 2])) << 8 | uint32_t(uint8_t(s[at + 3]));
}

[[noreturn]] void bad(const std::string& path, const std::string& what, const std::string& hint) {
  throw ConfigError(fmt::format("image data '{}': {}", path, what), hint);
}

struct IdxHeader {
  std::vector<int64_t> dims;
  size_t header_bytes = 0;
};

IdxHeader idx_header(const std::string& path, const std::string& head, uint32_t want,
                     const char* kind) {
  if (head.size() < 8) bad(path, "shorter than an IDX header", "is this an IDX file?");
  const uint32_t magic = be32(head, 0);
  if (magic != want)
    bad(path,
        fmt::format("magic 0x{:08x} is not that of an IDX {} file (0x{:08x})", magic, kind, want),
        want == kIdxImages ? "data.path names the images (*-images-idx3-ubyte[.gz])"
                           : "data.labels names the labels (*-labels-idx1-ubyte[.gz])");
  IdxHeader h;
  const int nd = int(magic & 0xff);
  h.header_bytes = 4 + 4 * size_t(nd);
  if (head.size() < h.header_bytes) bad(path, "the IDX header is truncated", "the file is damaged");
  for (int d = 0; d < nd; ++d) h.dims.push_back(be32(head, 4 + 4 * size_t(d)));
  return h;
}

int64_t product(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::vector<int32_t> read_idx_labels(const std::string& path, bool check_size = true) {
  std::string bytes = read_maybe_gzip(path);
  IdxHeader h = idx_header(path, bytes, kIdxLabels, "labels");
  const int64_t n = h.dims[0];
  const int64_t have = int64_t(bytes.size() - h.header_bytes);
  if (check_size && have != n)
    bad(path,
        fmt::format("the header says {} labels but the file holds {}{}", n, have,
                    have < n ? " (truncated)" : ""),
        "the file is damaged or not complete; fetch it again");
  std::vector<int32_t> labels(size_t(std::min(n, have)));
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = uint8_t(bytes[h.header_bytes + i]);
  return labels;
}

}  // namespace

int ImageSet::max_label() const {
  int m = -1;
  for (int32_t l : labels) m = std::max(m, int(l));
  return m;
}

std::string read_maybe_gzip(const std::string& path, int64_t limit) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    bad(path, "does not exist or is not a file", "check data.path (relative to the spec's folder)");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) bad(path, "cannot be opened", "check the file's permissions");
  std::string out;
  std::vector<char> chunk(1 << 20);
  while (limit <= 0 || int64_t(out.size()) < limit) {
    unsigned want = unsigned(chunk.size());
    if (limit > 0) want = unsigned(std::min<int64_t>(want, limit - int64_t(out.size())));
    int got = gzread(f, chunk.data(), want);
    if (got < 0) {
      int err = 0;
      std::string what = gzerror(f, &err);
      gzclose(f);
      bad(path, fmt::format("cannot be read: {}", what), "the file is damaged; fetch it again");
    }
    if (got == 0) break;
    out.append(chunk.data(), size_t(got));
  }
  int err = 0;
  const char* msg = gzerror(f, &err);
  std::string what = msg ? msg : "";
  gzclose(f);
  // A gzip stream that ends early reads short with Z_BUF_ERROR.
  if (err != Z_OK && err != Z_STREAM_END && !(limit > 0 && int64_t(out.size()) >= limit))
    bad(path, fmt::format("the compressed stream is damaged or truncated ({})", what),
        "fetch the file again");
  return out;
}

// The content size of a file without reading it: a gzip file's trailer records it (mod 2^32).
int64_t stored_size(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) bad(path, "cannot be opened", "check data.path and the file's permissions");
  unsigned char magic[2] = {0, 0};
  size_t got = std::fread(magic, 1, 2, f);
  int64_t size = -1;
  if (got == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
    unsigned char t[4] = {0, 0, 0, 0};
    if (std::fseek(f, -4, SEEK_END) == 0 && std::fread(t, 1, 4, f) == 4)
      size = int64_t(t[0]) | int64_t(t[1]) << 8 | int64_t(t[2]) << 16 | int64_t(t[3]) << 24;
  } else if (std::fseek(f, 0, SEEK_END) == 0) {
    size = std::ftell(f);
  }
  std::fclose(f);
  return size;
}

ImageHeader peek_idx(const std::string& images, const std::string& labels) {
  std::string head = read_maybe_gzip(images, 16);
  IdxHeader h = idx_header(images, head, kIdxImages, "images");
  if (h.dims.size() != 3 || h.dims[0] < 1 || h.dims[1] < 1 || h.dims[2] < 1)
    bad(images, "an IDX images file has 3 non-empty dimensions (count, rows, cols)",
        "is this an IDX images file?");
  const int64_t need = product(h.dims) + int64_t(h.header_bytes);
  const int64_t have = stored_size(images);
  if (have != (need & 0xffffffffll) && have != need)
    bad(images,
        fmt::format("the header says {} images of {}x{} ({} bytes) but the file holds {} bytes "
                    "(truncated or damaged)",
                    h.dims[0], h.dims[1], h.dims[2], need, have),
        "the file is damaged or not complete; fetch it again");
  ImageHeader out;
  out.count = h.dims[0];
  out.C = 1;
  out.H = int(h.dims[1]);
  out.W = int(h.dims[2]);
  if (!labels.empty()) {
    auto l = read_idx_labels(labels);
    if (int64_t(l.size()) != out.count)
      throw ConfigError(fmt::format("image data: labels '{}' has {} labels but images '{}' has {} "
                                    "images",
                                    labels, l.size(), images, out.count),
                        "data.path and data.labels must be the same split of the same data set");
    for (int32_t v : l) out.classes = std::max(out.classes, int(v) + 1);
  }
  return out;
}

ImageSet load_idx(const std::string& images, const std::string& labels) {
  if (labels.empty())
    throw ConfigError(fmt::format("IDX images '{}' need a labels file", images),
                      "set data.labels (e.g. train-labels-idx1-ubyte.gz)");
  std::string bytes = read_maybe_gzip(images);
  IdxHeader h = idx_header(images, bytes, kIdxImages, "images");
  if (h.dims.size() != 3 || h.dims[0] < 1 || h.dims[1] < 1 || h.dims[2] < 1)
    bad(images, "an IDX images file has 3 non-empty dimensions (count, rows, cols)",
        "is this an IDX images file?");
  const int64_t need = product(h.dims), have = int64_t(bytes.size() - h.header_bytes);
  if (have != need)
    bad(images,
        fmt::format("the header says {} images of {}x{} ({} bytes) but the file holds {} bytes{}",
                    h.dims[0], h.dims[1], h.dims[2], need, have, have < need ? " (truncated)" : ""),
        "the file is damaged or not complete; fetch it again");
  ImageSet set;
  set.count = h.dims[0];
  set.C = 1;
  set.H = int(h.dims[1]);
  set.W = int(h.dims[2]);
  set.pixels.assign(bytes.begin() + long(h.header_bytes), bytes.end());
  set.labels = read_idx_labels(labels);
  set.origin = images;
  if (int64_t(set.labels.size()) != set.count)
    throw ConfigError(fmt::format("image data: labels '{}' has {} labels but images '{}' has {} "
                                  "images",
                                  labels, set.labels.size(), images, set.count),
                      "data.path and data.labels must be the same split of the same data set");
  return set;
}

std::vector<std::string> cifar_files(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) return {path};
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(path, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("data_batch_", 0) == 0 && name.size() > 4 &&
        name.substr(name.size() - 4) == ".bin")
      files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty())
    bad(path, "the folder has no data_batch_*.bin files",
        "name the CIFAR-10 binary folder (cifar-10-batches-bin) or one .bin file");
  return files;
}

ImageHeader peek_cifar(const std::string& path) {
  ImageHeader h;
  h.C = 3, h.H = 32, h.W = 32, h.classes = 10;
  for (const auto& f : cifar_files(path)) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(f, ec))
      bad(f, "does not exist or is not a file", "check data.path");
    const int64_t size = stored_size(f);
    if (size <= 0 || size % kCifarRecord != 0)
      bad(f,
          fmt::format("{} bytes is not a whole number of {}-byte CIFAR-10 records (truncated?)",
                      size, kCifarRecord),
          "the file is damaged or not CIFAR-10 binary (CIFAR-100 has 2 label bytes)");
    h.count += size / kCifarRecord;
  }
  return h;
}

ImageSet load_cifar(const std::string& path) {
  ImageSet set;
  set.C = 3, set.H = 32, set.W = 32;
  set.origin = path;
  for (const auto& f : cifar_files(path)) {
    std::string bytes = read_maybe_gzip(f);
    if (bytes.empty() || int64_t(bytes.size()) % kCifarRecord != 0)
      bad(f,
          fmt::format("{} bytes is not a whole number of {}-byte CIFAR-10 records{}", bytes.size(),
                      kCifarRecord, bytes.empty() ? "" : " (truncated?)"),
          "the file is damaged or not CIFAR-10 binary (CIFAR-100 has 2 label bytes)");
    const int64_t n = int64_t(bytes.size()) / kCifarRecord;
    for (int64_t i = 0; i < n; ++i) {
      const char* rec = bytes.data() + i * kCifarRecord;
      const int label = uint8_t(rec[0]);
      if (label > 9)
        bad(f, fmt::format("record {} has label {}, but CIFAR-10 labels are 0-9", i, label),
            "the file is damaged or not CIFAR-10 binary");
      set.labels.push_back(label);
      set.pixels.insert(set.pixels.end(), rec + 1, rec + kCifarRecord);
    }
    set.count += n;
  }
  return set;
}

}  // namespace ptrain::data
