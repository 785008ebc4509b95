// Pipeline specs the validator refuses (or warns about), with the reason in the message.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <sstream>

#include "ptrain/core/error.h"
#include "ptrain/spec/spec.h"

namespace ptrain {
namespace {

std::string pipeline_yaml(const std::string& parallel, int layers = 4) {
  return "name: pp\nnodes: {procs_per_node: 2, device: cpu}\nparallel: {" + parallel +
         "}\nmodel: {type: gpt, layers: " + std::to_string(layers) +
         ", heads: 2, dim: 32, seq_len: 16, vocab: 64}\n"
         "data: {type: synthetic, batch_size: 8}\n";
}

std::string load_error(const std::string& yaml) {
  try {
    spec::load_string(yaml, "pp.yaml");
  } catch (const ConfigError& e) {
    return e.message();
  }
  return "";
}

TEST(PipelineBadInput, MoreStagesThanLayersIsRejected) {
  auto msg = load_error(pipeline_yaml("data: 1, pipeline: 2, microbatches: 2", 1));
  EXPECT_NE(msg.find("more stages than the model"), std::string::npos) << msg;
}

TEST(PipelineBadInput, StagesNotSummingToTheLayersAreRejected) {
  auto msg = load_error(pipeline_yaml("data: 1, pipeline: 2, microbatches: 2, stages: [1, 2]"));
  EXPECT_NE(msg.find("parallel.stages"), std::string::npos) << msg;
  EXPECT_NE(msg.find("add up to 3"), std::string::npos) << msg;
}

TEST(PipelineBadInput, OneStageSizePerStageIsRequired) {
  auto msg = load_error(pipeline_yaml("data: 1, pipeline: 2, microbatches: 2, stages: [4]"));
  EXPECT_NE(msg.find("parallel.stages"), std::string::npos) << msg;
}

TEST(PipelineBadInput, AsyncDataParallelWithAPipelineIsRejectedWithTheReason) {
  auto yaml = pipeline_yaml("data: 1, pipeline: 2, microbatches: 2, data_mode: async");
  auto msg = load_error(yaml);
  EXPECT_NE(msg.find("async data parallel excludes pipeline parallelism"), std::string::npos)
      << msg;
}

TEST(PipelineBadInput, FewerMicrobatchesThanStagesIsOnlyAWarning) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_pattern("%v");
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  spec::JobSpec s;
  EXPECT_NO_THROW(
      s = spec::load_string(pipeline_yaml("data: 1, pipeline: 2, microbatches: 1"), "pp.yaml"));
  spdlog::set_default_logger(previous);
  EXPECT_EQ(s.parallel.pipeline, 2);
  EXPECT_NE(out.str().find("microbatches = 1 is fewer than the 2 pipeline stages"),
            std::string::npos)
      << out.str();
}

}  // namespace
}  // namespace ptrain
