// Fault tolerance end to end with the real binary: a failed worker is restarted with its whole
// group, the trainer resumes from the newest complete checkpoint, and the loss curve (every line
// of metrics.jsonl, compared as text written with round-trip precision) equals the uninterrupted
// run's step for step. Faults come from PTRAIN_TEST_FAIL_AT_STEP (lib/train/src/fault_injection.h).
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ptrain.grpc.pb.h"
#include "ptrain/core/time.h"
#include "ptrain/launch/process.h"
#include "ptrain/rendezvous/token.h"
#include "support/ptrain_process.h"
#include "support/served_self.h"

using namespace ptrain;
using namespace ptrain::launch;
namespace fs = std::filesystem;

namespace {

using ptrain::testing::contains;
using ptrain::testing::count;
using ptrain::testing::read_file;
using ptrain::testing::TempDir;

// `ptrain ARGS...` with `extra_env` added, run to its end (bounded); output collected.
struct Result {
  int code = -1;
  std::string out, err;
};

Result run_ptrain(std::vector<std::string> args, std::vector<std::string> extra_env = {},
                  Millis timeout = Millis(120000)) {
  ptrain::testing::PtrainProcess p(std::move(args), std::move(extra_env));
  Result r;
  r.code = p.finish(timeout);
  r.out = std::move(p.out);
  r.err = std::move(p.err);
  return r;
}

// Every (step, loss) line of metrics.jsonl, in file order; loss kept as written.
std::vector<std::pair<int, std::string>> losses(const std::string& run_dir) {
  std::vector<std::pair<int, std::string>> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::string line;
  std::regex re(R"re("step": (\d+),.*"loss": ([^,}]+))re");
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_search(line, m, re)) out.emplace_back(std::stoi(m[1]), m[2]);
  return out;
}

// A tiny 2-rank data-parallel GPT: 12 steps, a checkpoint every 4.
std::string job_yaml(const std::string& runs, const std::string& extra = "") {
  return "name: ft\n"
         "nodes: {procs_per_node: 2, device: cpu, threads_per_proc: 1}\n"
         "model: {type: gpt, layers: 2, heads: 2, dim: 32, seq_len: 16, vocab: 64}\n"
         "data: {type: synthetic, batch_size: 8}\n"
         "train: {steps: 12, seed: 7, log_every: 1,\n"
         "        optimizer: {type: adamw, lr: 3.0e-3, weight_decay: 0.1, grad_clip: 1.0},\n"
         "        schedule: {warmup: 2, decay: cosine}}\n"
         "checkpoint: {every: 4, keep: 2, async: false}\n"
         "fault_tolerance: {max_restarts: 1, heartbeat_s: 0.2, hang_timeout_s: 2, "
         "term_grace_s: 2}\n"
         "logging: {dir: " +
         runs + ", console: rank0}\n" + extra;
}

const char* kDataParallel = "parallel: {data: 2}\n";

class FaultToleranceTest : public ::testing::Test {
 public:
  // Writes a spec (the job above plus `extra`) and returns its path.
  std::string spec(const std::string& extra, const std::string& file = "job.yaml") {
    std::string path = tmp_.path() + "/" + file;
    std::ofstream(path) << job_yaml(runs(), extra);
    return path;
  }
  std::string runs() const { return tmp_.path() + "/runs"; }
  // The only run folder (the tests start one run each, or resume it).
  std::string run_dir() const {
    std::vector<std::string> dirs;
    for (const auto& e : fs::directory_iterator(runs())) dirs.push_back(e.path().string());
    EXPECT_EQ(dirs.size(), 1u);
    return dirs.empty() ? "" : dirs[0];
  }

  // The uninterrupted run's losses, step -> text (computed once for the suite).
  static const std::map<int, std::string>& reference() {
    static std::map<int, std::string> ref = [] {
      TempDir tmp{"ptrain-ft-test"};
      std::string path = tmp.path() + "/ref.yaml";
      std::ofstream(path) << job_yaml(tmp.path() + "/runs", kDataParallel);
      Result r = run_ptrain({"run", path});
      EXPECT_EQ(r.code, 0) << r.out << r.err;
      std::map<int, std::string> out;
      for (const auto& e : fs::directory_iterator(tmp.path() + "/runs"))
        for (const auto& [step, loss] : losses(e.path().string())) out[step] = loss;
      return out;
    }();
    return ref;
  }

