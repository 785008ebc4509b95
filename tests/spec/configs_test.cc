// Every shipped config loads through the library and survives the to_yaml round trip.
#include <gtest/gtest.h>

#include <filesystem>

#include "ptrain/spec/plan.h"
#include "ptrain/spec/spec.h"

namespace ptrain::spec {
namespace {

TEST(Configs, EveryConfigLoadsAndRoundTrips) {
  int seen = 0;
  for (const auto& entry : std::filesystem::directory_iterator(PTRAIN_SOURCE_DIR "/configs")) {
    if (entry.path().extension() != ".yaml") continue;
    ++seen;
    SCOPED_TRACE(entry.path().string());
    JobSpec s = load_file(entry.path().string());
    JobSpec back = load_string(to_yaml(s), "job.yaml");
    back.source_path = s.source_path;
    EXPECT_EQ(back, s) << to_yaml(s);
    EXPECT_FALSE(format_plan(make_plan(s)).empty());
  }
  EXPECT_GE(seen, 8);
}

TEST(Configs, QuickstartIsTinyAndOnCpu) {
  JobSpec s = load_file(PTRAIN_SOURCE_DIR "/configs/quickstart.yaml");
  EXPECT_EQ(s.nodes.device, "cpu");
  EXPECT_EQ(s.world_size(), 2);
  EXPECT_EQ(s.parallel.data, 2);
  EXPECT_EQ(s.data.type, "text");
  EXPECT_TRUE(std::filesystem::is_regular_file(s.data.path)) << s.data.path;
  EXPECT_LT(make_plan(s).parameters, 1000000);
}

}  // namespace
}  // namespace ptrain::spec
