// The shared-memory backend: collectives over one shm segment per group, run in issue order by
// a worker thread (as Gloo's are); point-to-point through per-pair rings, matched by tag.
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include "../work.h"
#include "ptrain/comm/shm.h"
#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "reduce.h"
#include "segment.h"
#include "shm_sys.h"

namespace ptrain::comm {
namespace {

using detail::OpState;
using detail::StateWork;
using shm::FrameHead;
using shm::Header;
using shm::Layout;
using shm::OpMeta;
using shm::RankCtl;
using shm::RingCtl;

constexpr auto kSpin = std::chrono::microseconds(50);
// The spin of a collective's cell waits, shorter than kSpin: its peers are in the same op and
// answer within microseconds when they run, and when the ranks outnumber the free cores, spinning
// only takes the CPU a peer needs. Measured (64 MiB allreduce, 2 ranks, 2 cores shared with
// compile jobs): 10 us about 13 ms, 50 us about 18 ms, 200 us about 40 ms (but 6 ms on idle
// cores).
constexpr auto kCellSpin = std::chrono::microseconds(10);
constexpr auto kNap = std::chrono::milliseconds(10);
constexpr auto kPeerCheckEvery = std::chrono::milliseconds(100);
// How long a rank keeps waiting after it saw a peer process gone before it fails the group.
constexpr auto kDeadPeerGrace = std::chrono::milliseconds(1000);

// Per wait: when the peers' pids were last looked at, and since when one is seen dead.
struct PeerWatch {
  Clock::time_point last_check{};
  Clock::time_point dead_seen{};
  bool dead = false;
};
constexpr uint32_t kMaxP2pTag = (1u << 24) - 1;

enum class OpKind : uint32_t {
  kAllreduce = 1,
  kReduceScatter,
  kAllgather,
  kBroadcast,
  kBarrier,
  kAlltoallv
};

const char* op_name(uint32_t kind) {
  switch (static_cast<OpKind>(kind)) {
    case OpKind::kAllreduce:
      return "allreduce";
    case OpKind::kReduceScatter:
      return "reduce_scatter";
    case OpKind::kAllgather:
      return "allgather";
    case OpKind::kBroadcast:
      return "broadcast";
    case OpKind::kBarrier:
      return "barrier";
    case OpKind::kAlltoallv:
      return "alltoallv";
  }
  return "unknown op";
}

std::string describe_meta(const OpMeta& m) {
  const auto kind = static_cast<OpKind>(m.kind);
  std::string s = op_name(m.kind);
  if (kind != OpKind::kBarrier)
    s += fmt::format(" of {} x {}", m.count, dtype_name(static_cast<DType>(m.dtype)));
  if (kind == OpKind::kAllreduce || kind == OpKind::kReduceScatter)
    s += fmt::format(" {}", to_string(static_cast<ReduceOp>(m.reduce)));
  if (kind == OpKind::kBroadcast) s += fmt::format(" from root {}", m.root);
  return s + fmt::format(" (op #{})", m.seq);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected, Millis timeout) {
  timespec ts{static_cast<time_t>(timeout.count() / 1000),
              static_cast<long>((timeout.count() % 1000) * 1000000)};
  // Shared (not private) futex: the word lives in memory mapped by several processes.
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* word) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

// A message that arrived before its recv was posted.
struct Unexpected {
  uint32_t tag;
  std::vector<char> data;
};

// The receiving side of one source: one thread at a time pulls messages off the ring (`pull`);
// messages for other recvs go to `unexpected`.
struct RxSide {
  std::mutex pull;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Unexpected> unexpected;
};

// State shared by the communicator, its queued ops and its Work handles.
class ShmCore {
 public:
  ShmCore(GroupInfo group, CommOptions options, shm::Mapping mapping)
      : group_(std::move(group)),
        options_(options),
        map_(std::move(mapping)),
        layout_(group_.size, map_.slot_bytes),
        self_pid_(::getpid()) {
    if (map_.base) {
      hdr_ = reinterpret_cast<Header*>(map_.base);
      tx_ = std::make_unique<std::mutex[]>(group_.size);
      rx_ = std::make_unique<RxSide[]>(group_.size);
    }
    queue_ = std::make_unique<detail::OpQueue>();
  }

  ~ShmCore() { queue_.reset(); }

  detail::OpQueue& queue() { return *queue_; }
  const GroupInfo& group() const { return group_; }
  const CommOptions& options() const { return options_; }
  bool connected() const { return hdr_ != nullptr; }

  // The communicator was closed: finish its queue, then tell the peers this rank is gone so
  // that an op of theirs that waits for it fails now instead of at its timeout (ops among the
  // others go on: a pipeline stage may finish before the stage after it).
  void close() {
    queue_.reset();
    if (hdr_) {
      ctl(group_.rank)->left.store(1);
      notify();
    }
  }

