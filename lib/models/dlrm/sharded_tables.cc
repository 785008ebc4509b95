// Placement and all-to-all routing of sharded embedding tables (sharded_tables.h).
#include "dlrm/sharded_tables.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "ptrain/core/error.h"

namespace ptrain::nn::dlrm {

Placement parse_placement(const std::string& name) {
  if (name == "replicated") return Placement::kReplicated;
  if (name == "table") return Placement::kTable;
  if (name == "row") return Placement::kRow;
  throw ConfigError(fmt::format("parallel.embeddings '{}' is not replicated, table or row", name));
}

std::vector<std::vector<int64_t>> place_tables(const std::vector<int64_t>& rows, Placement p,
                                               int ranks) {
  PTRAIN_CHECK(ranks >= 1, "{} ranks", ranks);
  std::vector<std::vector<int64_t>> splits(rows.size());
  if (p == Placement::kRow) {
    for (size_t k = 0; k < rows.size(); ++k)
      for (int r = 0; r <= ranks; ++r) splits[k].push_back(rows[k] * r / ranks);
    return splits;
  }
  std::vector<int> owner(rows.size(), 0);
  if (p == Placement::kTable) {
    std::vector<size_t> order(rows.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return rows[a] > rows[b]; });
    std::vector<int64_t> load(size_t(ranks), 0);
    for (size_t k : order) {
      const int r = int(std::min_element(load.begin(), load.end()) - load.begin());
      owner[k] = r;
      load[size_t(r)] += rows[k];
    }
  }
  for (size_t k = 0; k < rows.size(); ++k)
    for (int r = 0; r <= ranks; ++r) splits[k].push_back(r <= owner[k] ? 0 : rows[k]);
  return splits;
}

int owner_of(const std::vector<int64_t>& splits, int64_t row) {
  auto it = std::upper_bound(splits.begin(), splits.end(), row);
  return int(it - splits.begin()) - 1;
}

void exchange(GroupComm* comm, const void* send, const std::vector<size_t>& send_counts, void* recv,
              const std::vector<size_t>& recv_counts, tensor::DType dtype) {
  if (comm) {
    comm->alltoallv(send, send_counts, recv, recv_counts, dtype);
    return;
  }
  PTRAIN_CHECK(send_counts.size() == 1 && recv_counts == send_counts,
               "a local exchange sends {} groups", send_counts.size());
  if (send_counts[0] > 0 && send != recv) std::memcpy(recv, send, send_counts[0] * 4);
}

void route_lookups(GroupComm* comm, int ranks, const int32_t* sparse, int B, int K,
                   const std::vector<std::vector<int64_t>>& splits, Routing& r) {
  PTRAIN_CHECK(!comm || comm->size() == ranks, "the data group has {} ranks, the tables {}",
               comm ? comm->size() : 1, ranks);
  std::vector<int32_t> dest(size_t(B) * K);
  r.send_counts.assign(size_t(ranks), 0);
  for (int b = 0; b < B; ++b)
    for (int k = 0; k < K; ++k) {
      const int32_t row = sparse[size_t(b) * K + k];
      const auto& s = splits[size_t(k)];
      PTRAIN_CHECK(row >= 0 && row < s.back(), "embedding index {} outside [0, {}) of table {}",
                   row, s.back(), k);
      const int d = ranks == 1 ? 0 : owner_of(s, row);
      dest[size_t(b) * K + k] = d;
      ++r.send_counts[size_t(d)];
    }
  // Grouped by destination, sample-major within each group.
  std::vector<size_t> at(size_t(ranks), 0);
  for (int d = 1; d < ranks; ++d) at[size_t(d)] = at[size_t(d) - 1] + r.send_counts[size_t(d) - 1];
  const size_t n = size_t(B) * K;
  r.slots.resize(n);
  r.send_keys.resize(2 * n);
  for (size_t slot = 0; slot < n; ++slot) {
    const size_t i = at[size_t(dest[slot])]++;
    r.slots[i] = int32_t(slot);
    r.send_keys[2 * i] = int32_t(slot % size_t(K));
    r.send_keys[2 * i + 1] = sparse[slot];
  }
  // Counts first (one per peer), then the keys.
  std::vector<int32_t> mine(r.send_counts.begin(), r.send_counts.end()),
      theirs(static_cast<size_t>(ranks));
  const std::vector<size_t> ones(size_t(ranks), 1);
  exchange(comm, mine.data(), ones, theirs.data(), ones, tensor::DType::kI32);
  r.recv_counts.assign(theirs.begin(), theirs.end());
  size_t served = 0;
  for (size_t c : r.recv_counts) served += c;
  std::vector<size_t> sc2(static_cast<size_t>(ranks)), rc2(static_cast<size_t>(ranks));
  for (int j = 0; j < ranks; ++j) sc2[j] = 2 * r.send_counts[j], rc2[j] = 2 * r.recv_counts[j];
  r.recv_keys.resize(2 * served);
  exchange(comm, r.send_keys.data(), sc2, r.recv_keys.data(), rc2, tensor::DType::kI32);
}

}  // namespace ptrain::nn::dlrm
