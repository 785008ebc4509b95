#include "ptrain/comm/communicator.h"

#include <fmt/format.h>

#include "ptrain/core/error.h"

namespace ptrain::comm {

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
  }
  return "?";
}

std::string Communicator::describe(const std::string& op_and_args) const {
  return fmt::format("{} on group '{}' (rank {} of {}, {})", op_and_args, group_.name, group_.rank,
                     group_.size, backend());
}

void Communicator::allreduce(void* buf, size_t count, DType dtype, ReduceOp op) {
  allreduce_async(buf, count, dtype, op)->wait(options_.timeout);
}

void Communicator::reduce_scatter(const void* send, void* recv, size_t recv_count, DType dtype,
                                  ReduceOp op) {
  reduce_scatter_async(send, recv, recv_count, dtype, op)->wait(options_.timeout);
}

void Communicator::allgather(const void* send, void* recv, size_t send_count, DType dtype) {
  allgather_async(send, recv, send_count, dtype)->wait(options_.timeout);
}

void Communicator::broadcast(void* buf, size_t count, DType dtype, int root) {
  broadcast_async(buf, count, dtype, root)->wait(options_.timeout);
}

void Communicator::send(const void* buf, size_t count, DType dtype, int dst, uint32_t tag) {
  send_async(buf, count, dtype, dst, tag)->wait(options_.timeout);
}

void Communicator::recv(void* buf, size_t count, DType dtype, int src, uint32_t tag) {
  recv_async(buf, count, dtype, src, tag)->wait(options_.timeout);
}

void Communicator::barrier() {
  barrier_async()->wait(options_.timeout);
}

void Communicator::alltoallv(const void* send, const std::vector<size_t>& send_counts, void* recv,
                             const std::vector<size_t>& recv_counts, DType dtype) {
  alltoallv_async(send, send_counts, recv, recv_counts, dtype)->wait(options_.timeout);
}

}  // namespace ptrain::comm
