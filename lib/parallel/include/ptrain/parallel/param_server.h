// Asynchronous data parallelism: a parameter server owns one contiguous shard of the flat
// parameters and its optimizer state and serves them over gRPC (Push gradients, Pull parameters)
// with a stale-synchronous bound; ParamClient is the worker's side of one server.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ptrain/core/time.h"
#include "ptrain/optim/optimizer.h"

namespace ptrain::parallel {

// A copy of one server's state after `version` updates, for a checkpoint. From another server
// (SaveShard) it arrives piece by piece: one of `params` or `state` filled per call.
struct ShardSnapshot {
  int index = 0;  // the server
  int64_t version = 0;
  int64_t optimizer_steps = 0;
  size_t begin = 0;                                               // shard start, flat layout
  std::vector<float> params;                                      // [shard size]
  std::vector<std::pair<std::string, std::vector<float>>> state;  // optimizer states [shard]
  std::vector<float> buffers;                                     // server 0: the model's buffers
  int pieces = 0;  // received pieces: how many the sender sends for this version
};

struct ParamServerOptions {
  int index = 0;    // which server (shard) this is
  int workers = 1;  // data-parallel ranks that push
  std::string bind = "127.0.0.1";
  int port = 0;       // 0 = kernel-chosen (parallel.server_port + index otherwise)
  std::string token;  // the job token every RPC must carry ("" = none required)
  // Longest a Pull may wait for the slowest worker (the client asks for less).
  Millis max_wait{std::chrono::minutes(10)};
  // A resumed job: updates already applied, and the steps every worker has pushed (the step the
  // workers continue from), so that version and clocks go on from the checkpoint.
  int64_t start_version = 0;
  int64_t start_clock = 0;
  // Checkpoints: after every `snapshot_every`-th update (0 = never) the server copies its state
  // under its lock and hands the copy to on_snapshot outside it, in the pushing RPC's thread
  // (that worker's push waits while it runs).
  int64_t snapshot_every = 0;
  std::function<void(ShardSnapshot)> on_snapshot;
  // Server 0: a piece of another server's snapshot (SaveShard). Unset: SaveShard is refused.
  std::function<void(ShardSnapshot piece)> on_piece;
};

// Per-worker clocks: clock[w] = steps worker w has pushed. A Pull with min_clock m returns once
// min_w clock[w] >= m, so a worker at step c asking for m = c - s never reads parameters that
// miss more than s steps of any worker (SSP). The optimizer runs one update per push.
class ParamServer {
 public:
  // `optimizer` covers shard [optimizer->shard().begin, end) of the flat layout; `init` holds the
  // shard's initial parameters [shard.size()]. `buffers`: the model's initial buffers (BatchNorm
  // statistics), which one server (index 0) keeps: a push adds its buffer delta, a pull returns
  // them, so every worker's statistics updates reach every other worker like its gradients.
  ParamServer(ParamServerOptions options, std::unique_ptr<optim::Optimizer> optimizer,
              std::vector<float> init, std::vector<float> buffers = {});
  ~ParamServer();  // stops serving
  ParamServer(const ParamServer&) = delete;
  ParamServer& operator=(const ParamServer&) = delete;

  // Binds a kernel-chosen port on options.bind. Throws IoError when it cannot.
  void start();
  std::string address() const;  // host:port after start()
  // True once every worker sent its last push (and the snapshots it triggered were handed on),
  // waiting up to `timeout`.
  bool wait_done(Millis timeout);
  void shutdown();  // stops the gRPC server; blocked Pulls end with an error

  int64_t version() const;         // updates applied
  ShardSnapshot snapshot() const;  // the state now (a copy)
  double updates_per_s() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// What a Pull returned.
struct PullResult {
  int64_t version = 0;
  int64_t min_clock = 0;
};

// The worker's connection to one server. Errors name the server: RemoteError when it cannot be
// reached or fails, TimeoutError when a Pull waits longer than `wait`.
class ParamClient {
 public:
  ParamClient(int index, std::string address, std::string token,
              Millis rpc_deadline = kDefaultRpcDeadline);
  ~ParamClient();
  ParamClient(const ParamClient&) = delete;
  ParamClient& operator=(const ParamClient&) = delete;

  // Sends grads [n] of step `step` (and to the buffers' server, buffer_delta [nbuf]); returns
  // the server's update rate (updates/s).
  double push(int worker, int64_t step, float lr, const float* grads, size_t n, bool last,
              const float* buffer_delta = nullptr, size_t nbuf = 0);
  // Reads the shard's parameters into out [n] once every worker pushed >= min_clock steps, and
  // from the buffers' server the buffers into buffers [nbuf].
  // `last`: the worker leaves after this pull (instead of after its last push).
  PullResult pull(int worker, int64_t min_clock, float* out, size_t n, Millis wait,
                  float* buffers = nullptr, size_t nbuf = 0, bool last = false);

  // Sends a snapshot of this client's own server (`snapshot.index`) to server 0, piece by
  // piece (the parameters, then each optimizer state), so no message exceeds one shard.
  void send_snapshot(const ShardSnapshot& snapshot);

  const std::string& address() const { return address_; }
  int index() const { return index_; }

 private:
  struct Impl;
  int index_;
  std::string address_;
  std::unique_ptr<Impl> impl_;
};

// Store key under which server `index` advertises its address in rendezvous round `round` (a
// restarted round's workers must not find the previous round's servers).
std::string param_server_key(int index, int round = 0);

}  // namespace ptrain::parallel
