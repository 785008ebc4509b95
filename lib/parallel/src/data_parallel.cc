#include "ptrain/parallel/data_parallel.h"

#include "ptrain/core/error.h"
#include "ptrain/core/time.h"

namespace ptrain::parallel {

std::vector<Bucket> make_buckets(const std::vector<nn::ParamInfo>& params, double bucket_mb) {
  const size_t cap =
      std::max<size_t>(1, static_cast<size_t>(bucket_mb * (1 << 20) / sizeof(float)));
  std::vector<Bucket> buckets;
  // Reverse order: the last parameters' gradients are final first.
  for (size_t k = params.size(); k-- > 0;) {
    const auto& p = params[k];
    // Sharded parameters (embedding tables) are never allreduced.
    if (p.numel == 0 || p.sync != nn::ParamInfo::Sync::kDense) continue;
    bool fits = !buckets.empty() && buckets.back().end - buckets.back().begin + p.numel <= cap &&
                p.offset + p.numel == buckets.back().begin;
    if (!fits) {
      Bucket b;
      b.begin = p.offset;
      b.end = p.offset + p.numel;
      b.first_param = b.last_param = k;
      b.count = 1;
      buckets.push_back(b);
    } else {
      buckets.back().begin = p.offset;
      buckets.back().first_param = k;
      ++buckets.back().count;
    }
  }
  return buckets;
}

DataParallelReducer::DataParallelReducer(nn::Model& model, comm::Communicator& comm,
                                         ReducerOptions options)
    : model_(model), comm_(comm), options_(options) {
  buckets_ = make_buckets(model.params(), options.bucket_mb);
  bucket_of_param_.assign(model.params().size(), SIZE_MAX);
  for (size_t b = 0; b < buckets_.size(); ++b)
    for (size_t k = buckets_[b].first_param; k <= buckets_[b].last_param; ++k)
      if (model.params()[k].sync == nn::ParamInfo::Sync::kDense) bucket_of_param_[k] = b;
  works_.resize(buckets_.size());
  model_.set_grad_ready_hook([this](size_t index) { on_grad_ready(index); });
}

DataParallelReducer::~DataParallelReducer() {
  model_.set_grad_ready_hook(nullptr);
  // Outstanding operations must not outlive the buffers they write.
  for (auto& w : works_) {
    if (!w) continue;
    try {
      w->wait(options_.timeout);
    } catch (...) {
    }
  }
}

void DataParallelReducer::arm() {
  PTRAIN_CHECK(!armed_, "arm() twice without finish()");
  armed_ = true;
  next_launch_ = 0;
  last_bytes_ = 0;
  first_launch_time_ = 0;
  for (auto& b : buckets_) b.ready = 0;
}

void DataParallelReducer::on_grad_ready(size_t param_index) {
  if (!armed_ || !options_.overlap) return;
  size_t b = bucket_of_param_.at(param_index);
  if (b == SIZE_MAX) return;
  Bucket& bucket = buckets_[b];
  ++bucket.ready;
  // Launch in bucket order only, so every rank issues the same sequence of collectives even if
  // its backward reports parameters in a slightly different order.
  while (next_launch_ < buckets_.size() &&
         buckets_[next_launch_].ready == buckets_[next_launch_].count) {
    launch(next_launch_++);
  }
}

void DataParallelReducer::launch(size_t b) {
  Bucket& bucket = buckets_[b];
  if (first_launch_time_ == 0) first_launch_time_ = mono_seconds();
  size_t count = bucket.end - bucket.begin;
  works_[b] = comm_.allreduce_async(model_.grad_data() + bucket.begin, count, comm::DType::kF32,
                                    comm::ReduceOp::kSum);
  last_bytes_ += count * sizeof(float);
}

void DataParallelReducer::finish() {
  PTRAIN_CHECK(armed_, "finish() without arm()");
  double t0 = mono_seconds();
  while (next_launch_ < buckets_.size()) launch(next_launch_++);
  std::exception_ptr failure;
  for (auto& w : works_) {
    if (!w) continue;
    try {
      w->wait(options_.timeout);
    } catch (...) {
      if (!failure) failure = std::current_exception();
    }
    w.reset();
  }
  double t1 = mono_seconds();
  armed_ = false;
  last_wait_s_ = t1 - t0;
  last_span_s_ = first_launch_time_ > 0 ? t1 - first_launch_time_ : 0;
  if (failure) std::rethrow_exception(failure);
}

}  // namespace ptrain::parallel
