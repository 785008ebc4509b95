#include "mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ptrain/core/error.h"

namespace ptrain::data {

MappedFile::MappedFile(const std::string& path, const char* what) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    int err = errno;
    if (err == ENOENT) {
      throw ConfigError(fmt::format("{} '{}' does not exist", what, path),
                        "check the path (relative paths resolve against the spec's folder)");
    }
    throw IoError(fmt::format("cannot open {} '{}': {}", what, path, std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    int err = errno;
    ::close(fd_);
    throw IoError(fmt::format("cannot stat {} '{}': {}", what, path, std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw ConfigError(fmt::format("{} '{}' is {}, not a regular file", what, path,
                                  S_ISDIR(st.st_mode) ? "a directory" : "a special file"));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd_);
      throw IoError(fmt::format("cannot map {} '{}': {}", what, path, std::strerror(err)));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace ptrain::data
