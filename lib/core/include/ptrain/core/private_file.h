// Files only their owner may read: run-folder secrets, the job's TLS key and certificates.
#pragma once

#include <string>

namespace ptrain {

// Writes `content` to `path` with mode 0600, through `path`.tmp renamed over it, so a reader
// sees the old file or the whole new one. Throws IoError naming the file and the reason.
void write_private_file(const std::string& path, const std::string& content);

}  // namespace ptrain
