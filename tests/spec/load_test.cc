// The spec loader's accepted inputs: defaults, `auto`/`gpu`, paths, `${VAR}`, overrides,
// hostfiles, command mode, warnings and the to_yaml round trip.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <sstream>

#include "ptrain/core/error.h"
#include "ptrain/spec/spec.h"
#include "spec_test_util.h"

namespace ptrain::spec {
namespace {

using testing::TempDir;

// Captures spdlog warnings for the lifetime of the object.
class WarningCapture {
 public:
  WarningCapture() {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    sink->set_pattern("%v");
    previous_ = spdlog::default_logger();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  }
  ~WarningCapture() { spdlog::set_default_logger(previous_); }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

TEST(Load, EmptySectionsGiveTheDefaults) {
  JobSpec s = load_string("name: tiny\n", "t.yaml");
  EXPECT_EQ(s.name, "tiny");
  EXPECT_EQ(s.nodes.hosts, (std::vector<HostSlots>{{"localhost", 0}}));
  EXPECT_EQ(s.world_size(), 1);
  EXPECT_TRUE(s.parallel.data_auto);
  EXPECT_EQ(s.model.type, "gpt");
  EXPECT_EQ(s.train.optimizer.type, "adamw");
  EXPECT_EQ(s.logging.dir, "runs");
}

TEST(Load, DataAutoFillsTheDataDegreeFromTheWorld) {
  JobSpec s = load_string(
      "nodes: {hosts: [a, b], procs_per_node: 4}\n"
      "parallel: {data: auto, tensor: 2}\nmodel: {heads: 2, dim: 64}\n"
      "data: {batch_size: 8}\n",
      "t.yaml");
  EXPECT_EQ(s.parallel.data, 4);
  EXPECT_EQ(s.world_size(), 8);
}

TEST(Load, HostSlotsOverrideProcsPerNode) {
  JobSpec s = load_string(
      "nodes: {hosts: ['a:3', b], procs_per_node: 1}\n"
      "data: {batch_size: 4}\n",
      "t.yaml");
  EXPECT_EQ(s.nodes.hosts, (std::vector<HostSlots>{{"a", 3}, {"b", 0}}));
  EXPECT_EQ(s.parallel.data, 4);
}

TEST(Load, ProcsPerNodeGpuCountsVisibleDevices) {
  ::setenv("CUDA_VISIBLE_DEVICES", "0,1,2", 1);
  JobSpec s = load_string("nodes: {procs_per_node: gpu}\ndata: {batch_size: 3}\n", "t.yaml");
  ::unsetenv("CUDA_VISIBLE_DEVICES");
  EXPECT_TRUE(s.nodes.procs_per_gpu);
  EXPECT_EQ(s.nodes.procs_per_node, 3);
}

TEST(Load, ProcsPerNodeGpuWithoutGpusIsAnError) {
  ::setenv("CUDA_VISIBLE_DEVICES", "", 1);
  EXPECT_THROW(load_string("nodes: {procs_per_node: gpu}\n", "t.yaml"), ConfigError);
  ::unsetenv("CUDA_VISIBLE_DEVICES");
}

TEST(Load, RelativePathsResolveAgainstTheSpecFolder) {
  TempDir dir;
  dir.write("sub/data/tiny.txt", "hello");
  dir.write("sub/hosts", "n1 slots=2\nn2 slots=2\n");
  std::string path = dir.write("sub/job.yaml",
                               "nodes: {hostfile: hosts}\ndata: {type: text, path: data/tiny.txt}\n"
                               "checkpoint: {dir: ckpt, resume: last.safetensors}\n"
                               "model: {init_from: ../init.safetensors}\nlogging: {dir: runs}\n");
  JobSpec s = load_file(path);
  std::string sub = dir.path() + "/sub";
  EXPECT_EQ(s.data.path, sub + "/data/tiny.txt");
  EXPECT_EQ(s.nodes.hostfile, sub + "/hosts");
  EXPECT_EQ(s.checkpoint.dir, sub + "/ckpt");
  EXPECT_EQ(s.checkpoint.resume, sub + "/last.safetensors");
  EXPECT_EQ(s.model.init_from, dir.path() + "/init.safetensors");
  EXPECT_EQ(s.logging.dir, sub + "/runs");
  EXPECT_EQ(s.source_path, path);
}

TEST(Load, EnvironmentVariablesExpand) {
  ::setenv("PTRAIN_TEST_PROCS", "2", 1);
  ::setenv("PTRAIN_TEST_TAG", "v1", 1);
  JobSpec s = load_string(
      "name: run-${PTRAIN_TEST_TAG}\nnodes:\n  procs_per_node: ${PTRAIN_TEST_PROCS}\n"
      "env: {HOME_COPY: '$${HOME}', LEVEL: '${PTRAIN_TEST_UNSET_X:-info}'}\n"
      "data: {batch_size: 2}\n",
      "t.yaml");
  ::unsetenv("PTRAIN_TEST_PROCS");
  ::unsetenv("PTRAIN_TEST_TAG");
  EXPECT_EQ(s.name, "run-v1");
  EXPECT_EQ(s.nodes.procs_per_node, 2);
  EXPECT_EQ(s.env.at("HOME_COPY"), "${HOME}");
  EXPECT_EQ(s.env.at("LEVEL"), "info");
}

TEST(Load, OverridesReplaceValuesAndAddSections) {
  JobSpec s = load_string("model: {layers: 2}\n", "t.yaml",
                          {"model.layers=6", "train.optimizer={type: sgd, momentum: 0.9}",
                           "parallel.stages=[6]", "name=renamed"});
  EXPECT_EQ(s.model.integer("layers"), 6);
  EXPECT_EQ(s.train.optimizer.type, "sgd");
  EXPECT_DOUBLE_EQ(s.train.optimizer.momentum, 0.9);
  EXPECT_EQ(s.parallel.stages, std::vector<int>{6});
  EXPECT_EQ(s.name, "renamed");
}

TEST(Load, OverridesGoThroughTheSameChecks) {
  EXPECT_THROW(load_string("name: a\n", "t.yaml", {"parallel.data=3"}), ConfigError);
  EXPECT_THROW(load_string("name: a\n", "t.yaml", {"data.batch_size=-1"}), ConfigError);
}

TEST(Load, HostfileSuppliesTheHosts) {
  EXPECT_EQ(
      parse_hostfile("# two nodes\nnode1 slots=4\n\n  node2 slots=2 max_slots=8 # gpu\nnode3\n",
                     "hosts"),
      (std::vector<HostSlots>{{"node1", 4}, {"node2", 2}, {"node3", 0}}));
  TempDir dir;
  dir.write("hosts", "a slots=2\nb slots=2\n");
  JobSpec s = load_file(dir.write("job.yaml", "nodes: {hostfile: hosts}\n"));
  EXPECT_EQ(s.world_size(), 4);
  EXPECT_EQ(resolve_hosts(s), (std::vector<HostSlots>{{"a", 2}, {"b", 2}}));
}

TEST(Load, HostfileErrorsNameTheLine) {
  try {
    parse_hostfile("a slots=1\nb cores=2\n", "hosts");
    FAIL() << "no throw";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("hosts:2:3: unexpected `cores=2`", 0), 0u) << e.what();
  }
}

TEST(Load, CommandModeIgnoresModelDataAndTrain) {
  WarningCapture warnings;
  JobSpec s = load_string(
      "command: [python3, train.py, --epochs, 3]\n"
      "model: {dim: 63, heads: 2}\ndata: {batch_size: 7}\n"
      "nodes: {procs_per_node: 2}\n",
      "t.yaml");
  EXPECT_TRUE(s.launcher_only());
  EXPECT_EQ(s.command, (std::vector<std::string>{"python3", "train.py", "--epochs", "3"}));
  EXPECT_EQ(s.model.integer("dim"), ModelSpec{}.integer("dim"));
  EXPECT_NE(warnings.text().find("model: ignored"), std::string::npos) << warnings.text();
}

TEST(Load, TensorWiderThanANodeWarns) {
  WarningCapture warnings;
  load_string(
      "nodes: {hosts: [a, b], procs_per_node: 2}\nparallel: {tensor: 4}\n"
      "model: {heads: 4, dim: 64}\n",
      "t.yaml");
  EXPECT_NE(warnings.text().find("parallel.tensor: tensor = 4 is more than the 2 workers"),
            std::string::npos)
      << warnings.text();
}

TEST(Load, FewerMicrobatchesThanStagesWarns) {
  WarningCapture warnings;
  load_string("nodes: {procs_per_node: 2}\nparallel: {pipeline: 2, microbatches: 1}\n", "t.yaml");
  EXPECT_NE(warnings.text().find("microbatches = 1 is fewer than the 2 pipeline stages"),
            std::string::npos)
      << warnings.text();
}

TEST(Load, AsyncWithZeroGivesTheReason) {
  try {
    load_string("parallel: {data_mode: async, zero: 1}\n", "t.yaml");
    FAIL() << "no throw";
  } catch (const ConfigError& e) {
    EXPECT_NE(e.hint().find("parameter servers own the optimizer state"), std::string::npos);
  }
}

TEST(Load, OptimizerKeysMustMatchItsType) {
  EXPECT_THROW(load_string("train: {optimizer: {type: adamw, momentum: 0.9}}\n", "t.yaml"),
               ConfigError);
  EXPECT_THROW(load_string("model: {type: mlp, input: 4, classes: 2, layers: 3}\n"
                           "data: {type: synthetic}\n",
                           "t.yaml"),
               ConfigError);
}

JobSpec rich_spec() {
  return load_string(R"(
name: rich.job-1
env: {A: "1", B: "text with spaces", C: "$${NOT_EXPANDED}", D: "true", E: ""}
nodes:
  hosts: [alpha, "beta:4", "[::1]:2"]
  procs_per_node: 2
  device: cuda
  threads_per_proc: 3
  ssh: {user: me, port: 2222, identity: /k/id, options: [StrictHostKeyChecking=no], config: /c}
  remote_ptrain: /opt/ptrain
  ship_binary: true
rendezvous: {bind: 10.0.0.1, port: 29500, timeout_s: 12.5}
parallel: {data: auto, tensor: 2, pipeline: 2, zero: 1, bucket_mb: 0.5, schedule: gpipe,
           microbatches: 4, stages: [3, 1], comm: nccl}
model: {type: gpt, layers: 4, heads: 4, dim: 32, seq_len: 16, vocab: 512, init_from: /w.st}
data: {type: tokens, path: /d/train.bin, batch_size: 16, shuffle: true, eval_fraction: 0.125}
train:
  steps: 1234
  seed: 99
  precision: bf16
  grad_accum: 2
  log_every: 7
  eval_every: 100
  optimizer: {type: adamw, lr: 3.0e-4, betas: [0.8, 0.999], eps: 1.0e-7, weight_decay: 0.1,
              grad_clip: 0.3}
  schedule: {warmup: 10, decay: linear, min_lr: 1.0e-5}
checkpoint: {every: 50, dir: /ck, keep: 0, resume: never}
fault_tolerance: {max_restarts: 2, heartbeat_s: 0.5, hang_timeout_s: 30, term_grace_s: 1}
logging: {dir: /runs, console: all, level: debug}
)",
                     "rich.yaml");
}

TEST(RoundTrip, ToYamlLoadsBackToAnEqualSpec) {
  JobSpec s = rich_spec();
  JobSpec back = load_string(to_yaml(s), "job.yaml");
  EXPECT_EQ(back, s) << to_yaml(s);
}

TEST(RoundTrip, SgdMlpAndCommandSpecsRoundTrip) {
  for (const char* text :
       {"model: {type: mlp, input: 8, hidden: [16, 8], classes: 3}\ndata: {type: synthetic}\n"
        "train: {optimizer: {type: sgd, lr: 0.1, momentum: 0.5, nesterov: true}}\n",
        "command: [sh, -c, 'echo $${RANK} done']\nnodes: {procs_per_node: 3}\n"}) {
    JobSpec s = load_string(text, "t.yaml");
    EXPECT_EQ(load_string(to_yaml(s), "job.yaml"), s) << to_yaml(s);
  }
}

TEST(RoundTrip, HostfileSpecsKeepTheHostfile) {
  TempDir dir;
  dir.write("hosts", "a slots=2\n");
  JobSpec s = load_file(dir.write("job.yaml", "nodes: {hostfile: hosts}\n"));
  JobSpec back = load_string(to_yaml(s), "job.yaml");
  back.source_path = s.source_path;
  EXPECT_EQ(back, s);
}

TEST(ToJson, HoldsTheResolvedValues) {
  std::string json = to_json(rich_spec());
  EXPECT_NE(json.find("\"name\": \"rich.job-1\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"data\": \"auto\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"betas\": [0.8, 0.999]"), std::string::npos) << json;
  EXPECT_NE(json.find("\"C\": \"${NOT_EXPANDED}\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"ship_binary\": true"), std::string::npos) << json;
}

std::string hint_for(const std::string& text) {
  try {
    load_string(text, "t.yaml");
  } catch (const ConfigError& e) {
    return e.hint();
  }
  return "no error";
}

TEST(DidYouMean, SuggestsCloseKeysOnly) {
  EXPECT_EQ(hint_for("modle: {}\n"), "did you mean `model`?");
  EXPECT_EQ(hint_for("pralel: {}\n"), "did you mean `parallel`?");
  EXPECT_EQ(hint_for("fault_tolerence: {}\n"), "did you mean `fault_tolerance`?");
  EXPECT_EQ(hint_for("zzzz: 1\n").rfind("the keys here are: name, command", 0), 0u);
}

}  // namespace
}  // namespace ptrain::spec
