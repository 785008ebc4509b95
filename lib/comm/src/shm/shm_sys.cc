#include "shm_sys.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "ptrain/comm/shm.h"
#include "ptrain/core/error.h"

namespace ptrain::comm {
namespace shm {
namespace {

constexpr const char* kPrefix = "ptrain-";

// Keeps [A-Za-z0-9_.]: '-' separates the fields of a segment name.
std::string sanitize(const std::string& s, size_t max_len) {
  std::string out;
  for (char c : s) {
    if (out.size() >= max_len) break;
    out += (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.') ? c : '_';
  }
  return out.empty() ? "_" : out;
}

[[noreturn]] void fail_io(const std::string& what, int err) {
  throw IoError(fmt::format("{}: {}", what, std::strerror(err)),
                "check that /dev/shm is mounted and has room (df -h /dev/shm)");
}

}  // namespace

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    if (base) ::munmap(base, bytes);
    base = o.base;
    bytes = o.bytes;
    slot_bytes = o.slot_bytes;
    o.base = nullptr;
    o.bytes = 0;
  }
  return *this;
}

Mapping::~Mapping() {
  if (base) ::munmap(base, bytes);
}

bool process_gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(stat, line)) return false;
  auto paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size()) return false;
  const char state = line[paren + 2];
  return state == 'Z' || state == 'X';
}

Mapping connect_segment(const GroupInfo& group, rendezvous::Store& store, const std::string& tag,
                        const Layout& layout, Millis timeout) {
  const auto where =
      fmt::format("connecting shm group '{}' (rank {} of {})", group.name, group.rank, group.size);
  const std::string host = shm_host_identity();
  if (group.rank == 0) {
    sweep_stale_shm_segments();
    std::random_device rd;
    const std::string name =
        fmt::format("/{}{}-{}-{}-{:08x}", kPrefix, sanitize(tag, 80), sanitize(group.name, 80),
                    ::getpid(), static_cast<uint32_t>(rd()));
    const int fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) fail_io(fmt::format("{}: shm_open({})", where, name), errno);
    void* base = MAP_FAILED;
    if (::ftruncate(fd, static_cast<off_t>(layout.total)) == 0)
      base = ::mmap(nullptr, layout.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);
    if (base == MAP_FAILED) {
      ::shm_unlink(name.c_str());
      fail_io(fmt::format("{}: sizing and mapping {} ({} bytes)", where, name, layout.total), err);
    }
    Mapping map(static_cast<char*>(base), layout.total);
    auto* hdr = reinterpret_cast<Header*>(map.base);
    hdr->ranks = static_cast<uint32_t>(group.size);
    hdr->version = kVersion;
    hdr->slot_bytes = layout.slot;
    hdr->frag_bytes = layout.frag;
    hdr->total_bytes = layout.total;
    reinterpret_cast<RankCtl*>(map.base + layout.ctl_off)->pid.store(::getpid());
    hdr->magic.store(kMagic);
    store.set("shm/segment", name + "|" + host);
    std::vector<std::string> keys;
    for (int r = 1; r < group.size; ++r) keys.push_back(fmt::format("shm/mapped/{}", r));
    try {
      store.wait(keys, timeout);
    } catch (const TimeoutError& e) {
      ::shm_unlink(name.c_str());
      throw TimeoutError(fmt::format("{}: {}", where, e.what()),
                         "did every rank of the group start and create this group?");
    } catch (...) {
      ::shm_unlink(name.c_str());
      throw;
    }
    ::shm_unlink(name.c_str());  // every rank has it mapped: nothing is left after a crash
    return map;
  }

  rendezvous::Bytes value;
  try {
    value = store.get("shm/segment", timeout);
  } catch (const TimeoutError& e) {
    throw TimeoutError(fmt::format("{}: {}", where, e.what()),
                       "did every rank of the group start and create this group?");
  }
  const auto bar = value.find('|');
  const std::string name = value.substr(0, bar);
  const std::string their_host = bar == std::string::npos ? "" : value.substr(bar + 1);
  if (their_host != host)
    throw ConfigError(fmt::format("{}: this rank runs on {} but rank 0 of the group on {}; shared "
                                  "memory needs every rank on one host",
                                  where, host, their_host),
                      "use parallel.comm: auto or gloo for groups that span hosts");
  const int fd = ::shm_open(name.c_str(), O_RDWR, 0600);
  if (fd < 0) fail_io(fmt::format("{}: shm_open({})", where, name), errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) != layout.total) {
    ::close(fd);
    throw InternalError(
        fmt::format("{}: segment {} has {} bytes, expected {} (ranks disagree on "
                    "the slot size: set PTRAIN_SHM_SLOT_KB alike on every rank)",
                    where, name, static_cast<long long>(st.st_size), layout.total));
  }
  void* base = ::mmap(nullptr, layout.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);
  if (base == MAP_FAILED) fail_io(fmt::format("{}: mapping {}", where, name), err);
  Mapping map(static_cast<char*>(base), layout.total);
  auto* hdr = reinterpret_cast<Header*>(map.base);
  if (hdr->magic.load() != kMagic || hdr->ranks != static_cast<uint32_t>(group.size) ||
      hdr->slot_bytes != layout.slot)
    throw InternalError(fmt::format("{}: segment {} is not this group's ({} ranks, slot {} B)",
                                    where, name, hdr->ranks, hdr->slot_bytes));
  reinterpret_cast<RankCtl*>(map.base + layout.ctl_off)[group.rank].pid.store(::getpid());
  store.set(fmt::format("shm/mapped/{}", group.rank), "1");
  return map;
}

}  // namespace shm

int sweep_stale_shm_segments() {
  DIR* dir = ::opendir("/dev/shm");
  if (!dir) return 0;
  int removed = 0;
  while (dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name.rfind(shm::kPrefix, 0) != 0) continue;
    // ptrain-<tag>-<group>-<pid>-<nonce>: the creator's pid is the next-to-last field.
    const auto last = name.rfind('-');
    if (last == std::string::npos || last == 0) continue;
    const auto before = name.rfind('-', last - 1);
    if (before == std::string::npos) continue;
    const std::string pid_text = name.substr(before + 1, last - before - 1);
    char* end = nullptr;
    const long pid = std::strtol(pid_text.c_str(), &end, 10);
    if (pid_text.empty() || *end != '\0' || pid <= 0) continue;
    if (!shm::process_gone(static_cast<pid_t>(pid))) continue;
    if (::shm_unlink(("/" + name).c_str()) == 0) ++removed;
  }
  ::closedir(dir);
  return removed;
}

std::string shm_host_identity() {
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  std::string boot;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::getline(f, boot);
  return std::string(host) + "|" + boot;
}

}  // namespace ptrain::comm