  // Fails every later op here and, through the segment, every peer's op in progress.
  void abort(const std::string& reason) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!broken_.empty()) return;
      broken_ = reason;
    }
    if (hdr_) publish_abort(fmt::format("rank {} aborted: {}", group_.rank, reason));
  }

  void throw_if_broken(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!broken_.empty())
      throw RemoteError(fmt::format("{}: the communicator is unusable after an earlier failure: {}",
                                    what, broken_),
                        "recreate the group (a restart does this)");
  }

  // Runs on the worker thread: check agreement, then the op body; failures abort the group.
  void run(OpMeta meta, const std::string& what, const std::function<void()>& body) {
    throw_if_broken(what);
    meta.seq = seq_++;
    try {
      if (hdr_ && options_.check_consistency) check(meta, what);
      body();
    } catch (const ConfigError&) {
      throw;  // every rank saw the same disagreement; the group stays usable
    } catch (const std::exception& e) {
      abort(e.what());
      throw;
    }
  }

  // --- collectives (worker thread only) ---
  void allreduce(float* buf, size_t count, ReduceOp op, const std::string& what);
  void reduce_scatter(const float* send, float* recv, size_t chunk, ReduceOp op,
                      const std::string& what);
  void allgather(const char* send, char* recv, size_t bytes, const std::string& what);
  void broadcast(char* buf, size_t bytes, int root, const std::string& what);
  void barrier(const std::string& what) { sync(what, Deadline(options_.timeout)); }
  void alltoallv(const char* send, const std::vector<size_t>& sc, char* recv,
                 const std::vector<size_t>& rc, size_t esz, const std::string& what);

  // --- point-to-point (the Work's own thread) ---
  void send_msg(const char* buf, size_t bytes, int dst, uint32_t tag, const std::string& what);
  void recv_msg(char* buf, size_t bytes, int src, uint32_t tag, const std::string& what);

 private:
  RankCtl* ctl(int r) const { return reinterpret_cast<RankCtl*>(map_.base + layout_.ctl_off) + r; }
  char* slot(int r, int b) const {
    return map_.base + layout_.slots_off + (size_t(r) * 2 + size_t(b)) * layout_.slot;
  }
  // Cell g of rank r's region (see segment.h).
  char* cell(int r, uint64_t g) const {
    return map_.base + layout_.slots_off + size_t(r) * 2 * layout_.slot +
           size_t(g % layout_.cells) * layout_.cell;
  }
  RingCtl* ring(int src, int dst) const {
    return reinterpret_cast<RingCtl*>(map_.base + layout_.rings_off +
                                      (size_t(src) * group_.size + dst) * layout_.ring_bytes);
  }
  FrameHead* frame(int src, int dst, uint64_t index) const {
    char* frames = reinterpret_cast<char*>(ring(src, dst)) + sizeof(RingCtl);
    return reinterpret_cast<FrameHead*>(frames + (index % shm::kRingFrames) * layout_.frame_bytes);
  }

  void publish_abort(const std::string& reason) {
    uint32_t none = 0;
    if (hdr_->abort_state.compare_exchange_strong(none, 1)) {
      hdr_->abort_rank = group_.rank;
      std::snprintf(hdr_->abort_reason, sizeof(hdr_->abort_reason), "%s", reason.c_str());
      hdr_->abort_state.store(2);
    }
    notify();
  }

  void notify() {
    hdr_->bell.fetch_add(1);
    if (hdr_->sleepers.load() > 0) futex_wake_all(&hdr_->bell);
  }

  // The first rank, `peer` or (-1) any, that closed its communicator; -1 if none did.
  int left_peer(int peer) const {
    for (int q = 0; q < group_.size; ++q)
      if (q != group_.rank && (peer < 0 || q == peer) && ctl(q)->left.load()) return q;
    return -1;
  }

  // A rank stores `left` after its last op's writes, so a waiter that sees it and then still
  // finds its condition unmet knows the condition can never be met.
  [[noreturn]] void throw_left(const std::string& what, int q) {
    throw RemoteError(
        fmt::format("{} failed: rank {} left the group (its communicator was closed)", what, q),
        "every rank of a group must issue the same operations before closing it");
  }

  // Throws when a peer published a failure or when a peer process is gone.
  void check_peers(const std::string& what, PeerWatch& watch) {
    if (hdr_->abort_state.load() == 2)
      throw RemoteError(fmt::format("{} failed: {}", what, hdr_->abort_reason),
                        "a peer failed or timed out; see its log");
    const auto now = Clock::now();
    if (now - watch.last_check < kPeerCheckEvery) return;
    watch.last_check = now;
    for (int q = 0; q < group_.size; ++q) {
      if (q == group_.rank) continue;
      const int pid = ctl(q)->pid.load();
      if (pid <= 0 || pid == self_pid_ || !shm::process_gone(pid)) continue;
      // A launcher that sees the death stops this rank within the grace, naming the dead rank
      // as the cause; without one, this rank fails the group itself after it.
      if (!watch.dead) watch.dead = true, watch.dead_seen = now;
      if (now - watch.dead_seen < kDeadPeerGrace) return;
      auto reason = fmt::format("rank {} (pid {}) of group '{}' died", q, pid, group_.name);
      publish_abort(reason);
      throw RemoteError(fmt::format("{} failed: {}", what, reason),
                        "see that rank's log for why it died");
    }
  }

  // Spins for `spin`, then sleeps on the segment's futex until ready() or a failure.
  template <class Ready>
  void wait_until(const Ready& ready, const std::string& what, const Deadline& deadline,
                  int peer = -1, Clock::duration spin = kSpin) {
    if (ready()) return;
    const auto spin_end = Clock::now() + spin;
    for (int i = 1;; ++i) {
      cpu_relax();
      if (ready()) return;
      if ((i & 63) == 0 && Clock::now() > spin_end) break;
    }
    PeerWatch watch;
    for (;;) {
      if (ready()) return;
      check_peers(what, watch);
      if (const int q = left_peer(peer); q >= 0 && !ready()) throw_left(what, q);
      if (deadline.expired())
        throw TimeoutError(fmt::format("{} timed out after {} ms", what, options_.timeout.count()),
                           "a peer may have died, stalled, or issued a different operation");
      hdr_->sleepers.fetch_add(1);
      const uint32_t seen = hdr_->bell.load();
      if (!ready()) futex_wait(&hdr_->bell, seen, std::min<Millis>(kNap, deadline.remaining()));
      hdr_->sleepers.fetch_sub(1);
    }
  }

  using Counter = std::atomic<uint64_t> RankCtl::*;

  // Publishes one of this rank's cell counters and wakes the waiters.
  void publish(Counter c, uint64_t value) {
    (ctl(group_.rank)->*c).store(value, std::memory_order_release);
    notify();
  }

  // Waits until `peer`'s (or, for -1, every other rank's) counter c reaches `target`.
  void wait_counter(Counter c, uint64_t target, int peer, const std::string& what,
                    const Deadline& deadline) {
    wait_until(
        [&] {
          for (int q = 0; q < group_.size; ++q) {
            if (q == group_.rank || (peer >= 0 && q != peer)) continue;
            if ((ctl(q)->*c).load(std::memory_order_acquire) < target) return false;
          }
          return true;
        },
        what, deadline, peer, kCellSpin);
  }

  // Before this rank writes cell g: every reader has consumed cell g - K, which lived there.
  void wait_cell_free(uint64_t g, const std::string& what, const Deadline& deadline) {
    if (g + 1 > layout_.cells)
      wait_counter(&RankCtl::done, g + 1 - layout_.cells, -1, what, deadline);
  }

  // A barrier over the segment: every rank's epoch reaches this one.
  void sync(const std::string& what, const Deadline& deadline) {
    const uint64_t e = ++epoch_;
    ctl(group_.rank)->arrive.store(e);
    notify();
    wait_until(
        [&] {
          for (int q = 0; q < group_.size; ++q)
            if (ctl(q)->arrive.load(std::memory_order_acquire) < e) return false;
          return true;
        },
        what, deadline);
  }

  void check(const OpMeta& mine, const std::string& what) {
    ctl(group_.rank)->meta[mine.seq & 1] = mine;
    sync(what, Deadline(options_.timeout));
    std::vector<OpMeta> all(group_.size);
    bool agree = true;
    for (int q = 0; q < group_.size; ++q) {
      all[q] = ctl(q)->meta[mine.seq & 1];
      agree = agree && all[q] == mine;
    }
    if (agree) return;
    std::string ranks;
    for (int q = 0; q < group_.size; ++q)
      ranks += fmt::format("{}rank {}: {}", q ? "; " : "", q, describe_meta(all[q]));
    throw ConfigError(fmt::format("{}: ranks disagree on the collective: {}", what, ranks),
                      "every rank of a group must issue the same collectives in the same order "
                      "with the same count, dtype, reduce op and root");
  }

  int next_buffer() { return static_cast<int>(phase_++ & 1); }

  GroupInfo group_;
  CommOptions options_;
  shm::Mapping map_;
  Layout layout_;
  Header* hdr_ = nullptr;  // null for a group of one
  const int self_pid_;
  std::mutex mu_;
  std::string broken_;
  uint64_t seq_ = 0;    // worker thread only
  uint64_t epoch_ = 0;  // worker thread only
  uint64_t phase_ = 0;  // worker thread only
  uint64_t cell_ = 0;   // the next cell number (worker thread only)
  std::unique_ptr<std::mutex[]> tx_;
  std::unique_ptr<RxSide[]> rx_;
  std::unique_ptr<detail::OpQueue> queue_;
};

