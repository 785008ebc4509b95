// Vocabulary-parallel softmax cross-entropy (vocab_parallel.h).
#include "shared/vocab_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "ptrain/core/error.h"

namespace ptrain::nn {

VocabPart VocabPart::of(int vocab, int parts, int rank) {
  VocabPart p;
  p.rows = (vocab + parts - 1) / parts;
  p.begin = std::min(vocab, rank * p.rows);
  p.size = std::min(p.rows, vocab - p.begin);
  return p;
}

VocabParallelXent::VocabParallelXent(tensor::Device device, int N) {
  buf_ = tensor::Tensor::zeros({int64_t(5) * N + 1}, tensor::DType::kF32, device);
  ids_ = tensor::Tensor::zeros({int64_t(2) * N}, tensor::DType::kI32, device);
  lse_ = buf_.data<float>();
  losses_ = lse_ + N;
  tmp_ = losses_ + N;
  corr_ = tmp_ + 2 * N;
  one_ = corr_ + N;
  targets_local_ = ids_.data<int32_t>();
  targets_bw_ = targets_local_ + N;
  const float one = 1.0f;
  tensor::ops(device).copy_from_host(one_, &one, sizeof(float));
}

double VocabParallelXent::forward(const tensor::Ops& o, GroupComm* tp, const float* logits,
                                  const int32_t* targets, int N, VocabPart part) {
  auto& ids = ids_host_;
  ids.resize(N);
  for (int i = 0; i < N; ++i) {
    const int local = targets[i] - part.begin;
    ids[i] = targets[i] >= 0 && local >= 0 && local < part.size ? local : -1;
  }
  local_target_ = ids;
  has_target_.assign(targets, targets + N);
  o.copy_from_host(targets_local_, ids.data(), sizeof(int32_t) * N);
  o.crossentropy_forward(losses_, lse_, logits, targets_local_, N, part.size);
  auto &lse = lse_host_, &loss = loss_host_, &red = red_host_;
  lse.resize(N);
  loss.resize(N);
  red.resize(2 * size_t(N));
  o.copy_to_host(lse.data(), lse_, sizeof(float) * N);
  o.copy_to_host(loss.data(), losses_, sizeof(float) * N);
  split_ = tp != nullptr;
  double loss_sum = 0;
  if (!tp) {
    for (int i = 0; i < N; ++i) {
      if (targets[i] < 0) continue;
      loss_sum += loss[i];
    }
    o.copy(targets_bw_, targets_local_, sizeof(int32_t) * N);
    return loss_sum;
  }
  // The global log-sum-exp: max over the group, then the sum of exp(lse_r - max).
  o.copy(tmp_, lse_, sizeof(float) * N);
  tp->allreduce_max(tmp_, N);
  o.copy_to_host(red.data(), tmp_, sizeof(float) * N);
  for (int i = 0; i < N; ++i) {
    const float m = red[i];
    red[i] = std::exp(lse[i] - m);
    red[N + i] = ids[i] >= 0 ? lse[i] - loss[i] : 0.0f;  // the target logit, where it lives
    lse[i] = m;
  }
  o.copy_from_host(tmp_, red.data(), sizeof(float) * 2 * N);
  tp->allreduce_sum(tmp_, 2 * size_t(N));
  o.copy_to_host(red.data(), tmp_, sizeof(float) * 2 * N);
  for (int i = 0; i < N; ++i) {
    lse[i] += std::log(red[i]);
    if (targets[i] >= 0) loss_sum += double(lse[i]) - double(red[N + i]);
  }
  o.copy_from_host(lse_, lse.data(), sizeof(float) * N);
  // Backward runs the rows whose target is on another rank as if it were column 0 here and
  // undoes that column's -1 through corr (1 on those rows).
  std::vector<float>& corr = loss;
  for (int i = 0; i < N; ++i) {
    const bool elsewhere = targets[i] >= 0 && ids[i] < 0;
    corr[i] = elsewhere ? 1.0f : 0.0f;
    if (elsewhere) ids[i] = 0;
  }
  o.copy_from_host(targets_bw_, ids.data(), sizeof(int32_t) * N);
  o.copy_from_host(corr_, corr.data(), sizeof(float) * N);
  return loss_sum;
}

void VocabParallelXent::backward(const tensor::Ops& o, float* dlogits, const float* logits,
                                 float dloss, int N, int Vl) const {
  o.crossentropy_backward(dlogits, logits, lse_, targets_bw_, dloss, N, Vl);
  // dlogits[:,0] += dloss * corr: an [N,1] x [1,1] GEMM writing column 0 (ldc = Vl).
  if (split_) o.gemm(false, false, N, 1, 1, dloss, corr_, 1, one_, 1, 1.0f, dlogits, Vl);
}

void VocabParallelXent::count_correct(const tensor::Ops& o, GroupComm* tp, const float* logits,
                                      int N, int Vl, double* correct, double* count) {
  // Per row: [the largest logit, the target's logit (-inf where another rank holds it)], both
  // maxed over the group, so the comparison is exact.
  const float kNone = -std::numeric_limits<float>::infinity();
  std::vector<float> host(size_t(N) * Vl), red(2 * size_t(N), kNone);
  o.copy_to_host(host.data(), logits, host.size() * sizeof(float));
  for (int i = 0; i < N; ++i) {
    const float* row = host.data() + size_t(i) * Vl;
    if (Vl > 0) red[i] = *std::max_element(row, row + Vl);
    if (local_target_[i] >= 0) red[N + i] = row[local_target_[i]];
  }
  if (tp) {
    o.copy_from_host(tmp_, red.data(), sizeof(float) * 2 * N);
    tp->allreduce_max(tmp_, 2 * size_t(N));
    o.copy_to_host(red.data(), tmp_, sizeof(float) * 2 * N);
  }
  for (int i = 0; i < N; ++i) {
    if (has_target_[i] < 0) continue;
    *count += 1;
    if (red[N + i] >= red[i]) *correct += 1;
  }
}

}  // namespace ptrain::nn
