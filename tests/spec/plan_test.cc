// The plan: rank placement on the mesh, parameter counts and per-rank memory.
#include "ptrain/spec/plan.h"

#include <gtest/gtest.h>

#include "ptrain/spec/elastic.h"
#include "ptrain/spec/spec.h"

namespace ptrain::spec {
namespace {

TEST(Plan, RankCoordsPutTensorInnermostThenDataThenPipeline) {
  // docs/ARCHITECTURE.md, "The mesh": tp = r % T; dp = (r / T) % D; pp = r / (T * D), with D=2,
  // T=2.
  RankPlace r5 = rank_coords(5, 2, 2);
  EXPECT_EQ(r5.tp, 1);
  EXPECT_EQ(r5.dp, 0);
  EXPECT_EQ(r5.pp, 1);
  RankPlace r2 = rank_coords(2, 2, 2);
  EXPECT_EQ(r2.tp, 0);
  EXPECT_EQ(r2.dp, 1);
  EXPECT_EQ(r2.pp, 0);
}

TEST(Plan, RanksFillHostsInOrder) {
  Plan p =
      make_plan(load_string("nodes: {hosts: ['a:1', b], procs_per_node: 3}\n"
                            "data: {batch_size: 4}\n",
                            "t.yaml"));
  ASSERT_EQ(p.hosts.size(), 2u);
  EXPECT_EQ(p.hosts[0].ranks, std::vector<int>{0});
  EXPECT_EQ(p.hosts[1].ranks, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(p.ranks[3].local_rank, 2);
  EXPECT_EQ(p.ranks[3].host_index, 1);
}

TEST(Plan, Gpt2SmallHasItsKnownParameterCount) {
  Plan p = make_plan(load_string(
      "model: {layers: 12, heads: 12, dim: 768, seq_len: 1024, vocab: 50257}\n", "t.yaml"));
  EXPECT_EQ(p.parameters, 124439808);  // Hugging Face gpt2, LM head tied
  EXPECT_EQ(p.memory.parameters, p.parameters);
  EXPECT_EQ(p.memory.param_bytes, p.parameters * 4);
  EXPECT_EQ(p.memory.optimizer_bytes, p.parameters * 8);  // AdamW: two floats per parameter
  EXPECT_EQ(p.tokens_per_step, 8 * 1024);
}

TEST(Plan, MlpCountsEveryLinearLayer) {
  Plan p =
      make_plan(load_string("model: {type: mlp, input: 16, hidden: [64, 64], classes: 4}\n"
                            "data: {type: synthetic}\n",
                            "t.yaml"));
  EXPECT_EQ(p.parameters, (16 * 64 + 64) + (64 * 64 + 64) + (64 * 4 + 4));
}

TEST(Plan, ZeroOneDividesOptimizerStateByTheDataDegree) {
  const char* base = "nodes: {procs_per_node: 4}\ntrain: {optimizer: {type: sgd, momentum: 0.9}}\n";
  Plan plain = make_plan(load_string(base, "t.yaml"));
  Plan zero = make_plan(load_string(base, "t.yaml", {"parallel.zero=1"}));
  EXPECT_EQ(plain.memory.optimizer_bytes, plain.memory.parameters * 4);  // one momentum float
  EXPECT_EQ(zero.memory.optimizer_bytes, (plain.memory.optimizer_bytes + 3) / 4);
}

TEST(Plan, TensorParallelSplitsBlockWeights) {
  const char* base =
      "nodes: {procs_per_node: 2}\nmodel: {layers: 2, heads: 2, dim: 64}\n"
      "data: {batch_size: 2}\n";
  Plan one = make_plan(load_string(base, "t.yaml", {"parallel.data=2"}));
  Plan two = make_plan(load_string(base, "t.yaml", {"parallel.tensor=2"}));
  const int64_t D = 64, V = 256, T = 64, L = 2;
  EXPECT_EQ(one.memory.parameters, one.parameters);
  // Matrices, column-parallel biases and wte halve; layer norms, row biases and wpe stay.
  EXPECT_EQ(two.memory.parameters,
            L * (6 * D + (12 * D * D + 7 * D) / 2) + V * D / 2 + T * D + 2 * D);
}

TEST(Plan, PipelineStagesHoldTheirLayers) {
  Plan p =
      make_plan(load_string("nodes: {procs_per_node: 2}\nparallel: {pipeline: 2, "
                            "microbatches: 2, stages: [3, 1]}\nmodel: {layers: 4}\n",
                            "t.yaml"));
  EXPECT_EQ(p.stage_layers, (std::vector<int>{3, 1}));
  EXPECT_EQ(p.largest_stage, 0);
  const int64_t D = 64, V = 256, T = 64;
  EXPECT_EQ(p.memory.parameters, 3 * (12 * D * D + 13 * D) + V * D + T * D);
}

TEST(Plan, DefaultStagesBalanceParametersNotLayerCounts) {
  // GPT-2 small: the embeddings (39.4M) outweigh five blocks (7.1M each), so the first and last
  // stages (the last holds the tied wte copy) get one block and the middle ones the rest.
  Plan p = make_plan(
      load_string("nodes: {procs_per_node: 4}\nparallel: {pipeline: 4, microbatches: 4}\n"
                  "model: {layers: 12, heads: 12, dim: 768, seq_len: 1024, vocab: 50257}\n",
                  "t.yaml"));
  EXPECT_EQ(p.stage_layers, (std::vector<int>{1, 5, 5, 1}));
  EXPECT_EQ(stage_layers(load_string("nodes: {procs_per_node: 2}\nparallel: {pipeline: 2, "
                                     "microbatches: 2}\nmodel: {layers: 4}\n",
                                     "t.yaml")),
            (std::vector<int>{2, 2}));
}

TEST(Plan, BatchSplitsIntoMicroBatches) {
  Plan p =
      make_plan(load_string("nodes: {procs_per_node: 2}\ndata: {batch_size: 32}\n"
                            "train: {grad_accum: 2}\n",
                            "t.yaml"));
  EXPECT_EQ(p.global_batch, 32);
  EXPECT_EQ(p.micro_batch, 8);
  EXPECT_EQ(p.tokens_per_step, 32 * 64);
}

TEST(Plan, FormatNamesWorldHostsAndMemory) {
  std::string text = format_plan(make_plan(load_string(
      "name: demo\nnodes: {hosts: [h1, h2], procs_per_node: 2}\ndata: {batch_size: 4}\n",
      "t.yaml")));
  EXPECT_NE(text.find("job demo"), std::string::npos) << text;
  EXPECT_NE(text.find("4 workers = data 4 x tensor 1 x pipeline 1"), std::string::npos) << text;
  EXPECT_NE(text.find("h2    ranks 2-3"), std::string::npos) << text;
  EXPECT_NE(text.find("optimizer"), std::string::npos) << text;
}

TEST(Elastic, ShrinkKeepsTheGlobalBatchByRaisingGradAccum) {
  JobSpec s = load_string(
      "nodes: {hosts: [a, b, c, d], procs_per_node: 1, min_nodes: 1}\n"
      "data: {batch_size: 16}\ntrain: {grad_accum: 1}\n",
      "t.yaml");
  Reshape r = reshape_for_hosts(s, {{"a", 0}, {"c", 0}});
  ASSERT_TRUE(r.ok) << r.reason;
  EXPECT_EQ(r.spec.parallel.data, 2);
  EXPECT_EQ(r.spec.train.grad_accum, 2);
  EXPECT_EQ(r.spec.nodes.hosts, (std::vector<HostSlots>{{"a", 0}, {"c", 0}}));
  Plan before = make_plan(s), after = make_plan(r.spec);
  EXPECT_EQ(after.global_batch, before.global_batch);
  EXPECT_EQ(after.micro_batch, before.micro_batch);
  // The shrunk spec is a valid spec in its own right (what the workers load).
  EXPECT_EQ(load_string(to_yaml(r.spec), "t.yaml"), r.spec);
}

TEST(Elastic, ShrinkIsRefusedBelowMinNodesOrWhenTheBatchDoesNotSplit) {
  JobSpec s = load_string(
      "nodes: {hosts: [a, b, c], procs_per_node: 1, min_nodes: 2}\ndata: {batch_size: 6}\n",
      "t.yaml");
  Reshape one = reshape_for_hosts(s, {{"a", 0}});
  EXPECT_FALSE(one.ok);
  EXPECT_NE(one.reason.find("fewer than nodes.min_nodes = 2"), std::string::npos) << one.reason;
  // data 3 x grad_accum 1 = 3 slices do not split over 2 data ranks.
  Reshape two = reshape_for_hosts(s, {{"a", 0}, {"b", 0}});
  EXPECT_FALSE(two.ok);
  EXPECT_NE(two.reason.find("cannot share evenly"), std::string::npos) << two.reason;
}

TEST(Elastic, TensorGroupsThatCannotBeReformedRefuseTheShrink) {
  JobSpec s = load_string(
      "nodes: {hosts: ['a:2', 'b:1', 'c:1'], min_nodes: 1}\nparallel: {tensor: 2}\n"
      "data: {batch_size: 8}\n",
      "t.yaml");
  Reshape r = reshape_for_hosts(s, {{"a", 2}, {"b", 1}});
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.reason.find("cannot be re-formed"), std::string::npos) << r.reason;
  EXPECT_TRUE(reshape_for_hosts(s, {{"a", 2}}).ok);
}

TEST(Elastic, PlanListsTheWorldSizesTheJobCanShrinkTo) {
  // 4 hosts x 2: the 8 slices of data 8 x grad_accum 1 split over 4 or 2 ranks, not over 6.
  JobSpec s = load_string(
      "nodes: {hosts: [a, b, c, d], procs_per_node: 2, min_nodes: 1}\ndata: {batch_size: 16}\n",
      "t.yaml");
  EXPECT_EQ(shrink_world_sizes(s), (std::vector<int>{4, 2}));
  std::string text = format_plan(make_plan(s));
  EXPECT_NE(text.find("elastic    min_nodes 1 of 4 hosts: can shrink to world sizes 4, 2"),
            std::string::npos)
      << text;
  JobSpec fixed = load_string("nodes: {hosts: [a, b], procs_per_node: 2}\n", "t.yaml");
  EXPECT_TRUE(shrink_world_sizes(fixed).empty());
  EXPECT_EQ(format_plan(make_plan(fixed)).find("elastic"), std::string::npos);
}

TEST(Elastic, CheckpointFingerprintsIgnoreGradAccumAndWorldSize) {
  JobSpec full = load_string(
      "nodes: {hosts: [a, b], procs_per_node: 1, min_nodes: 1}\ndata: {batch_size: 8}\n", "t.yaml");
  Reshape r = reshape_for_hosts(full, {{"a", 0}});
  ASSERT_TRUE(r.ok) << r.reason;
  ASSERT_EQ(r.spec.train.grad_accum, 2);
  EXPECT_EQ(fingerprints(r.spec), fingerprints(full));
  JobSpec other_lr = full;
  other_lr.train.optimizer.lr *= 2;
  EXPECT_NE(fingerprints(other_lr).at("train"), fingerprints(full).at("train"));
}

}  // namespace
}  // namespace ptrain::spec