// Cell by cell (`cell` bytes of the buffer each), in three stages that overlap across cells:
// at step i this rank posts cell i (copies the slices that the others reduce into its cell),
// reduces cell i-1 (sums slice r over all ranks in rank order, its own part from its private
// buffer, and writes the sum both into its cell and into the buffer) and gathers cell i-2 (copies
// the others' reduced slices out of their cells).
void ShmCore::allreduce(float* buf, size_t count, ReduceOp op, const std::string& what) {
  const int n = group_.size, r = group_.rank;
  const size_t per_cell = layout_.cell / sizeof(float);
  const uint64_t cells = (count + per_cell - 1) / per_cell, g0 = cell_;
  const Deadline deadline(options_.timeout);
  std::vector<const float*> src(n);
  struct Cell {
    size_t len, per;
    float* data;
    size_t lo(int q) const { return std::min(len, per * q); }
    size_t hi(int q) const { return std::min(len, per * (q + 1)); }
  };
  auto at = [&](uint64_t i) {
    const size_t off = i * per_cell, len = std::min(per_cell, count - off);
    return Cell{len, shm::align_up((len + n - 1) / n, 16), buf + off};  // 64-byte slices
  };
  auto slot_of = [&](int q, uint64_t g) { return reinterpret_cast<float*>(cell(q, g)); };
  for (uint64_t i = 0; i < cells + 2; ++i) {
    if (i < cells) {
      const uint64_t g = g0 + i;
      const Cell c = at(i);
      wait_cell_free(g, what, deadline);
      float* mine = slot_of(r, g);
      for (int q = 0; q < n; ++q)
        if (q != r && c.hi(q) > c.lo(q))
          std::memcpy(mine + c.lo(q), c.data + c.lo(q), (c.hi(q) - c.lo(q)) * sizeof(float));
      publish(&RankCtl::posted, g + 1);
    }
    if (i >= 1 && i - 1 < cells) {
      const uint64_t g = g0 + i - 1;
      const Cell c = at(i - 1);
      wait_counter(&RankCtl::posted, g + 1, -1, what, deadline);
      if (c.hi(r) > c.lo(r)) {
        for (int q = 0; q < n; ++q) src[q] = (q == r ? c.data : slot_of(q, g)) + c.lo(r);
        shm::reduce_f32(slot_of(r, g) + c.lo(r), c.data + c.lo(r), src.data(), n, c.hi(r) - c.lo(r),
                        op);
      }
      publish(&RankCtl::reduced, g + 1);
    }
    if (i >= 2) {
      const uint64_t g = g0 + i - 2;
      const Cell c = at(i - 2);
      wait_counter(&RankCtl::reduced, g + 1, -1, what, deadline);
      for (int q = 0; q < n; ++q)
        if (q != r && c.hi(q) > c.lo(q))
          std::memcpy(c.data + c.lo(q), slot_of(q, g) + c.lo(q),
                      (c.hi(q) - c.lo(q)) * sizeof(float));
      publish(&RankCtl::done, g + 1);
    }
  }
  cell_ = g0 + cells;
}

