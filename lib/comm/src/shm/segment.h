// Internal: the layout of one shm segment and the wait/notify primitive over it.
//
// [Header][RankCtl x n][staging region (rank) x n][ring (src, dst) x n*n]
//
// Staging: each rank owns a region of 2 slots, seen as a ring of K cells (Layout::cells; 512 KiB
// each by default). allreduce, reduce_scatter, allgather and broadcast move their data through
// cells numbered by one sequence g = 0, 1, 2, ... that runs on across ops (the same on every rank,
// since every rank issues the same ops); cell g lives at position g % K of each rank's region.
// Each rank publishes three monotonic counters in its RankCtl:
//   posted  = c: it has written its input into its cells < c;
//   reduced = c: it has written its reduced slice into its cells < c (allreduce only);
//   done    = c: it has finished reading every rank's cells < c.
// A reader waits for the writer's posted (or reduced) to pass g before it reads cell g, so the
// data is there (release store / acquire load). A writer may reuse position g % K for cell g
// only once every rank's done >= g - K + 1, i.e. every reader has consumed cell g - K, the last
// one that lived there. No rank ever waits for a cell later than the ones it has published
// itself, so the pipeline cannot deadlock while K >= 2; ops overlap the stages of a few
// consecutive cells, so a rank reduces cell g while its peers still write g + 1, with the data of
// cell g still in cache.
// alltoallv uses the region as two slots with barriers between rounds (rounds alternate between
// the slots, so the writes of round k+2 cannot race the reads of round k: every rank finishes
// reading round k before it arrives at the barrier of round k+1). Before its first write it waits
// until every rank's done reaches the current cell number (nothing in flight is still read), and
// at its end it takes K cell numbers at once and sets done past them: so the next cell op reuses
// no position before every rank has left the alltoallv.
// Point-to-point messages go through one single-producer, single-consumer ring of frames per
// ordered pair.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace ptrain::comm::shm {

inline constexpr uint64_t kMagic = 0x70747261696e5348ull;  // "ptrainSH"
inline constexpr uint32_t kVersion = 2;
// Bytes of one staging cell (at most half a slot, so a region has at least 4 cells). Each cell
// costs three waits in an allreduce; with ranks that share busy cores a wait often means a sleep
// and a wake, so cells are as large as the 2 MiB L2 of a core comfortably holds (a 64 MiB
// allreduce, 2 ranks on 2 cores shared with compile jobs, two runs each: 64 KiB cells 55-84 ms,
// 128 KiB 31-52 ms, 256 KiB 18-39 ms, 512 KiB 23-30 ms, and 14-22 ms in a later set).
inline constexpr size_t kCellBytes = 512u << 10;
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
  // Cell counters (see the top of this file); each on its own line, as each is polled alone.
  alignas(64) std::atomic<uint64_t> posted;
  alignas(64) std::atomic<uint64_t> reduced;
  alignas(64) std::atomic<uint64_t> done;
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
  size_t cell = 0;     // bytes of one staging cell
  uint64_t cells = 0;  // cells per rank's region (2 slots)
  size_t ctl_off = 0, slots_off = 0, rings_off = 0, ring_bytes = 0, frame_bytes = 0, total = 0;

  Layout(int ranks, size_t slot_bytes) : n(ranks), slot(align_up(slot_bytes, 4096)) {
    // Rings shrink with the group so the segment stays about 2n slots + n MiB.
    cell = std::min(kCellBytes, slot / 2);
    cells = 2 * slot / cell;
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
