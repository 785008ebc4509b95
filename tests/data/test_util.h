// Helpers for lib/data tests: a temporary folder removed at scope exit, file writing, and a
// matcher-free way to check that a call throws a given error type with a message fragment.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace ptrain::data::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ptrain-data-XXXXXX").string();
    char* p = ::mkdtemp(tmpl.data());
    if (p == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace ptrain::data::testing

// EXPECT_THROW_MSG(stmt, ExceptionType, "fragment"): throws that type, message contains fragment.
#define EXPECT_THROW_MSG(stmt, type, fragment)                                   \
  do {                                                                           \
    bool ptrain_thrown_ = false;                                                 \
    try {                                                                        \
      stmt;                                                                      \
    } catch (const type& e) {                                                    \
      ptrain_thrown_ = true;                                                     \
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)         \
          << "message: " << e.what() << "\nexpected to contain: " << (fragment); \
    }                                                                            \
    EXPECT_TRUE(ptrain_thrown_) << #stmt " did not throw " #type;                \
  } while (0)