// Each cell carries `per` elements of every rank's chunk (sub-block q for rank q): at step i this
// rank posts cell i (the parts of the others' chunks) and reduces its own chunk's part of cell
// i-1 straight into recv.
void ShmCore::reduce_scatter(const float* send, float* recv, size_t chunk, ReduceOp op,
                             const std::string& what) {
  const int n = group_.size, r = group_.rank;
  size_t per = std::max<size_t>(1, layout_.cell / sizeof(float) / n);
  if (per >= 16) per = per / 16 * 16;  // 64-byte sub-blocks
  const uint64_t cells = (chunk + per - 1) / per, g0 = cell_;
  const Deadline deadline(options_.timeout);
  std::vector<const float*> src(n);
  for (uint64_t i = 0; i < cells + 1; ++i) {
    if (i < cells) {
      const uint64_t g = g0 + i;
      const size_t off = i * per, len = std::min(per, chunk - off);
      wait_cell_free(g, what, deadline);
      float* mine = reinterpret_cast<float*>(cell(r, g));
      for (int q = 0; q < n; ++q)
        if (q != r) std::memcpy(mine + q * per, send + q * chunk + off, len * sizeof(float));
      publish(&RankCtl::posted, g + 1);
    }
    if (i >= 1) {
      const uint64_t g = g0 + i - 1;
      const size_t off = (i - 1) * per, len = std::min(per, chunk - off);
      wait_counter(&RankCtl::posted, g + 1, -1, what, deadline);
      for (int q = 0; q < n; ++q)
        src[q] =
            q == r ? send + r * chunk + off : reinterpret_cast<const float*>(cell(q, g)) + r * per;
      shm::reduce_f32(recv + off, nullptr, src.data(), n, len, op);
      publish(&RankCtl::done, g + 1);
    }
  }
  cell_ = g0 + cells;
}

