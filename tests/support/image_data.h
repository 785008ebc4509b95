// Test harness: small image data sets in the real file formats (IDX, optionally gzip; CIFAR-10
// binary), learnable: class c's image is a bright square at a position of its own plus noise.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace ptrain::testing {

struct ImageFiles {
  std::string images, labels;
};

inline std::vector<uint8_t> be32(uint32_t v) {
  return {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)};
}

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes, bool gz) {
  if (gz) {
    gzFile f = gzopen(path.c_str(), "wb");
    gzwrite(f, bytes.data(), unsigned(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
}

// Pixels [count, C, H, W] and labels of the synthetic classes.
inline void make_images(int count, int C, int H, int W, int classes, uint32_t seed,
                        std::vector<uint8_t>* pixels, std::vector<uint8_t>* labels) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> noise(0, 60);
  pixels->assign(size_t(count) * C * H * W, 0);
  labels->assign(size_t(count), 0);
  for (int n = 0; n < count; ++n) {
    const int c = int(rng() % uint32_t(classes));
    (*labels)[size_t(n)] = uint8_t(c);
    const int cy = (c * 3) % std::max(1, H - 2), cx = (c * 5) % std::max(1, W - 2);
    for (int ch = 0; ch < C; ++ch)
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
          int v = noise(rng);
          if (y >= cy && y < cy + 3 && x >= cx && x < cx + 3) v += 180 - 30 * ch;
          (*pixels)[((size_t(n) * C + ch) * H + y) * W + x] = uint8_t(std::min(v, 255));
        }
  }
}

// `stem`-images-idx3-ubyte[.gz] and `stem`-labels-idx1-ubyte[.gz] in `dir`.
inline ImageFiles write_idx(const std::string& dir, const std::string& stem, int count, int H,
                            int W, int classes, uint32_t seed, bool gz = true) {
  std::vector<uint8_t> pixels, labels;
  make_images(count, 1, H, W, classes, seed, &pixels, &labels);
  std::vector<uint8_t> img = be32(0x00000803), lab = be32(0x00000801);
  for (uint32_t d : {uint32_t(count), uint32_t(H), uint32_t(W)})
    for (uint8_t b : be32(d)) img.push_back(b);
  for (uint8_t b : be32(uint32_t(count))) lab.push_back(b);
  img.insert(img.end(), pixels.begin(), pixels.end());
  lab.insert(lab.end(), labels.begin(), labels.end());
  const std::string ext = gz ? ".gz" : "";
  ImageFiles f{dir + "/" + stem + "-images-idx3-ubyte" + ext,
               dir + "/" + stem + "-labels-idx1-ubyte" + ext};
  write_bytes(f.images, img, gz);
  write_bytes(f.labels, lab, gz);
  return f;
}

// A CIFAR-10 binary batch of `count` 3x32x32 records.
inline std::string write_cifar(const std::string& path, int count, uint32_t seed) {
  std::vector<uint8_t> pixels, labels, out;
  make_images(count, 3, 32, 32, 10, seed, &pixels, &labels);
  for (int n = 0; n < count; ++n) {
    out.push_back(labels[size_t(n)]);
    out.insert(out.end(), pixels.begin() + long(n) * 3072, pixels.begin() + long(n + 1) * 3072);
  }
  write_bytes(path, out, false);
  return path;
}

}  // namespace ptrain::testing
