// The shm backend end to end with the real binary: a data-parallel job over `parallel.comm: shm`
// trains to the loss of one process, and a launcher killed mid-run leaves no segment behind
// once the next run has swept.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "ptrain/comm/shm.h"
#include "support/ptrain_process.h"

namespace ptrain {
namespace {

namespace fs = std::filesystem;
using ptrain::testing::contains;
using ptrain::testing::TempDir;
using Ptrain = ptrain::testing::PtrainProcess;

const char* kJob = R"(nodes: {{procs_per_node: {procs}, device: cpu, threads_per_proc: 1}}
parallel: {{data: {procs}, comm: {comm}}}
model: {{type: gpt, layers: 2, heads: 2, dim: 32, seq_len: 16, vocab: 64}}
data: {{type: synthetic, batch_size: 8}}
train: {{steps: {steps}, seed: 3, log_every: 1}}
)";

// True when a ptrain segment in /dev/shm names a creator that no longer runs.
std::vector<std::string> stale_segments() {
  std::vector<std::string> out;
  std::regex name("ptrain-.*-([0-9]+)-[0-9a-f]+");
  for (const auto& e : fs::directory_iterator("/dev/shm")) {
    std::smatch m;
    const auto file = e.path().filename().string();
    if (!std::regex_match(file, m, name)) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(m[1]));
    if (::kill(pid, 0) != 0 && errno == ESRCH) out.push_back(file);
  }
  return out;
}

class ShmRun : public ::testing::Test {
 protected:
  std::string job(int procs, const std::string& comm, int steps) {
    const std::string path = fmt::format("{}/job-{}-{}.yaml", tmp_.path(), procs, comm);
    std::ofstream(path) << "name: t\nlogging: {dir: " << tmp_.path() << "/runs, console: rank0}\n"
                        << fmt::format(fmt::runtime(kJob), fmt::arg("procs", procs),
                                       fmt::arg("comm", comm), fmt::arg("steps", steps));
    return path;
  }
  // "final loss 4.1234" of rank 0.
  static std::string final_loss(const std::string& out) {
    std::smatch m;
    std::regex re("final loss ([0-9.]+)");
    return std::regex_search(out, m, re) ? m[1].str() : "";
  }
  void TearDown() override {
    auto left = ptrain::testing::wait_all_gone(
        [&] { return ptrain::testing::processes_with_run_dir(tmp_.path()); }, Millis(10000));
    EXPECT_TRUE(left.empty()) << left.size() << " process(es) of the run left";
    for (pid_t p : left) ::kill(p, SIGKILL);
  }
  TempDir tmp_{"ptrain-shm-test"};
};

TEST_F(ShmRun, DataParallelOverShmTrainsToTheLossOfOneProcess) {
  Ptrain one({"run", job(1, "auto", 12)});
  ASSERT_EQ(one.finish(Millis(120000)), 0) << one.err;
  Ptrain two({"run", job(2, "shm", 12)});
  ASSERT_EQ(two.finish(Millis(120000)), 0) << two.err;
  const auto want = final_loss(one.out);
  ASSERT_FALSE(want.empty()) << one.out;
  EXPECT_EQ(final_loss(two.out), want) << two.out;
}

TEST_F(ShmRun, LauncherKilledMidRunLeavesNoSegmentAfterTheNextRun) {
  Ptrain p({"run", job(2, "shm", 1000000)});
  // Training has started once rank 0 reports steps: the group's segment was made and mapped.
  ASSERT_TRUE(p.wait_for([&] { return contains(p.out, "step 2") || contains(p.err, "step 2"); },
                         Millis(120000)))
      << p.out << p.err;
  ::kill(p.proc().pid(), SIGKILL);
  EXPECT_EQ(p.finish(Millis(30000)), 137);
  EXPECT_TRUE(
      ptrain::testing::wait_all_gone(
          [&] { return ptrain::testing::processes_with_run_dir(tmp_.path()); }, Millis(20000))
          .empty());
  // A segment left by a rank 0 that died during start-up (its creator is gone).
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  const std::string planted = fmt::format("/ptrain-t_old-dp_0_1_-{}-0badf00d", child);
  const int fd = ::shm_open(planted.c_str(), O_CREAT | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  Ptrain next({"run", job(2, "shm", 2)});
  ASSERT_EQ(next.finish(Millis(120000)), 0) << next.err;
  EXPECT_FALSE(fs::exists("/dev/shm" + planted));
  EXPECT_TRUE(stale_segments().empty()) << stale_segments().front();
}

}  // namespace
}  // namespace ptrain