// At step i this rank posts cell i of its part and copies every rank's cell i-1 out.
void ShmCore::allgather(const char* send, char* recv, size_t bytes, const std::string& what) {
  const int n = group_.size, r = group_.rank;
  const size_t per = layout_.cell;
  const uint64_t cells = (bytes + per - 1) / per, g0 = cell_;
  const Deadline deadline(options_.timeout);
  for (uint64_t i = 0; i < cells + 1; ++i) {
    if (i < cells) {
      const uint64_t g = g0 + i;
      const size_t off = i * per, len = std::min(per, bytes - off);
      wait_cell_free(g, what, deadline);
      std::memcpy(cell(r, g), send + off, len);
      publish(&RankCtl::posted, g + 1);
    }
    if (i >= 1) {
      const uint64_t g = g0 + i - 1;
      const size_t off = (i - 1) * per, len = std::min(per, bytes - off);
      wait_counter(&RankCtl::posted, g + 1, -1, what, deadline);
      for (int q = 0; q < n; ++q) {
        if (q == r)
          std::memmove(recv + q * bytes + off, send + off, len);  // in place when they alias
        else
          std::memcpy(recv + q * bytes + off, cell(q, g), len);
      }
      publish(&RankCtl::done, g + 1);
    }
  }
  cell_ = g0 + cells;
}

// The root posts its buffer cell by cell; the others copy each cell out as it is posted. The
// root reads nothing, so its done follows its posts.
void ShmCore::broadcast(char* buf, size_t bytes, int root, const std::string& what) {
  const size_t per = layout_.cell;
  const uint64_t cells = (bytes + per - 1) / per, g0 = cell_;
  const Deadline deadline(options_.timeout);
  for (uint64_t i = 0; i < cells; ++i) {
    const uint64_t g = g0 + i;
    const size_t off = i * per, len = std::min(per, bytes - off);
    if (group_.rank == root) {
      wait_cell_free(g, what, deadline);
      std::memcpy(cell(root, g), buf + off, len);
      publish(&RankCtl::posted, g + 1);
    } else {
      wait_counter(&RankCtl::posted, g + 1, root, what, deadline);
      std::memcpy(buf + off, cell(root, g), len);
    }
    publish(&RankCtl::done, g + 1);
  }
  cell_ = g0 + cells;
}

// Counts first (every rank's send and recv counts through its slot: checked pairwise, and they
// give the number of rounds); then rounds in which sub-block j of rank i's slot carries the next
// part of i's message to j.
void ShmCore::alltoallv(const char* send, const std::vector<size_t>& sc, char* recv,
                        const std::vector<size_t>& rc, size_t esz, const std::string& what) {
  const int n = group_.size, r = group_.rank;
  const Deadline deadline(options_.timeout);
  wait_counter(&RankCtl::done, cell_, -1, what, deadline);  // no cell is read any more
  auto take_region = [&] {  // all K cell numbers at once: see segment.h
    cell_ += layout_.cells;
    publish(&RankCtl::done, cell_);
  };
  const int cb = next_buffer();
  auto* counts = reinterpret_cast<uint64_t*>(slot(r, cb));
  for (int j = 0; j < n; ++j) counts[j] = sc[j], counts[n + j] = rc[j];
  sync(what, deadline);
  uint64_t longest = 0;
  for (int i = 0; i < n; ++i) {
    const auto* theirs = reinterpret_cast<const uint64_t*>(slot(i, cb));
    for (int j = 0; j < n; ++j) {
      const uint64_t sent = theirs[j];
      const uint64_t expected = reinterpret_cast<const uint64_t*>(slot(j, cb))[n + i];
      if (sent != expected) {
        take_region();  // every rank throws the same here; the group stays usable
        throw ConfigError(
            fmt::format("{}: rank {} sends {} elements to rank {}, which expects {}", what, i, sent,
                        j, expected),
            "every rank's send count to a peer must equal that peer's recv count from it");
      }
      longest = std::max(longest, sent);
    }
  }
  std::vector<size_t> send_at(n, 0), recv_at(n, 0);
  for (int j = 1; j < n; ++j) {
    send_at[j] = send_at[j - 1] + sc[j - 1];
    recv_at[j] = recv_at[j - 1] + rc[j - 1];
  }
  const size_t per_round = std::max<size_t>(1, layout_.slot / esz / n);  // elements
  for (uint64_t off = 0; off < longest; off += per_round) {
    const int b = next_buffer();
    char* mine = slot(r, b);
    for (int j = 0; j < n; ++j) {
      if (off >= sc[j]) continue;
      const size_t len = std::min<size_t>(per_round, sc[j] - off);
      if (j == r) continue;  // copied straight across below
      std::memcpy(mine + j * per_round * esz, send + (send_at[j] + off) * esz, len * esz);
    }
    sync(what, deadline);
    for (int i = 0; i < n; ++i) {
      if (off >= rc[i]) continue;
      const size_t len = std::min<size_t>(per_round, rc[i] - off);
      const char* from =
          i == r ? send + (send_at[r] + off) * esz : slot(i, b) + r * per_round * esz;
      std::memmove(recv + (recv_at[i] + off) * esz, from, len * esz);
    }
  }
  take_region();
}

