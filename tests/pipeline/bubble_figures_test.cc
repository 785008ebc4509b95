// Figures for the pipeline note: the measured bubble of every stage against the ideal
// (p - 1) / (m + p - 1), and the peak stashed microbatches per stage, for p = 2, 4 and
// m = 4, 8, 16 with both schedules. Stages run as threads over Gloo on loopback; the table is
// printed, and only the stash (not a timing) is asserted.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <thread>

#include "ptrain/core/env.h"
#include "ptrain/parallel/pipeline.h"
#include "ptrain/rendezvous/memory_store.h"
#include "ptrain/train/setup.h"
#include "support/rank_threads.h"

namespace ptrain {
namespace {

struct StageFigures {
  double bubble = 0;  // measured: idle / (compute + idle)
  int peak_stash = 0;
  double forward_s = 0, backward_s = 0;  // mean per microbatch
};

// Runs `steps` training steps of a balanced GPT pipeline; returns each stage's figures over the
// steps after the first (which warms up allocations).
std::vector<StageFigures> measure(int p, int m, parallel::ScheduleKind kind, int steps) {
  auto spec = testing::tiny_gpt_spec(steps);
  spec.model.set("layers", 8).set("dim", 128).set("seq_len", 32).set("vocab", 64);
  spec.parallel.pipeline = p;
  spec.parallel.microbatches = m;
  const int rows = 2, T = spec.model.i("seq_len");
  auto store = std::make_shared<rendezvous::MemoryStore>();
  std::vector<StageFigures> out(static_cast<size_t>(p));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(p));
  std::vector<std::thread> threads;
  for (int s = 0; s < p; ++s)
    threads.emplace_back([&, s] {
      try {
        comm::ProcessMesh mesh(s, p, {1, 1, p},
                               comm::make_comm_factory(comm::Backend::kGloo, store, {}));
        auto model = train::make_model(spec, tensor::Device::kCpu, s, 0);
        parallel::PipelineOptions po;
        po.schedule = kind;
        po.microbatches = m;
        po.rows = rows;
        po.seq = T;
        po.activation_elems = size_t(rows) * T * spec.model.i("dim");
        parallel::PipelineExecutor exec(*model, mesh.pp(), po);
        std::vector<int32_t> tokens(size_t(rows) * T), targets(tokens.size());
        for (size_t i = 0; i < tokens.size(); ++i) {
          tokens[i] = int32_t(i * 7 % 64);
          targets[i] = int32_t((i * 7 + 1) % 64);
        }
        auto batch = [&](int) {
          nn::Batch b;
          b.B = rows;
          b.T = T;
          b.add("tokens", tensor::DType::kI32, {rows, T}, tokens.data());
          b.add("targets", tensor::DType::kI32, {rows, T}, targets.data());
          return b;
        };
        parallel::PipelineStats total;
        for (int step = 0; step < steps; ++step) {
          model->zero_grad();
          exec.train_step(batch, 1.0f / float(rows * T * m));
          mesh.pp().barrier();  // every step starts together, like the optimizer step's sync
          if (step == 0) continue;
          total.compute_s += exec.last_stats().compute_s;
          total.forward_s += exec.last_stats().forward_s;
          total.idle_s += exec.last_stats().idle_s;
          total.peak_stash = std::max(total.peak_stash, exec.last_stats().peak_stash);
        }
        const double ops = double(m) * (steps - 1);
        out[size_t(s)] = {total.bubble(), total.peak_stash, total.forward_s / ops,
                          (total.compute_s - total.forward_s) / ops};
      } catch (...) {
        errors[size_t(s)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

// "measured" is the wall-clock idle fraction of each stage; on a machine with fewer free cores
// than stages it includes waiting for a core. "replayed" runs the schedule on the measured mean
// forward/backward times of each stage as if every stage had its own device.
TEST(PipelineFigures, BubbleAgainstTheoryAndStashPerStage) {
  tensor::set_cpu_threads(1);
  std::printf(
      "schedule  p   m  ideal   measured bubble per stage      replayed per stage"
      "             peak stash\n");
  for (auto kind : {parallel::ScheduleKind::kGpipe, parallel::ScheduleKind::kOneFOneB})
    for (int p : {2, 4})
      for (int m : {4, 8, 16}) {
        auto figs = measure(p, m, kind, 4);
        std::vector<double> fwd, bwd;
        std::string bubbles, replayed, stashes;
        for (int s = 0; s < p; ++s) {
          const auto& f = figs[size_t(s)];
          fwd.push_back(f.forward_s);
          bwd.push_back(f.backward_s);
          bubbles += fmt::format(" {:5.1f}%", 100 * f.bubble);
          stashes += fmt::format(" {:2d}", f.peak_stash);
          int expected = kind == parallel::ScheduleKind::kGpipe ? m : std::min(p - s, m);
          EXPECT_EQ(f.peak_stash, expected) << "stage " << s;
        }
        for (double b : parallel::replay_bubble(kind, m, fwd, bwd))
          replayed += fmt::format(" {:5.1f}%", 100 * b);
        std::printf("%-8s %2d %3d %5.1f%%  %-30s %-30s%s\n", parallel::to_string(kind), p, m,
                    100 * parallel::theoretical_bubble(p, m), bubbles.c_str(), replayed.c_str(),
                    stashes.c_str());
      }
  std::fflush(stdout);
}

}  // namespace
}  // namespace ptrain
