// Tensor-parallel parameter splits: the parts of every GPT parameter tile the full tensor, and
// each rank's initial part equals the same slice of the unsplit model's tensor.
#include <gtest/gtest.h>

#include <vector>

#include "gpt/gpt.h"
#include "ptrain/core/error.h"

namespace ptrain::nn {
namespace {

GptConfig tiny(int t, int r) {
  GptConfig c;
  c.layers = 2;
  c.heads = 4;
  c.dim = 16;
  c.seq_len = 8;
  c.vocab = 32;
  c.tp_size = t;
  c.tp_rank = r;
  return c;
}

std::vector<float> host_param(const Model& m, size_t i) {
  std::vector<float> v(m.params()[i].numel);
  m.param(i).copy_to_host(v.data(), v.size() * sizeof(float));
  return v;
}

TEST(TensorParallelSplit, EachRankHoldsItsSliceOfTheFullInit) {
  Gpt full(tiny(1, 0));
  full.init(3);
  for (int t : {2, 4}) {
    std::vector<std::unique_ptr<Gpt>> ranks;
    for (int r = 0; r < t; ++r) {
      ranks.push_back(std::make_unique<Gpt>(tiny(t, r)));
      ranks.back()->init(3);
    }
    ASSERT_EQ(ranks[0]->params().size(), full.params().size());
    for (size_t i = 0; i < full.params().size(); ++i) {
      const auto& fp = full.params()[i];
      std::vector<float> joined(fp.numel, -1.0f);
      for (int r = 0; r < t; ++r) {
        const auto& p = ranks[r]->params()[i];
        ASSERT_EQ(p.full_shape, fp.shape) << p.name;
        auto part = host_param(*ranks[r], i);
        if (p.is_split()) {
          EXPECT_EQ(p.numel * t, fp.numel) << p.name;
          copy_shard_to_full(p, r, part.data(), joined.data());
        } else {
          joined = part;  // replicated: every rank holds the whole tensor
        }
      }
      EXPECT_EQ(joined, host_param(full, i)) << fp.name << " t=" << t;
    }
  }
}

TEST(TensorParallelSplit, AttentionWeightKeepsQKVBlocksOfTheSameHeads) {
  Gpt part(tiny(2, 1));
  const auto& p = part.params()[part.find_param("h.0.attn.c_attn.weight")];
  EXPECT_EQ(p.shape, (std::vector<int64_t>{16, 24}));  // [D, 3D/t]
  // Full [2, 6] of 3 blocks (q|k|v, 2 columns each), 2 parts: part 1 takes column 1 of each.
  ParamInfo q;
  q.shape = {2, 3};
  q.full_shape = {2, 6};
  q.numel = 6;
  q.split_dim = 1;
  q.split_blocks = 3;
  q.split_parts = 2;
  std::vector<float> full = {0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15}, shard(6);
  copy_shard_from_full(q, 1, full.data(), shard.data());
  EXPECT_EQ(shard, (std::vector<float>{1, 3, 5, 11, 13, 15}));
}

TEST(TensorParallelSplit, RowParallelWeightsSplitRowsAndKeepTheirBias) {
  Gpt part(tiny(4, 2));
  const auto& w = part.params()[part.find_param("h.1.mlp.c_proj.weight")];
  EXPECT_EQ(w.shape, (std::vector<int64_t>{16, 16}));  // [4D/t, D]
  EXPECT_EQ(w.split_dim, 0);
  const auto& b = part.params()[part.find_param("h.1.mlp.c_proj.bias")];
  EXPECT_FALSE(b.is_split());
  const auto& wte = part.params()[part.find_param("wte.weight")];
  EXPECT_EQ(wte.shape, (std::vector<int64_t>{8, 16}));  // [V/t, D]
}

TEST(TensorParallelSplit, HeadsOrVocabNotDivisibleIsAConfigError) {
  auto c = tiny(3, 0);
  EXPECT_THROW(Gpt{c}, ConfigError);
}

TEST(TensorParallelSplit, ForwardWithoutACommIsRefused) {
  Gpt part(tiny(2, 0));
  part.init(1);
  auto acts = part.make_activations(1, 4);
  std::vector<int32_t> tokens = {1, 2, 3, 4}, targets = {2, 3, 4, 5};
  Batch b;
  b.B = 1;
  b.T = 4;
  b.add("tokens", tensor::DType::kI32, {1, 4}, tokens.data());
  b.add("targets", tensor::DType::kI32, {1, 4}, targets.data());
  EXPECT_THROW(part.forward(b, *acts), Error);
}

}  // namespace
}  // namespace ptrain::nn