// Messages to one destination go out one at a time (frames of one message are contiguous).
void ShmCore::send_msg(const char* buf, size_t bytes, int dst, uint32_t tag,
                       const std::string& what) {
  const Deadline deadline(options_.timeout);
  std::lock_guard<std::mutex> lock(tx_[dst]);
  RingCtl* rg = ring(group_.rank, dst);
  size_t done = 0;
  while (done < bytes) {
    const uint64_t t = rg->tail.load(std::memory_order_relaxed);
    wait_until([&] { return t - rg->head.load(std::memory_order_acquire) < shm::kRingFrames; },
               what, deadline, dst);
    FrameHead* f = frame(group_.rank, dst, t);
    const size_t len = std::min(layout_.frag, bytes - done);
    f->tag = tag;
    f->msg_bytes = bytes;
    f->frag_bytes = len;
    std::memcpy(reinterpret_cast<char*>(f) + sizeof(FrameHead), buf + done, len);
    rg->tail.store(t + 1, std::memory_order_release);
    notify();
    done += len;
  }
}

void ShmCore::recv_msg(char* buf, size_t bytes, int src, uint32_t tag, const std::string& what) {
  const Deadline deadline(options_.timeout);
  RxSide& side = rx_[src];
  RingCtl* rg = ring(src, group_.rank);
  PeerWatch watch;
  auto take_unexpected = [&] {
    std::lock_guard<std::mutex> lock(side.mu);
    for (auto it = side.unexpected.begin(); it != side.unexpected.end(); ++it)
      if (it->tag == tag && it->data.size() == bytes) {
        std::memcpy(buf, it->data.data(), bytes);
        side.unexpected.erase(it);
        return true;
      }
    return false;
  };
  for (;;) {
    if (take_unexpected()) return;
    std::unique_lock<std::mutex> puller(side.pull, std::try_to_lock);
    if (!puller.owns_lock()) {
      // Another recv from this source is pulling; it hands over messages that are ours.
      {
        std::unique_lock<std::mutex> lock(side.mu);
        side.cv.wait_for(lock, Millis(5));
      }
      // Only the puller decides that `src` left for good: it may still be reading frames
      // that `src` wrote before it closed, ours among them.
      check_peers(what, watch);
      if (deadline.expired())
        throw TimeoutError(fmt::format("{} timed out after {} ms", what, options_.timeout.count()),
                           "the peer may have died, stalled, or sent a different message");
      continue;
    }
    if (take_unexpected()) return;
    uint64_t h = rg->head.load(std::memory_order_relaxed);
    wait_until([&] { return rg->tail.load(std::memory_order_acquire) > h; }, what, deadline, src);
    const FrameHead* f = frame(src, group_.rank, h);
    const uint32_t msg_tag = f->tag;
    const size_t total = f->msg_bytes;
    const bool mine = msg_tag == tag && total == bytes;
    std::vector<char> other;
    if (!mine) other.resize(total);
    char* out = mine ? buf : other.data();
    size_t got = 0;
    for (;;) {
      const size_t len = f->frag_bytes;
      std::memcpy(out + got, reinterpret_cast<const char*>(f) + sizeof(FrameHead), len);
      got += len;
      rg->head.store(++h, std::memory_order_release);
      notify();
      if (got >= total) break;
      wait_until([&] { return rg->tail.load(std::memory_order_acquire) > h; }, what, deadline, src);
      f = frame(src, group_.rank, h);
    }
    if (mine) return;
    {
      std::lock_guard<std::mutex> lock(side.mu);
      side.unexpected.push_back({msg_tag, std::move(other)});
    }
    side.cv.notify_all();
  }
}

