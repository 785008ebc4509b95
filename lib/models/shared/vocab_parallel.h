// Megatron's vocabulary-parallel softmax cross-entropy, for language-model heads whose logits
// are split by vocabulary columns over the tensor group (so full logits are never gathered):
// each rank's log-sum-exp is combined over the group (max, then the sum of exponentials) and
// the target logit comes from the rank that holds its column. Works on any device's op table.
// The vocabulary may split unevenly (257 over 2 ranks): VocabPart says which columns are real.
#pragma once

#include <cstdint>
#include <vector>

#include "ptrain/nn/model.h"
#include "ptrain/tensor/tensor.h"

namespace ptrain::nn {

// Rank `rank`'s part of a vocabulary of `vocab` ids split into `parts`: it holds table rows
// [begin, begin + rows) of a table padded to parts * rows rows, of which `size` are real ids.
struct VocabPart {
  int begin = 0, size = 0, rows = 0;
  static VocabPart of(int vocab, int parts, int rank);
};

// The state of one microbatch's loss (one per activation set: several may be alive under
// 1F1B). Rows whose target is negative are ignored.
class VocabParallelXent {
 public:
  VocabParallelXent(tensor::Device device, int N);
  // logits [N, part.size] (device) of this rank's columns; targets [N] (host) in global ids.
  // `tp` is null on a single rank. Returns the sum of the losses over rows with a target, the
  // same on every rank of the group.
  double forward(const tensor::Ops& o, GroupComm* tp, const float* logits, const int32_t* targets,
                 int N, VocabPart part);
  // dlogits [N, part.size] = (softmax - onehot(target)) * dloss on rows with a target, 0 on the
  // others (written, not added).
  void backward(const tensor::Ops& o, float* dlogits, const float* logits, float dloss, int N,
                int Vl) const;
  // After forward: rows whose target has the largest logit over the whole vocabulary (ties
  // count as right), and rows with a target. Collective over `tp`.
  void count_correct(const tensor::Ops& o, GroupComm* tp, const float* logits, int N, int Vl,
                     double* correct, double* count);

 private:
  tensor::Tensor buf_, ids_;
  float *lse_, *losses_, *tmp_, *corr_, *one_;  // [N], [N], [2N], [N], [1]
  int32_t *targets_local_, *targets_bw_;        // [N] each
  std::vector<int32_t> ids_host_;
  std::vector<int32_t> local_target_, has_target_;  // [N] host, of the last forward
  std::vector<float> lse_host_, loss_host_, red_host_;
  bool split_ = false;
};

}  // namespace ptrain::nn
