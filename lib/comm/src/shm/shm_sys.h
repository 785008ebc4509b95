// Internal: the operating-system side of the shm backend: creating, mapping and unlinking the
// segment of a group, and telling whether a process still runs.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>

#include "ptrain/comm/communicator.h"
#include "ptrain/rendezvous/store.h"
#include "segment.h"

namespace ptrain::comm::shm {

// One mapping of a segment; unmapped on destruction.
class Mapping {
 public:
  Mapping() = default;
  Mapping(char* base, size_t bytes) : base(base), bytes(bytes) {}
  Mapping(Mapping&& o) noexcept { *this = std::move(o); }
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();

  char* base = nullptr;
  size_t bytes = 0;
  size_t slot_bytes = 0;
};

// Rank 0 creates the segment and publishes its name under "shm/segment"; the others map it and
// say so under "shm/mapped/<rank>"; rank 0 then unlinks the name. Throws TimeoutError when a
// rank does not come, ConfigError when a rank is on another host.
Mapping connect_segment(const GroupInfo& group, rendezvous::Store& store, const std::string& tag,
                        const Layout& layout, Millis timeout);

// True when `pid` no longer runs (gone, or a zombie nobody has reaped yet).
bool process_gone(pid_t pid);

}  // namespace ptrain::comm::shm