class ShmCommunicator : public Communicator {
 public:
  ShmCommunicator(GroupInfo group, CommOptions options, shm::Mapping mapping)
      : Communicator(group, options),
        core_(std::make_shared<ShmCore>(group, options, std::move(mapping))) {}
  ~ShmCommunicator() override { core_->close(); }

  const char* backend() const override { return "shm"; }

  std::unique_ptr<Work> allreduce_async(void* buf, size_t count, DType dtype,
                                        ReduceOp op) override {
    auto what =
        describe(fmt::format("allreduce({} x {}, {})", count, dtype_name(dtype), to_string(op)));
    check_reduce_dtype(dtype, what);
    OpMeta meta{static_cast<uint32_t>(OpKind::kAllreduce), static_cast<uint32_t>(dtype), count, -1,
                static_cast<uint32_t>(op)};
    auto* data = static_cast<float*>(buf);
    return submit(meta, what, [this, data, count, op, what] {
      if (count == 0 || size() == 1) return;
      core_->allreduce(data, count, op, what);
    });
  }

  std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv, size_t recv_count,
                                             DType dtype, ReduceOp op) override {
    auto what = describe(fmt::format("reduce_scatter({} x {} per rank, {})", recv_count,
                                     dtype_name(dtype), to_string(op)));
    check_reduce_dtype(dtype, what);
    OpMeta meta{static_cast<uint32_t>(OpKind::kReduceScatter), static_cast<uint32_t>(dtype),
                recv_count, -1, static_cast<uint32_t>(op)};
    auto* in = static_cast<const float*>(send);
    auto* out = static_cast<float*>(recv);
    return submit(meta, what, [this, in, out, recv_count, op, what] {
      if (recv_count == 0) return;
      if (size() == 1) {
        if (out != in) std::memmove(out, in, recv_count * sizeof(float));
        return;
      }
      core_->reduce_scatter(in, out, recv_count, op, what);
    });
  }

  std::unique_ptr<Work> allgather_async(const void* send, void* recv, size_t send_count,
                                        DType dtype) override {
    auto what = describe(fmt::format("allgather({} x {} per rank)", send_count, dtype_name(dtype)));
    OpMeta meta{static_cast<uint32_t>(OpKind::kAllgather), static_cast<uint32_t>(dtype),
                send_count};
    auto* in = static_cast<const char*>(send);
    auto* out = static_cast<char*>(recv);
    const size_t bytes = send_count * dtype_size(dtype);
    return submit(meta, what, [this, in, out, bytes, what] {
      if (bytes == 0) return;
      if (size() == 1) {
        if (out != in) std::memmove(out, in, bytes);
        return;
      }
      core_->allgather(in, out, bytes, what);
    });
  }

  std::unique_ptr<Work> broadcast_async(void* buf, size_t count, DType dtype, int root) override {
    auto what =
        describe(fmt::format("broadcast({} x {}, root {})", count, dtype_name(dtype), root));
    check_rank(root, "root", what);
    OpMeta meta{static_cast<uint32_t>(OpKind::kBroadcast), static_cast<uint32_t>(dtype), count,
                root};
    auto* data = static_cast<char*>(buf);
    const size_t bytes = count * dtype_size(dtype);
    return submit(meta, what, [this, data, bytes, root, what] {
      if (bytes == 0 || size() == 1) return;
      core_->broadcast(data, bytes, root, what);
    });
  }

  std::unique_ptr<Work> barrier_async() override {
    auto what = describe("barrier");
    OpMeta meta{static_cast<uint32_t>(OpKind::kBarrier)};
    return submit(meta, what, [this, what] {
      if (size() == 1) return;
      core_->barrier(what);
    });
  }

  std::unique_ptr<Work> alltoallv_async(const void* send, const std::vector<size_t>& send_counts,
                                        void* recv, const std::vector<size_t>& recv_counts,
                                        DType dtype) override {
    auto what = describe(fmt::format("alltoallv({} peers x {})", size(), dtype_name(dtype)));
    if (send_counts.size() != size_t(size()) || recv_counts.size() != size_t(size()))
      throw ConfigError(fmt::format("{}: {} send and {} recv counts for a group of {}", what,
                                    send_counts.size(), recv_counts.size(), size()));
    // The consistency check compares the op and the group size; the counts are checked in the
    // body against every peer's.
    OpMeta meta{static_cast<uint32_t>(OpKind::kAlltoallv), static_cast<uint32_t>(dtype),
                uint64_t(size())};
    const size_t esz = dtype_size(dtype);
    auto* in = static_cast<const char*>(send);
    auto* out = static_cast<char*>(recv);
    return submit(meta, what, [this, in, out, send_counts, recv_counts, esz, what] {
      if (size() == 1) {
        if (send_counts[0] != recv_counts[0])
          throw ConfigError(fmt::format("{}: sends {} elements to itself but expects {}", what,
                                        send_counts[0], recv_counts[0]));
        if (send_counts[0] > 0 && out != in) std::memmove(out, in, send_counts[0] * esz);
        return;
      }
      core_->alltoallv(in, send_counts, out, recv_counts, esz, what);
    });
  }

  std::unique_ptr<Work> send_async(const void* buf, size_t count, DType dtype, int dst,
                                   uint32_t tag) override {
    auto what = describe(
        fmt::format("send({} x {} to rank {}, tag {})", count, dtype_name(dtype), dst, tag));
    return p2p(true, const_cast<void*>(buf), count * dtype_size(dtype), dst, tag, what);
  }

  std::unique_ptr<Work> recv_async(void* buf, size_t count, DType dtype, int src,
                                   uint32_t tag) override {
    auto what = describe(
        fmt::format("recv({} x {} from rank {}, tag {})", count, dtype_name(dtype), src, tag));
    return p2p(false, buf, count * dtype_size(dtype), src, tag, what);
  }

 private:
  void check_reduce_dtype(DType dtype, const std::string& what) const {
    if (dtype != DType::kF32)
      throw ConfigError(
          fmt::format("{}: {} is not supported by the shm backend", what, dtype_name(dtype)),
          "reduce float32 buffers");
  }

  void check_rank(int peer, const char* role, const std::string& what) const {
    detail::check_peer(peer, size(), role, what);
  }

  detail::AbortFn abort_fn() const { return detail::abort_of(core_); }

  std::unique_ptr<Work> submit(OpMeta meta, std::string what, std::function<void()> body) {
    return detail::submit_op(core_, meta, std::move(what), std::move(body));
  }

  // Point-to-point runs outside the queue (it is matched by tag, not order) on a thread owned
  // by the Work. The tag and the byte count must match, as with Gloo.
  std::unique_ptr<Work> p2p(bool is_send, void* buf, size_t bytes, int peer, uint32_t tag,
                            const std::string& what) {
    check_rank(peer, is_send ? "destination" : "source", what);
    if (peer == rank())
      throw ConfigError(fmt::format("{}: a rank cannot send to or receive from itself", what));
    if (tag > kMaxP2pTag)
      throw ConfigError(fmt::format("{}: tag {} is over the limit {}", what, tag, kMaxP2pTag));
    core_->throw_if_broken(what);
    auto state = std::make_shared<OpState>(what);
    if (bytes == 0) {
      state->finish(nullptr);
      return std::make_unique<StateWork>(std::move(state), abort_fn());
    }
    auto core = core_;
    std::thread worker([core, state, is_send, buf, bytes, peer, tag, what] {
      std::exception_ptr error;
      try {
        if (is_send)
          core->send_msg(static_cast<const char*>(buf), bytes, peer, tag, what);
        else
          core->recv_msg(static_cast<char*>(buf), bytes, peer, tag, what);
      } catch (const std::exception& e) {
        error = std::current_exception();
        core->abort(e.what());
      }
      state->finish(error);
    });
    return std::make_unique<StateWork>(std::move(state), abort_fn(), std::move(worker));
  }

  std::shared_ptr<ShmCore> core_;
};

