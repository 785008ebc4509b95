// A read-only memory map of a whole regular file (RAII: the fd and the mapping live together).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ptrain::data {

class MappedFile {
 public:
  // Throws ConfigError when the path is missing or not a regular file (a directory, a device),
  // IoError when it cannot be opened or mapped. `what` names the file's role in messages
  // ("token file", "safetensors file").
  MappedFile(const std::string& path, const char* what);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace ptrain::data
