// The distributed sampler: which sequences (or CSV rows) each data-parallel rank and microbatch
// trains on at each step. Stateless: a batch is a pure function of (step, rank, microbatch), so
// the data position saved in a checkpoint is just the step, and every mesh shape sees the same
// global batches.
//
// Order (G = batch_size, T = seq_len, N = tokens in the split, S = (N - 1) / T sequences per
// epoch):
//   - global sequence g = s*G + j is sequence j of step s; epoch e = g / S, k = g % S
//     (so the stream wraps to its start after S sequences);
//   - with shuffle, k is replaced by P_e(k), a permutation of [0, S) seeded by (seed, e);
//   - inputs are tokens [k*T, k*T + T), targets the same span shifted by one token;
//   - dp rank d takes sequences j in [d*G/dp, (d+1)*G/dp); microbatch m of M takes the m-th
//     consecutive slice of the rank's share.
// eval_fraction f holds out the last floor(N_total * f) tokens (rows for CSV) as the eval split,
// which is read in order, never shuffled.
#pragma once

#include <cstdint>

#include "ptrain/data/csv.h"
#include "ptrain/data/token_stream.h"

namespace ptrain::data {

struct SamplerOptions {
  int64_t batch_size = 8;  // G: global batch, in sequences (tokens) or rows (csv)
  bool shuffle = false;
  uint64_t seed = 1;
  double eval_fraction = 0;  // in [0, 1)
};

enum class Split { kTrain, kEval };

// A seeded permutation of [0, n) evaluated one index at a time (a Feistel network with cycle
// walking), so no O(n) table is needed and it is identical on every platform.
class IndexPermutation {
 public:
  IndexPermutation(int64_t n, uint64_t key);
  int64_t operator()(int64_t i) const;
  int64_t size() const { return n_; }

 private:
  int64_t n_;
  int half_bits_;
  uint64_t half_mask_;
  uint64_t keys_[4];
};

// The index order shared by the token and CSV samplers.
class BatchOrder {
 public:
  // items per epoch, options as above. Throws ConfigError when items < 1.
  BatchOrder(int64_t items, const SamplerOptions& options, bool shuffle);
  // The item (sequence or row index within the split) at position j of step s's global batch.
  int64_t item(int64_t step, int64_t j) const;
  // Rows each (rank, microbatch) gets: G / dp / num_micro. Throws ConfigError unless divisible.
  int64_t rows(int dp_size, int num_micro) const;
  // Position in the global batch of the first row of (rank, micro).
  int64_t first(int dp_rank, int dp_size, int micro, int num_micro) const;
  int64_t items() const { return items_; }
  int64_t batch_size() const { return options_.batch_size; }

 private:
  int64_t items_;
  SamplerOptions options_;
  bool shuffle_;
};

class TokenSampler {
 public:
  // The stream must outlive the sampler. Throws ConfigError naming the stream when the split is
  // shorter than one sequence + 1 token, or options are invalid.
  TokenSampler(const TokenStream& stream, int seq_len, const SamplerOptions& options,
               Split split = Split::kTrain);

  // Sequences per (rank, microbatch): G / dp_size / num_micro.
  int64_t rows(int dp_size, int num_micro) const { return order_.rows(dp_size, num_micro); }
  // tokens, targets: [rows, seq_len] each. For the eval split, `step` is the eval batch index.
  void fill(int64_t step, int dp_rank, int dp_size, int micro, int num_micro, int32_t* tokens,
            int32_t* targets) const;
  int64_t sequences_per_epoch() const { return order_.items(); }
  int64_t split_begin() const { return begin_; }  // first token of the split in the stream
  int64_t split_size() const { return size_; }    // tokens in the split

 private:
  const TokenStream& stream_;
  int seq_len_;
  int64_t begin_ = 0;
  int64_t size_ = 0;
  BatchOrder order_;
};

class CsvSampler {
 public:
  // The data must outlive the sampler.
  CsvSampler(const CsvData& data, const SamplerOptions& options, Split split = Split::kTrain);

  int64_t rows(int dp_size, int num_micro) const { return order_.rows(dp_size, num_micro); }
  // features: [rows, data.features()], labels: [rows].
  void fill(int64_t step, int dp_rank, int dp_size, int micro, int num_micro, float* features,
            int32_t* labels) const;
  int64_t rows_per_epoch() const { return order_.items(); }

 private:
  const CsvData& data_;
  int64_t begin_ = 0;
  BatchOrder order_;
};

}  // namespace ptrain::data