size_t slot_bytes_for(const ShmOptions& options) {
  if (options.slot_bytes > 0) return options.slot_bytes;
  const int64_t kb = env_int("PTRAIN_SHM_SLOT_KB", 0);
  if (kb > 0) return static_cast<size_t>(kb) << 10;
  return kDefaultShmSlotBytes;
}

}  // namespace

std::unique_ptr<Communicator> create_shm_communicator(const GroupInfo& group,
                                                      std::shared_ptr<rendezvous::Store> store,
                                                      const ShmOptions& options) {
  if (group.size < 1 || group.rank < 0 || group.rank >= group.size)
    throw ConfigError(fmt::format("shm group '{}': rank {} is outside a group of size {}",
                                  group.name, group.rank, group.size));
  const size_t slot = slot_bytes_for(options);
  if (group.size == 1) {
    shm::Mapping none;
    none.slot_bytes = slot;
    return std::make_unique<ShmCommunicator>(group, options.comm, std::move(none));
  }
  PTRAIN_CHECK(store != nullptr, "shm group '{}' needs a store", group.name);
  auto mapping = shm::connect_segment(group, *store, options.tag, Layout(group.size, slot),
                                      options.comm.timeout);
  mapping.slot_bytes = slot;
  return std::make_unique<ShmCommunicator>(group, options.comm, std::move(mapping));
}

}  // namespace ptrain::comm
