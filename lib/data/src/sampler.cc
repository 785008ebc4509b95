#include "ptrain/data/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "ptrain/core/error.h"
#include "rng.h"

namespace ptrain::data {

namespace {

void check_options(const SamplerOptions& o, const std::string& what) {
  if (o.batch_size <= 0) {
    throw ConfigError(fmt::format("{}: batch_size must be > 0, got {}", what, o.batch_size));
  }
  if (!(o.eval_fraction >= 0 && o.eval_fraction < 1)) {
    throw ConfigError(
        fmt::format("{}: eval_fraction must be in [0, 1), got {}", what, o.eval_fraction));
  }
}

// [begin, begin + size) of `total` items that `split` covers.
void split_range(int64_t total, double eval_fraction, Split split, int64_t* begin, int64_t* size) {
  int64_t eval = static_cast<int64_t>(std::floor(static_cast<double>(total) * eval_fraction));
  if (split == Split::kTrain) {
    *begin = 0;
    *size = total - eval;
  } else {
    *begin = total - eval;
    *size = eval;
  }
}

const char* split_name(Split s) {
  return s == Split::kTrain ? "training" : "eval";
}

}  // namespace

IndexPermutation::IndexPermutation(int64_t n, uint64_t key) : n_(n) {
  PTRAIN_CHECK(n > 0, "permutation of {} items", n);
  int bits = std::max(2, static_cast<int>(std::bit_width(static_cast<uint64_t>(n - 1))));
  half_bits_ = (bits + 1) / 2;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
  for (int r = 0; r < 4; ++r) keys_[r] = detail::splitmix64(key + 0x632BE59BD9B4E019ull * (r + 1));
}

int64_t IndexPermutation::operator()(int64_t i) const {
  PTRAIN_CHECK(i >= 0 && i < n_, "index {} of {}", i, n_);
  uint64_t x = static_cast<uint64_t>(i);
  do {  // cycle walking: re-encrypt until the value lands in [0, n)
    uint64_t l = x >> half_bits_;
    uint64_t r = x & half_mask_;
    for (uint64_t k : keys_) {
      uint64_t f = detail::splitmix64(r ^ k) & half_mask_;
      uint64_t nl = r;
      r = l ^ f;
      l = nl;
    }
    x = (l << half_bits_) | r;
  } while (x >= static_cast<uint64_t>(n_));
  return static_cast<int64_t>(x);
}

BatchOrder::BatchOrder(int64_t items, const SamplerOptions& options, bool shuffle)
    : items_(items), options_(options), shuffle_(shuffle) {
  PTRAIN_CHECK(items > 0, "no items");
}

int64_t BatchOrder::item(int64_t step, int64_t j) const {
  PTRAIN_CHECK(step >= 0 && j >= 0 && j < options_.batch_size, "step {} position {}", step, j);
  int64_t g = step * options_.batch_size + j;
  int64_t epoch = g / items_;
  int64_t k = g % items_;
  if (!shuffle_) return k;
  IndexPermutation perm(items_, detail::splitmix64(options_.seed) ^
                                    detail::splitmix64(static_cast<uint64_t>(epoch) + 1));
  return perm(k);
}

int64_t BatchOrder::rows(int dp_size, int num_micro) const {
  if (dp_size <= 0 || num_micro <= 0 || options_.batch_size % dp_size != 0 ||
      (options_.batch_size / dp_size) % num_micro != 0) {
    throw ConfigError(
        fmt::format("batch_size {} cannot be split evenly over {} data-parallel rank(s) x {} "
                    "microbatch(es)",
                    options_.batch_size, dp_size, num_micro),
        "make data.batch_size a multiple of parallel.data * parallel.microbatches");
  }
  return options_.batch_size / dp_size / num_micro;
}

int64_t BatchOrder::first(int dp_rank, int dp_size, int micro, int num_micro) const {
  int64_t per_micro = rows(dp_size, num_micro);
  PTRAIN_CHECK(dp_rank >= 0 && dp_rank < dp_size && micro >= 0 && micro < num_micro,
               "rank {}/{} micro {}/{}", dp_rank, dp_size, micro, num_micro);
  return dp_rank * (options_.batch_size / dp_size) + micro * per_micro;
}

namespace {

BatchOrder make_token_order(const TokenStream& stream, int seq_len, const SamplerOptions& o,
                            Split split, int64_t* begin, int64_t* size) {
  check_options(o, stream.describe());
  if (seq_len <= 0) {
    throw ConfigError(fmt::format("{}: seq_len must be > 0, got {}", stream.describe(), seq_len));
  }
  split_range(stream.size(), o.eval_fraction, split, begin, size);
  if (*size < seq_len + 1) {
    throw ConfigError(
        fmt::format("{}: the {} split has {} tokens, shorter than one sequence of seq_len {} + 1",
                    stream.describe(), split_name(split), *size, seq_len),
        split == Split::kEval ? "raise data.eval_fraction or use a larger data set"
                              : "use a larger data set or a shorter model.seq_len");
  }
  return BatchOrder((*size - 1) / seq_len, o, split == Split::kTrain && o.shuffle);
}

}  // namespace

TokenSampler::TokenSampler(const TokenStream& stream, int seq_len, const SamplerOptions& options,
                           Split split)
    : stream_(stream),
      seq_len_(seq_len),
      order_(make_token_order(stream, seq_len, options, split, &begin_, &size_)) {}

void TokenSampler::fill(int64_t step, int dp_rank, int dp_size, int micro, int num_micro,
                        int32_t* tokens, int32_t* targets) const {
  int64_t n = order_.rows(dp_size, num_micro);
  int64_t first = order_.first(dp_rank, dp_size, micro, num_micro);
  const int64_t T = seq_len_;
  std::vector<int32_t> span(static_cast<size_t>(T + 1));
  for (int64_t r = 0; r < n; ++r) {
    int64_t k = order_.item(step, first + r);
    stream_.read(begin_ + k * T, T + 1, span.data());
    std::copy_n(span.data(), T, tokens + r * T);
    std::copy_n(span.data() + 1, T, targets + r * T);
  }
}

namespace {

BatchOrder make_csv_order(const CsvData& data, const SamplerOptions& o, Split split,
                          int64_t* begin) {
  std::string what = fmt::format("csv file '{}'", data.path());
  check_options(o, what);
  int64_t size;
  split_range(data.rows(), o.eval_fraction, split, begin, &size);
  if (size < 1) {
    throw ConfigError(fmt::format("{}: the {} split has no rows ({} rows, eval_fraction {})", what,
                                  split_name(split), data.rows(), o.eval_fraction));
  }
  return BatchOrder(size, o, split == Split::kTrain && o.shuffle);
}

}  // namespace

CsvSampler::CsvSampler(const CsvData& data, const SamplerOptions& options, Split split)
    : data_(data), order_(make_csv_order(data, options, split, &begin_)) {}

void CsvSampler::fill(int64_t step, int dp_rank, int dp_size, int micro, int num_micro,
                      float* features, int32_t* labels) const {
  int64_t n = order_.rows(dp_size, num_micro);
  int64_t first = order_.first(dp_rank, dp_size, micro, num_micro);
  const int64_t F = data_.features();
  for (int64_t r = 0; r < n; ++r) {
    int64_t row = begin_ + order_.item(step, first + r);
    std::copy_n(data_.row(row), F, features + r * F);
    labels[r] = data_.label(row);
  }
}

}  // namespace ptrain::data
