// The Communicator: collectives (allreduce, reduce_scatter, allgather, broadcast, barrier) and
// tagged point-to-point messages within one group of ranks, blocking or asynchronous.
//
// Buffers are raw pointers + element count + dtype, on the backend's device (host memory for
// Gloo, device memory for NCCL), so this header depends on no tensor class. Every rank of the
// group must issue the same collectives in the same order with the same counts; a rank that
// does not (different count, op or root) gets an error naming the op and the group instead of a
// hang. An async call returns a Work handle; its wait(timeout) rethrows the op's failure.
//
//   auto comm = create_gloo_communicator(group, store, {});
//   comm->allreduce(grad, n, DType::kF32, ReduceOp::kAvg);              // blocking
//   auto work = comm->allreduce_async(bucket, m, DType::kF32);          // overlapped
//   ...; work->wait(Millis(60000));
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ptrain/core/dtype.h"
#include "ptrain/core/time.h"

namespace ptrain::comm {

enum class ReduceOp { kSum, kAvg, kMax };
// The one DType of ptrain/core/dtype.h. Backends reject the types they cannot carry with a
// ConfigError naming the op (Gloo: f32 only).
using ptrain::DType;
using ptrain::dtype_name;
using ptrain::dtype_size;

const char* to_string(ReduceOp op);

// Default timeout for one collective or point-to-point operation.
inline constexpr Millis kDefaultCommTimeout{std::chrono::seconds(300)};

struct CommOptions {
  // Bound on every operation (and on connecting the group). A rank that is dead, stalled or
  // issuing a different op makes its peers fail after at most this long.
  Millis timeout = kDefaultCommTimeout;
  // Exchange (op, count, dtype, root) before each collective so that ranks that disagree fail
  // with a clear message instead of corrupting data. Costs one small message round per op.
  bool check_consistency = true;
};

// Identifies one group: its printable name (used in every error), this process's rank in it
// and its size.
struct GroupInfo {
  std::string name = "world";
  int rank = 0;
  int size = 1;
};

// The handle of an operation in flight.
class Work {
 public:
  virtual ~Work() = default;
  // True when the operation has finished (successfully or not); never blocks.
  virtual bool test() = 0;
  // Waits for the operation. Rethrows its failure; throws TimeoutError naming the op and the
  // group when `timeout` passes first (the communicator is then aborted: later ops fail).
  virtual void wait(Millis timeout) = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  int rank() const { return group_.rank; }
  int size() const { return group_.size; }
  const std::string& name() const { return group_.name; }
  const CommOptions& options() const { return options_; }
  virtual const char* backend() const = 0;

  // --- asynchronous operations; buffers must stay valid until the Work finishes ---

  // In place: buf [count] becomes the reduction over ranks.
  virtual std::unique_ptr<Work> allreduce_async(void* buf, size_t count, DType dtype,
                                                ReduceOp op = ReduceOp::kSum) = 0;
  // send [size() * recv_count] is reduced over ranks; this rank receives chunk rank():
  // recv [recv_count] = reduce(send[rank()*recv_count : (rank()+1)*recv_count]).
  virtual std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv,
                                                     size_t recv_count, DType dtype,
                                                     ReduceOp op = ReduceOp::kSum) = 0;
  // recv [size() * send_count] = concat over ranks of send [send_count].
  virtual std::unique_ptr<Work> allgather_async(const void* send, void* recv, size_t send_count,
                                                DType dtype) = 0;
  // In place: buf [count] on every rank becomes root's buf.
  virtual std::unique_ptr<Work> broadcast_async(void* buf, size_t count, DType dtype, int root) = 0;
  // Point-to-point: a send matches the recv with the same (peer, tag, count). Gloo matches by
  // tag; NCCL matches by issue order (the tag is checked for range only).
  virtual std::unique_ptr<Work> send_async(const void* buf, size_t count, DType dtype, int dst,
                                           uint32_t tag = 0) = 0;
  virtual std::unique_ptr<Work> recv_async(void* buf, size_t count, DType dtype, int src,
                                           uint32_t tag = 0) = 0;
  virtual std::unique_ptr<Work> barrier_async() = 0;
  // All-to-all with per-peer counts: send is the concatenation over peers j of
  // send_counts[j] elements for rank j; recv receives recv_counts[j] elements from each rank j,
  // concatenated in rank order. send_counts[j] on rank i must equal recv_counts[i] on rank j
  // (a mismatch fails every rank, naming the pair). Gloo carries 4-byte types (f32, i32).
  virtual std::unique_ptr<Work> alltoallv_async(const void* send,
                                                const std::vector<size_t>& send_counts, void* recv,
                                                const std::vector<size_t>& recv_counts,
                                                DType dtype) = 0;

  // --- blocking operations: the async call + wait(options().timeout) ---
  void allreduce(void* buf, size_t count, DType dtype, ReduceOp op = ReduceOp::kSum);
  void reduce_scatter(const void* send, void* recv, size_t recv_count, DType dtype,
                      ReduceOp op = ReduceOp::kSum);
  void allgather(const void* send, void* recv, size_t send_count, DType dtype);
  void broadcast(void* buf, size_t count, DType dtype, int root);
  void send(const void* buf, size_t count, DType dtype, int dst, uint32_t tag = 0);
  void recv(void* buf, size_t count, DType dtype, int src, uint32_t tag = 0);
  void barrier();
  void alltoallv(const void* send, const std::vector<size_t>& send_counts, void* recv,
                 const std::vector<size_t>& recv_counts, DType dtype);

 protected:
  Communicator(GroupInfo group, CommOptions options)
      : group_(std::move(group)), options_(options) {}
  // "allreduce(1024 x f32, sum) on group 'dp[0,2]' (rank 1 of 2)" for error messages.
  std::string describe(const std::string& op_and_args) const;

  GroupInfo group_;
  CommOptions options_;
};

}  // namespace ptrain::comm
