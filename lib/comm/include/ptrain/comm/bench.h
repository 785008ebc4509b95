// The measurement behind `ptrain bench comm`: an nccl-tests-style sweep of one op over sizes
// on a running group, next to the same op through plain Gloo (no ptrain layer) as baseline.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ptrain/comm/communicator.h"
#include "ptrain/rendezvous/store.h"

namespace ptrain::comm {

struct BenchOptions {
  std::string op = "allreduce";  // allreduce|allgather|reduce_scatter|alltoall|broadcast|sendrecv
  std::string backend = "gloo";  // the transport under test: gloo|shm
  size_t min_bytes = 1024;
  size_t max_bytes = 64u << 20;
  int iters = 20;        // timed ops per run
  int warmup = 3;        // untimed ops per size
  int runs = 5;          // the reported time is the median over runs
  bool baseline = true;  // also time plain Gloo (allreduce, allgather, broadcast)
  CommOptions comm;
};

struct BenchRow {
  size_t bytes = 0;     // nccl-tests convention: the whole buffer (output of allgather, input of
  size_t count = 0;     // reduce_scatter), and its element count
  double us = 0;        // median per-op time, the slowest rank's
  double algbw = 0;     // GB/s = bytes / time
  double busbw = 0;     // algbw * the op's bus factor
  double max_err = 0;   // max |result - exact| of one checked op
  double plain_us = 0;  // 0 when there is no baseline for the op
  double plain_busbw = 0;
};

// Throws ConfigError for an unknown backend name.
void check_bench_backend(const std::string& backend);

// Throws ConfigError for an unknown op name.
double bus_factor(const std::string& op, int ranks);

// Runs the sweep on every rank of a group of `world` (all ranks call it); `store` bootstraps
// the communicators (ours under "bench/ours", the baseline's under "bench/plain"). Every rank
// returns the same rows.
std::vector<BenchRow> run_comm_bench(int rank, int world, std::shared_ptr<rendezvous::Store> store,
                                     const BenchOptions& options);

std::string format_bench_table(const BenchOptions& options, int world,
                               const std::vector<BenchRow>& rows);

}  // namespace ptrain::comm