  // Every metrics line of the run equals the reference at its step, and every step is there.
  void expect_same_curve(const std::string& dir) {
    const auto& ref = reference();
    ASSERT_EQ(ref.size(), 12u);
    std::map<int, int> seen;
    for (const auto& [step, loss] : losses(dir)) {
      ++seen[step];
      ASSERT_TRUE(ref.count(step)) << "step " << step;
      EXPECT_EQ(loss, ref.at(step)) << "step " << step;
    }
    for (int s = 1; s <= 12; ++s) EXPECT_GE(seen[s], 1) << "step " << s << " missing";
  }

  TempDir tmp_{"ptrain-ft-test"};
};

}  // namespace

TEST_F(FaultToleranceTest, KilledWorkerRestartsAndTheLossCurveEqualsTheUninterruptedRun) {
  Result r = run_ptrain({"run", spec(kDataParallel)}, {"PTRAIN_TEST_FAIL_AT_STEP=1:6"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  std::string dir = run_dir();
  expect_same_curve(dir);
  // Steps 5 (and 6, when rank 0 logged it before the abort reached it) ran twice: the
  // checkpoint was at 4, so at most checkpoint.every steps are lost.
  auto all = losses(dir);
  EXPECT_GE(all.size(), 13u);
  EXPECT_LE(all.size(), 14u);
  std::string summary = read_file(dir + "/summary.json");
  EXPECT_TRUE(contains(summary, R"("restarts": [{"round": 1, "rank": 1, "reason": "was killed by)"))
      << summary;
  EXPECT_TRUE(contains(summary, R"("status": "succeeded")")) << summary;
  std::string launcher = read_file(dir + "/launcher.log");
  EXPECT_TRUE(contains(launcher, "restart 1/1: rank 1 was killed by signal SIGKILL")) << launcher;
  // The first report counted after the restart: step 5's, or step 6's of the failed round when
  // that report was still in flight as the restart began (it then names step 6, 0.02 s after the
  // failure; the launcher does not yet tell the rounds' reports apart).
  EXPECT_TRUE(contains(launcher, "training again at step 5") ||
              contains(launcher, "training again at step 6"))
      << launcher;
  std::string log0 = read_file(dir + "/rank-0.log");
  EXPECT_TRUE(contains(log0, "step-4.safetensors at step 4")) << log0;
  std::string log1 = read_file(dir + "/rank-1.log");
  EXPECT_TRUE(contains(log1, "killing after step 6")) << log1;
}

TEST_F(FaultToleranceTest, RestartedWorkersGetTheRestartCount) {
  std::string path = tmp_.path() + "/command.yaml";
  std::ofstream(path) << "name: ft\nnodes: {procs_per_node: 2}\nparallel: {data: 2}\n"
                      << "fault_tolerance: {max_restarts: 1}\n"
                      << "logging: {dir: " << runs() << ", console: all}\n"
                      << "command: [sh, -c, 'echo round=$TORCHELASTIC_RESTART_COUNT/"
                         "$PTRAIN_RESTART; [ $PTRAIN_RESTART = 1 ] || [ $RANK = 0 ] || exit 5']\n";
  Result r = run_ptrain({"run", path});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "[rank 1] round=0/0")) << r.out;
  EXPECT_TRUE(contains(r.out, "[rank 1] round=1/1")) << r.out;
  EXPECT_TRUE(contains(read_file(run_dir() + "/summary.json"), R"("reason": "exited with)"));
}

TEST_F(FaultToleranceTest, HungWorkerIsDetectedAndTheGroupRestarts) {
  Result r = run_ptrain({"run", spec(kDataParallel)}, {"PTRAIN_TEST_FAIL_AT_STEP=1:6:0:stop"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  std::string dir = run_dir();
  expect_same_curve(dir);
  std::string summary = read_file(dir + "/summary.json");
  EXPECT_TRUE(contains(summary, R"("rank": 1, "reason": "hung: )")) << summary;
}

TEST_F(FaultToleranceTest, WorkerKilledDuringACheckpointSaveLeavesThePreviousOneUsable) {
  // Rank 0 (the writer) dies while step-8's first temporary file is being written, on the
  // background thread of an asynchronous save (the other tests save synchronously so that they
  // know which step is on disk when a rank fails; step 4's save has finished before step 8's
  // starts, as at most one save is in flight).
  Result r = run_ptrain({"run", spec(kDataParallel), "--set", "checkpoint.async=true"},
                        {"PTRAIN_TEST_FAIL_AT_STEP=0:8:0:save"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  std::string dir = run_dir();
  std::string log0 = read_file(dir + "/rank-0.log");
  EXPECT_TRUE(contains(log0, "step-8.safetensors.tmp")) << log0;
  EXPECT_TRUE(contains(log0, "step-4.safetensors at step 4")) << log0;
  expect_same_curve(dir);
  // Steps 5..8 ran twice, and so did those of 9..12 that trained while the asynchronous save
  // of step 8 was being written (the last step waits for it).
  EXPECT_GE(losses(dir).size(), 16u);
  EXPECT_LE(losses(dir).size(), 20u);
}

TEST_F(FaultToleranceTest, FailureRightAfterARestartCountsTowardMaxRestarts) {
  // Round 0 dies after step 6; round 1 resumes at step 4 and dies before its first step.
  Result r = run_ptrain({"run", spec(kDataParallel)}, {"PTRAIN_TEST_FAIL_AT_STEP=1:6:0,1:4:1"});
  EXPECT_EQ(r.code, 137) << r.out << r.err;
  EXPECT_TRUE(contains(r.err,
                       "job failed after 1 restart(s) (fault_tolerance.max_restarts=1); 2 "
                       "failure(s)"))
      << r.err;
  EXPECT_TRUE(contains(r.err, "--- round 0 ---")) << r.err;
  EXPECT_TRUE(contains(r.err, "--- round 1 ---")) << r.err;
  EXPECT_EQ(count(r.err, "rank 1 on "), 2u) << r.err;
  std::string summary = read_file(run_dir() + "/summary.json");
  EXPECT_TRUE(contains(summary, R"("status": "failed")")) << summary;
  EXPECT_EQ(count(summary, R"("round": )"), 1u) << summary;
}

TEST_F(FaultToleranceTest, ResumeAfterAFailureFallsBackPastACorruptedNewestCheckpoint) {
  // No restarts: the job fails after step 10 with checkpoints at 4 and 8.
  Result first = run_ptrain({"run", spec(kDataParallel), "--set", "fault_tolerance.max_restarts=0"},
                            {"PTRAIN_TEST_FAIL_AT_STEP=1:10"});
  ASSERT_EQ(first.code, 137) << first.out << first.err;
  std::string dir = run_dir();
  std::string newest = dir + "/checkpoints/step-8.safetensors";
  ASSERT_TRUE(fs::exists(newest));
  {
    std::fstream f(newest, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-4, std::ios::end);
    f.write("\x13\x37\x13\x37", 4);
  }
  Result again = run_ptrain({"run", "--resume", dir});
  ASSERT_EQ(again.code, 0) << again.out << again.err;
  std::string log0 = read_file(dir + "/rank-0.log");
  EXPECT_TRUE(contains(log0, "step-8")) << log0;
  EXPECT_TRUE(contains(log0, "trying an older one")) << log0;
  EXPECT_TRUE(contains(log0, "step-4.safetensors at step 4")) << log0;
  expect_same_curve(dir);
  EXPECT_TRUE(contains(read_file(dir + "/launcher.log"), "resuming this run"));
}

TEST_F(FaultToleranceTest, ResumeContinuesAFinishedRunWithMoreSteps) {
  Result first = run_ptrain({"run", spec(kDataParallel), "--set", "train.steps=8"});
  ASSERT_EQ(first.code, 0) << first.out << first.err;
  std::string dir = run_dir();
  Result again = run_ptrain({"run", "--resume", dir, "--set", "train.steps=10"});
  ASSERT_EQ(again.code, 0) << again.out << again.err;
  EXPECT_TRUE(contains(read_file(dir + "/rank-0.log"), "step-8.safetensors at step 8"));
  std::vector<int> steps;
  for (const auto& [step, loss] : losses(dir)) steps.push_back(step);
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  EXPECT_TRUE(contains(read_file(dir + "/job.yaml"), "steps: 10"));
  EXPECT_TRUE(contains(read_file(dir + "/summary.json"), R"("steps": 10)"));
}

TEST_F(FaultToleranceTest, ResumeNeedsARunFolder) {
  Result r = run_ptrain({"run", "--resume", tmp_.path() + "/nope"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "no job.yaml")) << r.err;
}

// Runs the job with `parallel` uninterrupted, then again with rank `victim` killed after step 6,
// and compares every metrics line of the second run with the first. Returns false (and skips)
// when the trainer rejects the layout with `unavailable`.
void kill_and_compare(FaultToleranceTest& t, const std::string& parallel, int victim,
                      const std::string& unavailable) {
  Result ref = run_ptrain(
      {"run", t.spec(parallel, "ref.yaml"), "--set", "logging.dir=" + t.runs() + "/ref"});
  if (ref.code != 0 && !unavailable.empty() && contains(ref.out + ref.err, unavailable))
    FAIL() << "the trainer does not run this layout: " << unavailable;
  ASSERT_EQ(ref.code, 0) << ref.out << ref.err;
  Result r = run_ptrain({"run", t.spec(parallel), "--set", "logging.dir=" + t.runs() + "/ft"},
                        {fmt::format("PTRAIN_TEST_FAIL_AT_STEP={}:6", victim)});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  auto dir_in = [](const std::string& root) {
    for (const auto& e : fs::directory_iterator(root)) return e.path().string();
    return std::string();
  };
  std::map<int, std::string> expected;
  for (const auto& [step, loss] : losses(dir_in(t.runs() + "/ref"))) expected[step] = loss;
  ASSERT_EQ(expected.size(), 12u);
  auto got = losses(dir_in(t.runs() + "/ft"));
  EXPECT_EQ(got.size(), 14u);  // steps 5 and 6 twice
  for (const auto& [step, loss] : got) EXPECT_EQ(loss, expected[step]) << "step " << step;
  EXPECT_TRUE(contains(read_file(dir_in(t.runs() + "/ft") + "/summary.json"),
                       fmt::format(R"("restarts": [{{"round": 1, "rank": {}, )", victim)));
}

TEST_F(FaultToleranceTest, PipelineParallelKilledWorkerResumesWithTheSameCurve) {
  kill_and_compare(*this, "parallel: {data: 1, pipeline: 2, microbatches: 2}\n", 1,
                   "pipeline > 1 is not available");
}

TEST_F(FaultToleranceTest, ZeroOneKilledWorkerResumesWithTheSameCurve) {
  kill_and_compare(*this, "parallel: {data: 2, zero: 1}\n", 0, "");
}

TEST_F(FaultToleranceTest, TensorParallelKilledWorkerResumesWithTheSameCurve) {
  kill_and_compare(*this, "parallel: {data: 1, tensor: 2}\n", 1, "tensor > 1 is not available");
}

namespace {

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void corrupt_tail(const std::string& path) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(-4, std::ios::end);
  f.write("\x13\x37\x13\x37", 4);
}

}  // namespace

TEST_F(FaultToleranceTest, ResumeWithNoUsableCheckpointStopsAndOverwritesNothing) {
  Result first = run_ptrain({"run", spec(kDataParallel), "--set", "fault_tolerance.max_restarts=0"},
                            {"PTRAIN_TEST_FAIL_AT_STEP=1:10"});
  ASSERT_EQ(first.code, 137) << first.out << first.err;
  std::string dir = run_dir(), ck = dir + "/checkpoints";
  corrupt_tail(ck + "/step-4.safetensors");
  corrupt_tail(ck + "/step-8.safetensors");
  const std::string before4 = bytes_of(ck + "/step-4.safetensors");
  const std::string metrics = read_file(dir + "/metrics.jsonl");
  Result again = run_ptrain({"run", "--resume", dir});
  EXPECT_EQ(again.code, 2) << again.out << again.err;
  EXPECT_TRUE(contains(again.err, "no checkpoint in '" + ck + "' is usable")) << again.err;
  EXPECT_TRUE(contains(again.err, "step-4.safetensors")) << again.err;
  EXPECT_TRUE(contains(again.err, "step-8.safetensors")) << again.err;
  EXPECT_EQ(bytes_of(ck + "/step-4.safetensors"), before4);  // nothing overwritten
  EXPECT_EQ(read_file(dir + "/metrics.jsonl"), metrics);     // nothing trained
}

TEST_F(FaultToleranceTest, ACheckpointFolderServesOneJobAtATimeAndOnlyItsOwnSpec) {
  const std::string shared = tmp_.path() + "/shared-ckpt";
  // Job A holds the folder while it runs: job B is refused with A's name.
  ptrain::testing::PtrainProcess a({"run", spec(kDataParallel, "a.yaml"), "--set",
                                    "checkpoint.dir=" + shared, "--set", "train.steps=100000",
                                    "--set", "checkpoint.every=0"});
  ASSERT_TRUE(a.wait_for([&] { return contains(a.out, "step 2/"); }, Millis(60000)))
      << a.out << a.err;
  // One process: only rank 0 takes the lock, and a peer's echo must not race its exit code.
  Result b =
      run_ptrain({"run", spec("", "b.yaml"), "--set", "nodes.procs_per_node=1", "--set",
                  "checkpoint.dir=" + shared, "--set", "logging.dir=" + tmp_.path() + "/runs-b"});
  EXPECT_EQ(b.code, 2) << b.out << b.err;
  EXPECT_TRUE(contains(b.err, "checkpoint.dir '" + shared + "' is in use by another job (pid "))
      << b.err;
  ::kill(a.proc().pid(), SIGINT);
  EXPECT_EQ(a.finish(Millis(30000)), 130) << a.err;
  fs::remove_all(runs());
  // A finished job's checkpoints, and leftovers of an interrupted save beside them.
  Result done = run_ptrain({"run", spec(kDataParallel), "--set", "checkpoint.dir=" + shared});
  ASSERT_EQ(done.code, 0) << done.out << done.err;
  std::ofstream(shared + "/.step-16.safetensors.tmp-4242") << "partial";
  std::ofstream(shared + "/step-16.safetensors") << "no manifest";
  // Another job (other seed and lr) must not pick them up as its own.
  Result other = run_ptrain({"run", spec(kDataParallel), "--set", "checkpoint.dir=" + shared,
                             "--set", "train.seed=8", "--set", "train.optimizer.lr=1e-3", "--set",
                             "train.steps=14", "--set", "logging.dir=" + tmp_.path() + "/runs-c"});
  EXPECT_EQ(other.code, 2) << other.out << other.err;
  EXPECT_TRUE(contains(other.err, "step-12.json' was written by a job with another train section"))
      << other.err;
  EXPECT_FALSE(fs::exists(shared + "/.step-16.safetensors.tmp-4242"));  // swept at start-up
  EXPECT_FALSE(fs::exists(shared + "/step-16.safetensors"));
  EXPECT_TRUE(fs::exists(shared + "/step-12.safetensors"));
  // force loads it all the same; a .safetensors path names its checkpoint.
  Result forced =
      run_ptrain({"run", spec(kDataParallel), "--set", "train.seed=8", "--set", "train.steps=14",
                  "--set", "checkpoint.resume=" + shared + "/step-12.safetensors", "--set",
                  "logging.dir=" + tmp_.path() + "/runs-d"});
  EXPECT_EQ(forced.code, 2) << forced.err;  // a path is checked like auto
  Result force =
      run_ptrain({"run", spec(kDataParallel), "--set", "checkpoint.dir=" + shared, "--set",
                  "train.seed=8", "--set", "train.steps=14", "--set", "checkpoint.resume=force",
                  "--set", "logging.dir=" + tmp_.path() + "/runs-e"});
  EXPECT_EQ(force.code, 0) << force.out << force.err;
  Result by_file = run_ptrain({"run", spec(kDataParallel), "--set", "train.steps=14", "--set",
                               "checkpoint.resume=" + shared + "/step-12.safetensors", "--set",
                               "logging.dir=" + tmp_.path() + "/runs-f"});
  EXPECT_EQ(by_file.code, 0) << by_file.out << by_file.err;
  for (const auto& e : fs::directory_iterator(tmp_.path() + "/runs-f"))
    EXPECT_TRUE(contains(read_file(e.path().string() + "/rank-0.log"), "at step 12"));
}

namespace {

// data_mode: async: the parameter servers hold the state and write the checkpoints (every
// checkpoint.every server updates; two workers push once per step each, so 8 updates = 4 steps).
const char* kAsync =
    "parallel: {data: 2, data_mode: async, servers: 1, staleness: 0}\n"
    "checkpoint: {every: 8, keep: 2}\n";

// The job above as an async job (its checkpoint section replaced by kAsync's), written to `path`.
std::string async_spec(const std::string& path, const std::string& runs) {
  const std::string sync_checkpoint = "checkpoint: {every: 4, keep: 2, async: false}\n";
  std::string yaml = job_yaml(runs, kAsync);
  yaml.erase(yaml.find(sync_checkpoint), sync_checkpoint.size());
  // A pull waits up to hang_timeout_s for the slowest worker: room for a loaded machine.
  yaml.replace(yaml.find("hang_timeout_s: 2,"), 18, "hang_timeout_s: 20,");
  std::ofstream(path) << yaml;
  return path;
}

// The loss of the metrics line at `step`: its `nth` occurrence (a restarted round repeats steps).
double loss_at(const std::vector<std::pair<int, std::string>>& curve, int step, int nth = 1) {
  for (const auto& [s, loss] : curve)
    if (s == step && --nth == 0) return std::stod(loss);
  ADD_FAILURE() << "no metrics line " << nth << " for step " << step;
  return NAN;
}

}  // namespace

TEST_F(FaultToleranceTest, AsyncKilledWorkerRestartsFromTheServersCheckpoint) {
  std::string path = async_spec(tmp_.path() + "/async.yaml", runs());
  Result r =
      run_ptrain({"run", path, "--set", "train.steps=20"}, {"PTRAIN_TEST_FAIL_AT_STEP=1:10"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  std::string dir = run_dir();
  EXPECT_TRUE(contains(read_file(dir + "/launcher.log"), "restart 1/1"));
  // Round 1's server 0 resumed the newest checkpoint written before the kill (step 8: 16
  // updates; worker 1 never pushed step 11, so no checkpoint of step 10 or later could exist).
  std::string server_log = read_file(dir + "/server-0.log");
  EXPECT_TRUE(contains(server_log, "step-8.safetensors at step 8")) << server_log;
  EXPECT_TRUE(contains(read_file(dir + "/rank-0.log"), "at step 8"));
  auto curve = losses(dir);
  const double initial = loss_at(curve, 1), before = loss_at(curve, 9),
               after = loss_at(curve, 9, 2);  // step 9 again, in round 1
  std::printf("async restart: loss step 1 %.4f, step 9 before the kill %.4f, after resume %.4f\n",
              initial, before, after);
  // Where it was, not back at the initial weights (one batch's loss varies by ~0.1).
  EXPECT_LT(after, before + 0.5 * (initial - before));
  EXPECT_LT(std::abs(after - before), 0.15);
  EXPECT_EQ(curve.back().first, 20);
  EXPECT_LT(loss_at(curve, 20), before);
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-20.safetensors"));
}

TEST_F(FaultToleranceTest, AsyncResumeContinuesWithAnotherServerCountThenSynchronously) {
  std::string path = async_spec(tmp_.path() + "/async.yaml", runs());
  Result first = run_ptrain({"run", path, "--set", "train.steps=8"});
  ASSERT_EQ(first.code, 0) << first.out << first.err;
  std::string dir = run_dir();
  Result again = run_ptrain(
      {"run", "--resume", dir, "--set", "train.steps=12", "--set", "parallel.servers=2"});
  ASSERT_EQ(again.code, 0) << again.out << again.err;
  EXPECT_TRUE(contains(read_file(dir + "/server-1.log"), "step-8.safetensors at step 8"));
  auto curve = losses(dir);
  std::vector<int> steps;
  for (const auto& [step, loss] : curve) steps.push_back(step);
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  const double initial = loss_at(curve, 1), before = loss_at(curve, 8), after = loss_at(curve, 9);
  std::printf("async resume: loss step 1 %.4f, step 8 %.4f, step 9 after resume %.4f\n", initial,
              before, after);
  EXPECT_LT(after, before + 0.5 * (initial - before));
  EXPECT_LT(std::abs(after - before), 0.2);
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-12.safetensors"));
  // The same run goes on synchronously from the servers' checkpoint.
  Result sync = run_ptrain(
      {"run", "--resume", dir, "--set", "train.steps=14", "--set", "parallel.data_mode=sync"});
  ASSERT_EQ(sync.code, 0) << sync.out << sync.err;
  EXPECT_TRUE(contains(read_file(dir + "/rank-0.log"), "step-12.safetensors at step 12"));
  curve = losses(dir);
  ASSERT_EQ(curve.size(), 14u);
  EXPECT_EQ(curve.back().first, 14);
  EXPECT_LT(std::abs(loss_at(curve, 13) - loss_at(curve, 12)), 0.2);
}

TEST_F(FaultToleranceTest, AsyncJobRefusesTheCheckpointOfAnotherModel) {
  std::string shared = tmp_.path() + "/shared";
  Result sync = run_ptrain({"run", spec(kDataParallel), "--set", "checkpoint.dir=" + shared,
                            "--set", "train.steps=4", "--set", "model.dim=64"});
  ASSERT_EQ(sync.code, 0) << sync.out << sync.err;
  std::string path = async_spec(tmp_.path() + "/async.yaml", tmp_.path() + "/runs-b");
  Result r = run_ptrain({"run", path, "--set", "checkpoint.dir=" + shared});
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_TRUE(
      contains(r.out + r.err, "step-4.json' was written by a job with another model section"))
      << r.out << r.err;
  EXPECT_FALSE(contains(r.out + r.err, "restarting every worker")) << r.out << r.err;
}

TEST_F(FaultToleranceTest, AsyncServerKilledDuringACheckpointSaveLeavesThePreviousOneUsable) {
  // Parameter server 0 (rank 2, the writer) dies as step-8's first temporary file appears.
  std::string path = async_spec(tmp_.path() + "/async.yaml", runs());
  Result r = run_ptrain({"run", path}, {"PTRAIN_TEST_FAIL_AT_STEP=2:8:0:save"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  std::string dir = run_dir();
  std::string log = read_file(dir + "/server-0.log");
  EXPECT_TRUE(contains(log, "step-8.safetensors.tmp")) << log;  // swept by round 1
  EXPECT_TRUE(contains(log, "step-4.safetensors at step 4")) << log;
  EXPECT_TRUE(contains(read_file(dir + "/launcher.log"), "restart 1/1"));
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-12.safetensors"));
  EXPECT_EQ(losses(dir).back().first, 12);
}

// A local client without the job token attacks the coordinator of a restarting job: it floods it
// with connections that send nothing, more than the launcher's descriptor limit, and sends it
// eight 60 MiB Sets. The connection cap keeps descriptors for the restart (without it the
// workers could not reach the coordinator after the restart), the job's own connections get in
// past the silent ones, the oversized calls are refused on their headers (the launcher's peak RSS
// stays far below their 480 MiB), and the job finishes with the uninterrupted run's curve.
TEST_F(FaultToleranceTest, AJobRestartsAndFinishesWhileAClientWithoutTheTokenAttacksIt) {
  // A free port for the coordinator, so that the flood knows where to go.
  int probe = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(probe, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(::bind(probe, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::getsockname(probe, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const int port = ntohs(a.sin_port);
  ::close(probe);

  // The launcher gets 1,024 descriptors (its soft limit, inherited); the flood may use more.
  rlimit lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  ASSERT_GE(lim.rlim_max, rlim_t{5000}) << "the test needs a descriptor limit of 5,000";
  const rlimit launcher_limit{1024, lim.rlim_max};
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &launcher_limit), 0);
  ptrain::testing::PtrainProcess job(
      {"run",
       spec(std::string(kDataParallel) + "rendezvous: {port: " + std::to_string(port) + "}\n")},
      // Rank 1 hangs after step 6: the first round lasts the hang timeout (2 s) longer, time for
      // the flood to reach the cap before the restart.
      {"PTRAIN_TEST_FAIL_AT_STEP=1:6:0:stop"});
  const rlimit flood_limit{lim.rlim_max, lim.rlim_max};
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &flood_limit), 0);

  // Eight 60 MiB Sets at once without the token or with a wrong one, each on a connection of its
  // own, as soon as the coordinator listens.
  std::vector<std::thread> big_calls;
  std::vector<grpc::StatusCode> big_codes(8, grpc::StatusCode::OK);
  auto send_big_calls = [&] {
    for (int i = 0; i < 8; ++i)
      big_calls.emplace_back([&, i] {
        grpc::ChannelArguments args;
        args.SetMaxSendMessageSize(100 << 20);
        args.SetInt("ptrain.attacker", i);  // a connection of its own
        auto stub = ptrain::proto::Coordinator::NewStub(
            grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                      grpc::experimental::LocalCredentials(LOCAL_TCP), args));
        ptrain::proto::SetRequest req;
        req.set_key("intruder");
        req.set_value(std::string(size_t{60} << 20, 'x'));
        grpc::ClientContext ctx;
        if (i % 2) ctx.AddMetadata(rendezvous::kTokenMetadataKey, rendezvous::make_token());
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
        ptrain::proto::Empty resp;
        big_codes[size_t(i)] = stub->Set(&ctx, req, &resp).error_code();
      });
  };

  // As soon as the coordinator listens: the big calls, then 4,000 connections at once, held until
  // the job ends.
  auto connect_one = [&]() -> int {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = htons(static_cast<uint16_t>(port));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
      ::close(fd);  // not listening yet
      return -1;
    }
    return fd;
  };
  std::vector<int> flood;
  int code = -1;
  int64_t peak_rss = -1;
  Deadline d(Millis(120000));
  while (!d.expired()) {
    job.pump(flood.empty() ? Millis(2) : Millis(50));
    if (auto st = job.proc().try_wait()) {
      code = st->shell_code();
      break;
    }
    peak_rss = std::max(peak_rss, ptrain::testing::peak_rss_bytes(job.proc().pid()));
    if (!flood.empty()) continue;
    int first = connect_one();
    if (first < 0) continue;
    flood.push_back(first);
    // Before the flood fills the connection cap, so that they reach the coordinator.
    send_big_calls();
    for (auto& t : big_calls) t.join();
    while (flood.size() < 4000) {
      int fd = connect_one();
      if (fd < 0) break;
      flood.push_back(fd);
    }
  }
  if (code == -1) code = job.finish(Millis(1000));
  for (Deadline drain(Millis(10000));
       !drain.expired() && (job.proc().stdout_fd() >= 0 || job.proc().stderr_fd() >= 0);)
    job.pump(Millis(100));
  const size_t opened = flood.size();
  for (int fd : flood) ::close(fd);
  ::setrlimit(RLIMIT_NOFILE, &lim);
  std::printf("connections opened: %zu; launcher peak RSS %lld MiB\n", opened,
              static_cast<long long>(peak_rss >> 20));
  ASSERT_EQ(code, 0) << "connections opened: " << opened << "\n" << job.out << job.err;
  EXPECT_GT(opened, 1500u) << "the flood did not pass the launcher's descriptor limit";
  ASSERT_EQ(big_calls.size(), 8u);
  // Refused on their headers while the job ran (not merely cut off when it ended).
  for (auto c : big_codes) EXPECT_EQ(c, grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_GT(peak_rss, 0);
  EXPECT_LT(peak_rss, int64_t{256} << 20)
      << "the launcher's peak RSS reached " << (peak_rss >> 20) << " MiB";
  std::string dir = run_dir();
  expect_same_curve(dir);
  std::string summary = read_file(dir + "/summary.json");
  EXPECT_TRUE(contains(summary, R"("restarts": [{"round": 1, "rank": 1, )")) << summary;
  EXPECT_TRUE(contains(summary, R"("status": "succeeded")")) << summary;
  std::string launcher = read_file(dir + "/launcher.log");
  // The cap was reached in the first round, before the restart.
  const size_t capped =
      launcher.find("open connections on port " + std::to_string(port) + ": refused");
  ASSERT_NE(capped, std::string::npos) << launcher;
  EXPECT_LT(capped, launcher.find("restart 1/1")) << launcher;
}
