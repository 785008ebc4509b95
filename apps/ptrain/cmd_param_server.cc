// `ptrain param-server` (internal): parameter server PTRAIN_SERVER_INDEX of a data_mode: async
// job, started by the launcher next to the workers (RANK = world size + index). Joins the
// coordinator with role "server", advertises its address in the store, serves its shard until
// every worker is done or the job is aborted.
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>

#include "command.h"
#include "ptrain/core/env.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/client.h"
#include "ptrain/spec/spec.h"
#include "ptrain/train/async.h"

namespace ptrain::cli {
namespace {

// SIGTERM/SIGINT (the launcher stopping the job): once serving, the server stops at its next
// poll, so that server 0 finishes the checkpoint it is writing; before that it just ends.
volatile std::sig_atomic_t g_terminate = 0;
volatile std::sig_atomic_t g_serving = 0;

extern "C" void on_terminate(int sig) {
  if (!g_serving) ::_exit(128 + sig);
  g_terminate = 1;
}

std::string required(const char* name) {
  auto v = env_get(name);
  if (!v || v->empty())
    throw ConfigError(fmt::format("{} is not set", name),
                      "`ptrain param-server` is started by `ptrain run`, not by hand");
  return *v;
}

int serve() {
  std::string coordinator = required("PTRAIN_COORDINATOR");
  std::string token = required("PTRAIN_TOKEN");
  std::string run_dir = required("PTRAIN_RUN_DIR");
  int index = int(env_int("PTRAIN_SERVER_INDEX", -1));
  int rank = int(env_int("RANK", -1));
  const int round = int(env_int("PTRAIN_RESTART", 0));  // the rendezvous round (restarts)
  spec::JobSpec spec = spec::load_file(run_dir + "/job.yaml");
  if (index < 0 || index >= spec.parallel.servers || rank != spec.world_size() + index)
    throw ConfigError(
        fmt::format("PTRAIN_SERVER_INDEX={} / RANK={} is not a server of this job "
                    "({} workers, {} servers)",
                    index, rank, spec.world_size(), spec.parallel.servers));
  Millis rdzv(static_cast<int64_t>(spec.rendezvous.timeout_s * 1000));
  rendezvous::CoordinatorClient client(coordinator, token, rdzv);
  rendezvous::JoinRequestView req;
  req.rank = rank;
  req.role = "server";
  req.node = env_or("PTRAIN_NODE", "localhost");
  req.pid = ::getpid();
  req.round = round;
  req.timeout = rdzv + Millis(10000);
  client.join(req);
  std::atomic<bool> aborted{false};
  client.watch(rank, [&](const rendezvous::WatchEventView& ev) {
    if (ev.kind == rendezvous::WatchEventView::Kind::Abort) {
      std::fprintf(stderr, "ptrain param-server: server %d: job aborted: %s\n", index,
                   ev.reason.c_str());
      aborted = true;
    }
  });
  const double every = spec.fault_tolerance.heartbeat_s;
  double last_beat = mono_seconds();
  train::ServerContext sc;
  sc.index = index;
  sc.round = round;
  sc.run_dir = run_dir;
  sc.store = client.store();
  sc.token = token;
  // `ptrain launch`: an address of this host that the other hosts reach (its agent sets it).
  sc.bind = env_or("PTRAIN_SERVER_BIND", "127.0.0.1");
  if (spec.parallel.server_port > 0) sc.port = spec.parallel.server_port + index;
  sc.stop_requested = [&] {
    g_serving = 1;  // polled only from the serving loop on
    if (g_terminate) return true;
    if (mono_seconds() - last_beat >= every) {
      last_beat = mono_seconds();
      try {
        if (client.heartbeat(rank, 0, round).abort) aborted = true;
      } catch (const Error& e) {
        std::fprintf(stderr, "ptrain param-server: warning: heartbeat failed: %s\n", e.what());
      }
    }
    return aborted.load();
  };
  int code = kExitRemote;
  try {
    code = train::run_param_server(spec, sc) == 0 ? kExitOk : kExitRemote;
  } catch (const Error& e) {
    client.leave(rank, e.exit_code(), e.what());
    throw;
  }
  client.leave(rank, code, code == kExitOk ? "done" : "aborted");
  return code;
}

Action setup_param_server(CLI::App& /*sub*/) {
  return [] {
    ::signal(SIGPIPE, SIG_IGN);  // a worker that died is its failure, not this server's
    struct sigaction sa {};
    sa.sa_handler = on_terminate;
    ::sigemptyset(&sa.sa_mask);
    ::sigaction(SIGTERM, &sa, nullptr);
    ::sigaction(SIGINT, &sa, nullptr);
    return serve();
  };
}

}  // namespace

PTRAIN_COMMAND({"param-server",
                "Serve one parameter shard of an async job (started by the "
                "launcher)",
                true, 91, setup_param_server})

}  // namespace ptrain::cli
