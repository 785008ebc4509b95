// Internal: the layout of one shm segment and the wait/notify primitive over it.
//
// [Header][RankCtl x n][slot (rank, buffer) x 2n][ring (src, dst) x n*n]
//
// A collective round writes this rank's slot, meets the others at a barrier (monotonic per-rank
// epochs), then reads theirs; rounds alternate between each rank's two slots, so the writes of
// round k+2 can never race the reads of round k (every rank finishes reading round k before it
// arrives at the barrier of round k+1). Point-to-point messages go through one single-producer,
// single-consumer ring of frames per ordered pair.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace ptrain::comm::shm {

inline constexpr uint64_t kMagic = 0x70747261696e5348ull;  // "ptrainSH"
inline constexpr uint32_t kVersion = 1;
inline constexpr int kRingFrames = 4;

// What each rank says it is about to run; all ranks of a group must agree.
struct OpMeta {
  uint32_t kind = 0;
  uint32_t dtype = 0;
  uint64_t count = 0;
  int32_t root = -1;
  uint32_t reduce = 0;
  uint64_t seq = 0;
  bool operator==(const OpMeta&) const = default;
};
static_assert(sizeof(OpMeta) == 32);

struct alignas(64) Header {
  std::atomic<uint64_t> magic;  // written last by rank 0
  uint32_t ranks;
  uint32_t version;
  uint64_t slot_bytes;
  uint64_t frag_bytes;
  uint64_t total_bytes;
  alignas(64) std::atomic<uint32_t> bell;  // futex word: bumped on every state change
  alignas(64) std::atomic<uint32_t> sleepers;
  alignas(64) std::atomic<uint32_t> abort_state;  // 0 none, 1 being written, 2 set
  int32_t abort_rank;
  char abort_reason[448];
};

struct alignas(64) RankCtl {
  std::atomic<uint64_t> arrive;  // the last barrier epoch this rank reached
  alignas(64) std::atomic<int32_t> pid;
  std::atomic<uint32_t> left;  // 1 once this rank closed its communicator
  OpMeta meta[2];              // consistency check: alternates by op sequence
};

struct alignas(64) RingCtl {
  std::atomic<uint64_t> head;              // frames consumed (written by the receiver)
  alignas(64) std::atomic<uint64_t> tail;  // frames produced (written by the sender)
};

struct alignas(64) FrameHead {
  uint32_t tag;
  uint32_t pad;
  uint64_t msg_bytes;   // the whole message
  uint64_t frag_bytes;  // this frame's payload, which follows the head
};

static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

inline size_t align_up(size_t x, size_t a) {
  return (x + a - 1) / a * a;
}

struct Layout {
  int n = 1;
  size_t slot = 0, frag = 0;
  size_t ctl_off = 0, slots_off = 0, rings_off = 0, ring_bytes = 0, frame_bytes = 0, total = 0;

  Layout(int ranks, size_t slot_bytes) : n(ranks), slot(align_up(slot_bytes, 4096)) {
    // Rings shrink with the group so the segment stays about 2n slots + n MiB.
    frag = align_up(std::max<size_t>(4096, (256u << 10) / size_t(n)), 4096);
    ctl_off = align_up(sizeof(Header), 64);
    slots_off = align_up(ctl_off + sizeof(RankCtl) * size_t(n), 4096);
    rings_off = slots_off + 2 * size_t(n) * slot;
    frame_bytes = sizeof(FrameHead) + frag;
    ring_bytes = align_up(sizeof(RingCtl) + kRingFrames * frame_bytes, 4096);
    total = rings_off + size_t(n) * size_t(n) * ring_bytes;
  }
};

}  // namespace ptrain::comm::shm
