// Embedding tables sharded over the data-parallel group (parallel.embeddings: table | row), as
// TorchRec shards them: where each table's rows live (a deterministic placement every rank
// computes alike), and the all-to-all routing of one microbatch's lookups to the rows' owners
// and of the looked-up vectors (forward) and their gradients (backward) between the ranks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ptrain/nn/model.h"

namespace ptrain::nn::dlrm {

enum class Placement { kReplicated, kTable, kRow };
// "replicated" | "table" | "row" (anything else throws ConfigError).
Placement parse_placement(const std::string& name);

// Row splits of every table over `ranks` data ranks: rank r holds rows [s[r], s[r+1]).
//   table: each table on one rank, tables taken largest first (ties: lower index) and each given
//          to the rank with the fewest rows so far (ties: lower rank);
//   row:   every table's rows split evenly, s[r] = rows * r / ranks;
//   replicated: every table whole on rank 0 (the model keeps replicated tables dense).
std::vector<std::vector<int64_t>> place_tables(const std::vector<int64_t>& rows, Placement p,
                                               int ranks);
// The rank whose range holds `row`.
int owner_of(const std::vector<int64_t>& splits, int64_t row);

// One microbatch's lookups on their way to the owners and back. Lookups leave in sample-major,
// table-minor order grouped by destination, so an owner sees every row's lookups in global
// sample order whatever the world size (gradients then sum in the same order as one process).
struct Routing {
  std::vector<size_t> send_counts, recv_counts;  // lookups to / from each peer
  std::vector<int32_t> send_keys;                // [sent, 2] (table, row) by destination
  std::vector<int32_t> slots;                    // [sent] b * K + k of each sent lookup
  std::vector<int32_t> recv_keys;                // [served, 2] the lookups this rank serves
  std::vector<float> served, returned;           // [served, D], [sent, D] scratch
  size_t sent() const { return slots.size(); }
  size_t serve_count() const { return recv_keys.size() / 2; }
};

// All-to-all over `comm`, or a local copy when comm is null (a data group of one).
void exchange(GroupComm* comm, const void* send, const std::vector<size_t>& send_counts, void* recv,
              const std::vector<size_t>& recv_counts, tensor::DType dtype);

// Builds `r` for sparse [B,K] (every index in range of its table) and exchanges the keys.
void route_lookups(GroupComm* comm, int ranks, const int32_t* sparse, int B, int K,
                   const std::vector<std::vector<int64_t>>& splits, Routing& r);

}  // namespace ptrain::nn::dlrm
