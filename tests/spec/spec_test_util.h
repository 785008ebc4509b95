// Helpers for the spec tests: a private temporary folder and the bad-input table that the
// library test and the CLI test both run.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace ptrain::spec::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ptrain-spec-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string path() const { return path_; }
  std::string write(const std::string& name, const std::string& text) const {
    std::string p = path_ + "/" + name;
    std::filesystem::create_directories(std::filesystem::path(p).parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }

 private:
  std::string path_;
};

// "a:" nested 9 levels deep, each level 9 aliases of the one below: 9^9 nodes if expanded.
inline std::string billion_laughs() {
  std::string s = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
  for (int i = 1; i <= 9; ++i) {
    s += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " [";
    for (int k = 0; k < 9; ++k) s += (k ? ", *a" : "*a") + std::to_string(i - 1);
    s += "]\n";
  }
  return s;
}

struct BadInput {
  std::string name;      // test name
  std::string text;      // file contents
  std::string position;  // expected "line:col" right after the file name ("" = no position)
  std::string key;       // expected key path after the position ("" = none)
  std::string what;      // a phrase the message must contain
};

inline std::vector<BadInput> bad_inputs() {
  return {
      {"EmptyFile", "", "1:1", "", "the spec is empty"},
      {"OnlyComments", "# nothing here\n\n", "1:1", "", "the spec is empty"},
      {"BinaryBytes", "name: x\nab\x01\x02\x00\xff", "2:3", "", "not a YAML text file"},
      {"InvalidUtf8", "name: caf\xe9\n", "1:10", "", "not a YAML text file"},
      {"TabIndentation", "name: x\nmodel:\n\tlayers: 2\n", "3:1", "", "tab used for indentation"},
      {"TabAfterSpaces", "model:\n  layers: 2\n  \tdim: 64\n", "", "", "tab"},
      {"DuplicateKey", "name: a\nmodel:\n  layers: 2\n  layers: 3\n", "4:3", "model.layers",
       "duplicate key; `layers` is already set on line 3"},
      {"DuplicateTopLevelKey", "name: a\nname: b\n", "2:1", "name", "duplicate key"},
      {"NameTooLong", "name: " + std::string(101, 'a') + "\n", "1:7", "name",
       "the job name is 101 characters long; at most 100"},
      {"RendezvousTimeoutTooSmall", "rendezvous:\n  timeout_s: 1e-300\n", "2:14",
       "rendezvous.timeout_s", "must be at least 0.1 and at most 86400, got 1e-300"},
      {"RelayTreeOfFanoutOne", "rendezvous:\n  tree_fanout: 1\n", "2:16", "rendezvous.tree_fanout",
       "would chain every node behind the next"},
      {"HeartbeatTooSmall", "fault_tolerance:\n  heartbeat_s: 1e-300\n", "2:16",
       "fault_tolerance.heartbeat_s", "must be at least 0.1"},
      {"ReservedEnvToken", "env:\n  PTRAIN_TOKEN: abc\n", "2:3", "env.PTRAIN_TOKEN",
       "ptrain sets this variable for every worker itself"},
      {"ReservedEnvRank", "env:\n  RANK: \"3\"\n", "2:3", "env.RANK",
       "ptrain sets this variable for every worker itself"},
      {"NewlineInValueIsEscaped", "name: \"a\\nptrain: error: forged\"\n", "1:7", "name",
       "`a\\nptrain: error: forged` is not a usable job name"},
      {"EscapeInValueIsEscaped", "model:\n  layers: \"\\e[31mred\"\n", "2:11", "model.layers",
       "expected an integer, got `\\x1b[31mred`"},
      {"LongValueIsCut", "model:\n  layers: " + std::string(100000, '7') + "x\n", "2:11",
       "model.layers", "...(99801 more bytes)`"},
      {"KeyOfAnotherFamily", "model:\n  type: mlp\n  input: 4\n  classes: 2\n  heads: 4\n", "5:3",
       "model.heads", "not a key of model type mlp; keys are input, hidden, classes, init_from"},
      {"UnknownModelType", "model:\n  type: resnot\n", "2:9", "model.type",
       "`resnot` is not a model family; registered: gpt, mlp"},
      {"MissingRequiredModelKey", "model:\n  type: mlp\n  input: 4\n", "2:3", "model",
       "mlp models need `classes`"},
      {"TypoKey", "name: a\nmodle:\n  layers: 2\n", "2:1", "modle",
       "unknown key; did you mean `model`?"},
      {"TypoNestedKey", "model:\n  layres: 2\n", "2:3", "model.layres",
       "unknown key; did you mean `layers`?"},
      {"StringWhereIntGoes", "model:\n  layers: two\n", "2:11", "model.layers",
       "expected an integer, got `two`"},
      {"FloatWhereIntGoes", "model:\n  dim: 64.5\n", "2:8", "model.dim", "expected an integer"},
      {"ListWhereIntGoes", "train:\n  steps: [1, 2]\n", "2:10", "train.steps",
       "expected a single value, got a list"},
      {"StringWhereNumberGoes", "train:\n  optimizer: {lr: fast}\n", "2:19", "train.optimizer.lr",
       "expected a number"},
      {"ScalarWhereSectionGoes", "model: gpt\n", "1:8", "model", "expected a mapping"},
      {"BadEnum", "nodes:\n  device: cdua\n", "2:11", "nodes.device",
       "expected one of auto|cpu|cuda, got `cdua`; did you mean `cuda`?"},
      {"ZeroBatch", "data:\n  batch_size: 0\n", "2:15", "data.batch_size", "must be at least 1"},
      {"NegativeDim", "model:\n  dim: -64\n", "2:8", "model.dim", "must be at least 1, got -64"},
      {"ZeroProcs", "nodes: {procs_per_node: 0}\n", "1:25", "nodes.procs_per_node",
       "must be at least 1"},
      {"InconsistentMesh", "nodes: {procs_per_node: 2}\nparallel: {data: 4}\n", "2:18",
       "parallel.data", "data x tensor x pipeline = 4 x 1 x 1 = 4, but 1 host x 2 procs_per_node"},
      {"TensorDoesNotDivideWorld", "nodes: {procs_per_node: 3}\nparallel: {tensor: 2}\n", "2:20",
       "parallel.tensor", "does not divide"},
      {"HeadsNotDivisibleByTensor",
       "nodes: {procs_per_node: 4}\nparallel: {tensor: 4}\nmodel: {heads: 6, dim: 96}\n", "3:16",
       "model.heads", "heads 6 is not divisible by tensor 4"},
      {"DimNotDivisibleByHeads", "model:\n  heads: 3\n  dim: 64\n", "3:8", "model.dim",
       "dim 64 is not divisible by heads 3"},
      {"StagesDoNotSumToLayers",
       "nodes: {procs_per_node: 2}\nparallel: {pipeline: 2, stages: [1, 2], microbatches: 2}\n"
       "model: {layers: 4}\n",
       "2:33", "parallel.stages", "stages add up to 3 blocks, but the model has 4"},
      {"MinNodesAboveHostCount", "nodes: {hosts: [a, b], min_nodes: 3}\n", "1:35",
       "nodes.min_nodes", "min_nodes = 3 is more than the job's 2 hosts"},
      {"MinNodesZero", "nodes: {hosts: [a, b], min_nodes: 0}\n", "1:35", "nodes.min_nodes", ""},
      {"BatchNotDivisible", "nodes: {procs_per_node: 3}\ndata: {batch_size: 8}\n", "2:20",
       "data.batch_size", "not divisible by data x microbatches x grad_accum"},
      {"AsyncWithZero", "parallel:\n  data_mode: async\n  zero: 1\n", "3:9", "parallel.zero",
       "async data parallel excludes zero"},
      {"AsyncWithPipeline",
       "nodes: {procs_per_node: 2}\nparallel: {data_mode: async, pipeline: 2, microbatches: 2}\n",
       "2:40", "parallel.pipeline", "async data parallel excludes pipeline"},
      {"UnsetEnvVar", "name: ${PTRAIN_TEST_SURELY_UNSET_VAR}\n", "1:7", "name",
       "environment variable PTRAIN_TEST_SURELY_UNSET_VAR is not set"},
      {"InvalidYamlSyntax", "model: {layers: 2\n", "2:1", "", "invalid YAML"},
      {"SecondDocument", "name: a\n---\nname: b\n", "", "", "a second YAML document"},
      {"MergeKey", "model:\n  <<: {layers: 2}\n", "2:3", "model.<<",
       "merge keys (`<<`) are not supported"},
      {"NotAMapping", "- a\n- b\n", "1:1", "", "a spec is a mapping of sections"},
      {"AliasBomb", billion_laughs(), "", "", "aliases expand to more than"},
  };
}

}  // namespace ptrain::spec::testing
