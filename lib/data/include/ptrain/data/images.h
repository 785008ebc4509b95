// Image classification data sets in their distribution formats, read whole into memory as
// uint8 pixels [count, C, H, W] and int32 labels [count]:
//   - IDX (MNIST, Fashion-MNIST): an images file (magic 0x00000803: u8 pixels, 3 dimensions
//     count, rows, cols, big-endian) and a labels file (0x00000801: count); gzip-compressed files
//     (`*-ubyte.gz`) are read directly;
//   - CIFAR-10 binary: records of one label byte and 3072 pixel bytes (3 x 32 x 32, CHW); a file
//     or a folder, whose data_batch_*.bin files are read in name order.
// Every malformed input is a ConfigError that names the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain::data {

struct ImageSet {
  int64_t count = 0;
  int C = 1, H = 0, W = 0;
  std::vector<uint8_t> pixels;  // [count, C, H, W]
  std::vector<int32_t> labels;  // [count]
  std::string origin;           // the file(s) it came from, for messages
  int64_t image_size() const { return int64_t(C) * H * W; }
  int max_label() const;  // -1 when empty
};

// What the loader needs at validate time, read without the pixels.
struct ImageHeader {
  int64_t count = 0;
  int C = 1, H = 0, W = 0;
  int classes = 0;  // largest label + 1 (IDX: from the labels file; CIFAR-10: 10)
};

ImageSet load_idx(const std::string& images, const std::string& labels);
ImageHeader peek_idx(const std::string& images, const std::string& labels);

// `path`: a CIFAR-10 .bin file or a folder of data_batch_*.bin.
ImageSet load_cifar(const std::string& path);
ImageHeader peek_cifar(const std::string& path);
// The files `path` stands for (itself, or the folder's data_batch_*.bin in name order).
std::vector<std::string> cifar_files(const std::string& path);

// The whole (decompressed when gzip) content of a file; ConfigError naming it when it cannot be
// read or the gzip stream is damaged. At most `limit` bytes are read when limit > 0.
std::string read_maybe_gzip(const std::string& path, int64_t limit = 0);

}  // namespace ptrain::data
