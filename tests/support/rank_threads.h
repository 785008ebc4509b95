// Test harness: runs the training loop on N ranks as threads of this process, over one
// in-memory Store and the backend `parallel.comm` picks on CPU (auto: shm, all ranks share this
// host; gloo: Gloo on loopback), and returns each rank's result. Used by the
// equivalence tests of every parallel strategy (the curve of a mesh equals one process's).
#pragma once

#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "ptrain/comm/mesh.h"
#include "ptrain/rendezvous/memory_store.h"
#include "ptrain/spec/job_spec.h"
#include "ptrain/train/trainer.h"

namespace ptrain::testing {

struct RankRun {
  train::TrainResult result;
  std::vector<std::string> reports;  // rank 0's metrics lines
};

// Runs `spec` on dp*tp*pp ranks as threads (one process when the mesh has one rank). Rethrows
// the first rank's exception after every thread ended.
inline std::vector<RankRun> run_ranks(const spec::JobSpec& spec, Millis timeout = Millis(60000)) {
  comm::MeshShape shape{spec.parallel.data, spec.parallel.tensor, spec.parallel.pipeline};
  const int world = shape.world();
  std::vector<RankRun> runs(world);
  if (world == 1) {
    train::TrainContext ctx;
    ctx.report = [&](const std::string& j) { runs[0].reports.push_back(j); };
    ctx.log = [](const std::string&) {};
    runs[0].result = train::run_training(spec, ctx);
    return runs;
  }
  auto store = std::make_shared<rendezvous::MemoryStore>();
  std::vector<std::exception_ptr> errors(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        comm::BackendOptions bo;
        bo.comm.timeout = timeout;
        const auto backend = comm::choose_backend(spec.parallel.comm, tensor::Device::kCpu, 1);
        comm::ProcessMesh mesh(r, world, shape, comm::make_comm_factory(backend, store, bo));
        train::TrainContext ctx;
        ctx.rank = r;
        ctx.mesh = &mesh;
        ctx.report = [&runs, r](const std::string& j) { runs[r].reports.push_back(j); };
        ctx.log = [](const std::string&) {};
        runs[r].result = train::run_training(spec, ctx);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return runs;
}

// A tiny GPT job on synthetic data for equivalence tests (fp32, deterministic).
inline spec::JobSpec tiny_gpt_spec(int steps = 20) {
  spec::JobSpec s;
  s.name = "tiny";
  s.nodes.device = "cpu";
  s.nodes.threads_per_proc = 1;
  s.model.type = "gpt";
  s.model.set("layers", 4).set("heads", 4).set("dim", 32).set("seq_len", 16).set("vocab", 64);
  s.data.type = "synthetic";
  s.data.batch_size = 8;
  s.train.steps = steps;
  s.train.seed = 7;
  s.train.log_every = 1;
  s.train.optimizer.type = "adamw";
  s.train.optimizer.lr = 3e-3;
  s.train.optimizer.weight_decay = 0.1;
  s.train.optimizer.grad_clip = 1.0;
  s.checkpoint.resume = "never";
  return s;
}

}  // namespace ptrain::testing
