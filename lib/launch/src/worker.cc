#include "ptrain/launch/worker.h"

#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <thread>

#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/spec/spec.h"

namespace ptrain::launch {

namespace {

std::string required_env(const char* name) {
  auto v = env_get(name);
  if (!v || v->empty())
    throw ConfigError(fmt::format("{} is not set", name),
                      "`ptrain worker` is started by `ptrain run` or `ptrain launch`, not by hand");
  return *v;
}

Millis seconds(double s) {
  return Millis(static_cast<int64_t>(s * 1000));
}

// Heartbeats every heartbeat_s from its own thread until stopped; an abort answer sets `abort`.
class Heartbeat {
 public:
  Heartbeat(rendezvous::CoordinatorClient& client, int rank, int round, Millis every,
            std::function<void(const std::string&)> on_abort)
      : client_(client), rank_(rank), round_(round), every_(every), on_abort_(std::move(on_abort)) {
    thread_ = std::thread([this] { loop(); });
  }
  ~Heartbeat() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void set_step(int64_t step) { step_.store(step); }

 private:
  void loop() {
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, every_, [this] { return stop_; })) {
      lock.unlock();
      try {
        auto reply = client_.heartbeat(rank_, step_.load(), round_);
        if (reply.abort) on_abort_(reply.reason);
      } catch (const Error& e) {
        // The launcher notices a dead coordinator on its own; keep trying until stopped.
        std::fprintf(stderr, "ptrain worker: warning: heartbeat failed: %s\n", e.what());
      }
      lock.lock();
    }
  }
  rendezvous::CoordinatorClient& client_;
  int rank_, round_;
  Millis every_;
  std::function<void(const std::string&)> on_abort_;
  std::atomic<int64_t> step_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace

WorkerEnv WorkerEnv::from_environment() {
  WorkerEnv e;
  e.coordinator = required_env("PTRAIN_COORDINATOR");
  e.token = required_env("PTRAIN_TOKEN");
  e.run_dir = required_env("PTRAIN_RUN_DIR");
  e.node = env_or("PTRAIN_NODE", "localhost");
  e.rank = static_cast<int>(env_int("RANK", -1));
  e.world_size = static_cast<int>(env_int("WORLD_SIZE", -1));
  if (e.rank < 0 || e.world_size < 1 || e.rank >= e.world_size)
    throw ConfigError(fmt::format("RANK={} / WORLD_SIZE={} is not a valid rank assignment", e.rank,
                                  e.world_size));
  e.local_rank = static_cast<int>(env_int("LOCAL_RANK", 0));
  e.node_rank = static_cast<int>(env_int("NODE_RANK", 0));
  e.round = static_cast<int>(env_int("TORCHELASTIC_RESTART_COUNT", 0));
  return e;
}

int worker_main(const WorkerOptions& options) {
  WorkerEnv env = WorkerEnv::from_environment();
  // The launcher wrote the resolved spec before starting us; timeouts come from it.
  std::string job_yaml = env.run_dir + "/job.yaml";
  spec::JobSpec spec = spec::load_file(job_yaml);

  Millis rdzv_timeout = seconds(spec.rendezvous.timeout_s);
  rendezvous::CoordinatorClient client(env.coordinator, env.token, rdzv_timeout);

  std::atomic<bool> aborted{false};
  std::mutex abort_mu;
  std::string abort_reason;
  auto on_abort = [&](const std::string& reason) {
    if (aborted.exchange(true)) return;
    {
      std::lock_guard lock(abort_mu);
      abort_reason = reason;
    }
    std::fprintf(stderr, "ptrain worker: rank %d: job aborted: %s\n", env.rank, reason.c_str());
    // The trainer gets a moment to return; then the process ends by itself, so an abort never
    // waits on a trainer stuck in a collective with a dead peer.
    Millis grace = options.abort_grace;
    std::thread([grace] {
      std::this_thread::sleep_for(grace);
      std::fflush(nullptr);
      std::_Exit(kExitRemote);
    }).detach();
  };

  rendezvous::JoinRequestView req;
  req.rank = env.rank;
  req.node = env.node;
  req.node_rank = env.node_rank;
  req.local_rank = env.local_rank;
  req.pid = ::getpid();
  req.round = env.round;
  req.timeout = rdzv_timeout + Millis(10000);
  rendezvous::JoinResult joined = client.join(req);
  std::fprintf(stderr, "ptrain worker: rank %d/%d joined on %s (dp %d, tp %d, pp %d), run %s\n",
               joined.rank, joined.world_size, env.node.c_str(), joined.coords.dp, joined.coords.tp,
               joined.coords.pp, joined.run_id.c_str());

  client.watch(env.rank, [&](const rendezvous::WatchEventView& ev) {
    if (ev.kind == rendezvous::WatchEventView::Kind::Abort) on_abort(ev.reason);
  });
  Heartbeat heartbeat(client, env.rank, env.round, seconds(spec.fault_tolerance.heartbeat_s),
                      on_abort);

  int code = kExitOk;
  std::string reason = "done";
  try {
    if (spec.train.steps > 0 && !spec.launcher_only() && !options.trainer)
      throw ConfigError(
          fmt::format("train.steps is {} but this ptrain has no training engine built in",
                      spec.train.steps),
          "set train.steps: 0 to check the launch path, or run your own program with `command:`");
    // Everyone is in: meet once more so no rank starts work (or exits) before all are ready.
    client.barrier(fmt::format("ptrain/start/{}", env.round), env.rank, joined.world_size,
                   rdzv_timeout);
    if (spec.train.steps > 0 && options.trainer) {
      WorkerContext ctx{spec,
                        joined,
                        client,
                        client.store(),
                        [&] { return aborted.load(); },
                        [&](int64_t step) { heartbeat.set_step(step); },
                        [&](const std::string& json) { client.report(env.rank, json); }};
      code = options.trainer(ctx);
      if (aborted) {
        std::lock_guard lock(abort_mu);
        code = code ? code : kExitRemote;
        reason = "aborted: " + abort_reason;
      }
    }
  } catch (const Error& e) {
    code = e.exit_code();
    reason = e.what();
    try {
      client.leave(env.rank, code, reason);
    } catch (const Error&) {
    }
    throw;
  }
  try {
    client.leave(env.rank, code, reason);
  } catch (const Error& e) {
    // The work is done and the exit code says how it ended; the agent reports that exit. A
    // Leave lost on the way (a busy relay ending its calls) costs only the coordinator's line.
    if (code != kExitOk) throw;
    std::fprintf(stderr, "ptrain worker: warning: rank %d finished, but its Leave failed: %s\n",
                 env.rank, e.what());
  }
  return code;
}

}  // namespace ptrain::launch
