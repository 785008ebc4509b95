#include "ptrain/launch/agent.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "ptrain/launch/group_watchdog.h"
#include "ptrain/launch/run_dir.h"
#include "ptrain/rendezvous/grpc_store.h"
#include "ptrain/rendezvous/node_relay.h"

extern char** environ;

namespace ptrain::launch {

namespace {
constexpr size_t kMaxLine = 64 * 1024;  // longer lines are split: a worker cannot exhaust memory
}

struct Agent::Worker {
  int rank = 0;
  int local_rank = 0;
  ChildProcess proc;
  int log_fd = -1;
  std::string out_pending, err_pending;
  bool reported = false;
  ~Worker() {
    if (log_fd >= 0) ::close(log_fd);
  }
};

Agent::Agent(AgentOptions options)
    : options_(std::move(options)), watchdog_(std::make_unique<GroupWatchdog>()) {}

Agent::~Agent() {
  for (auto& w : workers_) w->proc.signal_group(SIGKILL);
  workers_.clear();  // ChildProcess reaps
  relay_.reset();
}

std::string Agent::log_path(int rank) const {
  if (rank >= options_.world_size)
    return options_.run_dir + "/" + fmt::format("server-{}.log", rank - options_.world_size);
  return options_.run_dir + "/" + fmt::format("rank-{}.log", rank);
}

std::vector<int> Agent::server_list() const {
  if (!options_.server_indices.empty()) return options_.server_indices;
  std::vector<int> out;
  if (options_.node_rank == 0)
    for (int i = 0; i < options_.servers; ++i) out.push_back(i);
  return out;
}

std::vector<std::string> Agent::server_env(int index, int round) const {
  std::vector<std::string> env = worker_env(0, round);
  const auto list = server_list();
  const auto pos = std::find(list.begin(), list.end(), index) - list.begin();
  for (auto& kv : env) {
    std::string key = kv.substr(0, kv.find('='));
    if (key == "RANK" || key == "ROLE_RANK")
      kv = fmt::format("{}={}", key, options_.world_size + index);
    if (key == "LOCAL_RANK") kv = fmt::format("{}={}", key, options_.local_world_size + pos);
    if (key == "OMP_NUM_THREADS") kv = key + "=1";
  }
  env.push_back(fmt::format("PTRAIN_SERVER_INDEX={}", index));
  if (!options_.server_bind.empty()) env.push_back("PTRAIN_SERVER_BIND=" + options_.server_bind);
  // Parameter servers are not local ranks of the node: they join the coordinator themselves.
  for (auto& kv : env)
    if (kv.rfind("PTRAIN_COORDINATOR=", 0) == 0) kv = "PTRAIN_COORDINATOR=" + options_.coordinator;
  return env;
}

std::vector<std::string> Agent::worker_env(int local_rank, int round) const {
  const auto& o = options_;
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    std::string kv(*e);
    size_t eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  int rank = o.first_rank + local_rank;
  env["PTRAIN_COORDINATOR"] = o.node_relay_heartbeat.count() > 0
                                  ? "unix:" + rendezvous::relay_socket_path(o.run_dir, o.node_rank)
                                  : o.coordinator;
  env["PTRAIN_TOKEN"] = o.token;
  env["PTRAIN_RUN_DIR"] = o.run_dir;
  env["PTRAIN_NODE"] = o.node;
  env["RANK"] = std::to_string(rank);
  env["LOCAL_RANK"] = std::to_string(local_rank);
  env["WORLD_SIZE"] = std::to_string(o.world_size);
  env["LOCAL_WORLD_SIZE"] = std::to_string(o.local_world_size);
  env["GROUP_RANK"] = std::to_string(o.node_rank);
  env["NODE_RANK"] = std::to_string(o.node_rank);
  env["GROUP_WORLD_SIZE"] = std::to_string(o.num_nodes);
  env["ROLE_RANK"] = std::to_string(rank);
  env["ROLE_WORLD_SIZE"] = std::to_string(o.world_size);
  env["MASTER_ADDR"] = o.master_addr;
  env["MASTER_PORT"] = std::to_string(o.master_port);
  env["TORCHELASTIC_RUN_ID"] = o.run_id;
  env["TORCHELASTIC_RESTART_COUNT"] = std::to_string(round);
  env["TORCHELASTIC_MAX_RESTARTS"] = std::to_string(o.max_restarts);
  env["PTRAIN_RESTART"] = std::to_string(round);  // the rendezvous round; 0 on the first start
  if (o.threads_per_proc > 0) {
    env["OMP_NUM_THREADS"] = std::to_string(o.threads_per_proc);
  } else if (!env.count("OMP_NUM_THREADS")) {
    unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    env["OMP_NUM_THREADS"] = std::to_string(o.local_world_size > 1 ? 1u : cores);
  }
  // OpenMP threads (oneDNN's GEMM team) sleep between parallel regions instead of spinning on
  // the cores the CPU kernels' own pool needs next: 2-3x faster CPU steps at 2 threads. A value
  // the user set wins.
  if (!env.count("OMP_WAIT_POLICY")) env["OMP_WAIT_POLICY"] = "passive";
  if (o.cuda) {
    // One GPU per local rank, chosen among the ones we were given (if any were named).
    auto it = env.find("CUDA_VISIBLE_DEVICES");
    std::vector<std::string> visible;
    if (it != env.end()) {
      size_t start = 0;
      const std::string& list = it->second;
      while (start <= list.size() && !list.empty()) {
        size_t end = list.find(',', start);
        if (end == std::string::npos) end = list.size();
        visible.push_back(list.substr(start, end - start));
        start = end + 1;
      }
    }
    env["CUDA_VISIBLE_DEVICES"] = visible.empty()
                                      ? std::to_string(local_rank)
                                      : visible[static_cast<size_t>(local_rank) % visible.size()];
  }
  for (const auto& [k, v] : o.extra_env) env[k] = v;
  std::vector<std::string> out;
  out.reserve(env.size());
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

// The node's relay; in a relay tree its upstream is its parent's relay, whose address the parent
// publishes in the store (and so does this one, when it has children of its own).
void Agent::start_relay(rendezvous::NodeRelayOptions ro, int round) {
  const auto pos = rendezvous::relay_tree_position(options_.node_rank, options_.num_nodes,
                                                   options_.relay_tree_fanout);
  ro.tree_children = pos.children;
  std::string upstream = options_.coordinator;
  std::unique_ptr<rendezvous::GrpcStore> store;
  if (pos.parent >= 0 || pos.children > 0)
    store = std::make_unique<rendezvous::GrpcStore>(options_.coordinator, options_.token);
  if (pos.parent >= 0) {
    try {
      upstream =
          store->get(rendezvous::relay_tree_key(round, pos.parent), options_.relay_tree_timeout);
    } catch (const Error& e) {
      throw RemoteError(fmt::format("node {}: the relay of its parent node {} did not start "
                                    "(round {}): {}",
                                    options_.node_rank, pos.parent, round, e.what()),
                        "the parent node's agent failed or is late; see its log");
    }
    ro.coordinator = options_.coordinator;
  }
  relay_ = std::make_unique<rendezvous::RelayServer>(
      upstream, options_.token, std::move(ro),
      rendezvous::relay_socket_path(options_.run_dir, options_.node_rank),
      options_.node_relay_heartbeat,
      pos.children > 0 ? rendezvous::relay_tree_listen(options_.coordinator) : "");
  if (pos.children > 0)
    store->set(rendezvous::relay_tree_key(round, options_.node_rank), relay_->tree_address());
}

void Agent::spawn_all(int round) {
  workers_.clear();
  spawn_failures_.clear();
  relay_.reset();  // the previous round's
  if (options_.node_relay_heartbeat.count() > 0) {
    rendezvous::NodeRelayOptions ro;
    ro.node = options_.node;
    ro.node_rank = options_.node_rank;
    ro.round = round;
    for (int l = 0; l < options_.local_world_size; ++l) ro.ranks.push_back(options_.first_rank + l);
    start_relay(std::move(ro), round);
  }
  const std::vector<int> servers = server_list();
  const int total = options_.local_world_size + static_cast<int>(servers.size());
  for (int local = 0; local < total; ++local) {
    // >= 0: a parameter server (its global index)
    const int server = local < options_.local_world_size
                           ? -1
                           : servers[static_cast<size_t>(local - options_.local_world_size)];
    auto w = std::make_unique<Worker>();
    w->local_rank = local;
    w->rank = server >= 0 ? options_.world_size + server : options_.first_rank + local;
    std::string path = log_path(w->rank);
    w->log_fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (w->log_fd < 0) throw IoError(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
    ProcessOptions po;
    po.argv = server >= 0 ? options_.server_argv : options_.argv;
    po.env = server >= 0 ? server_env(server, round) : worker_env(local, round);
    if (server < 0) po.umask = options_.child_umask;
    po.cwd = options_.cwd;
    try {
      watchdog_->start(options_.watchdog_program);
      w->proc = ChildProcess::spawn(po);
      watchdog_->watch(w->proc.pid());  // the leader's pid is the group's id
    } catch (const SpawnError& e) {
      std::string text = fmt::format("ptrain: {}", e.what());
      w->out_pending.clear();
      std::string line = text;
      WorkerLine wl{w->rank, unix_micros(), true, line};
      std::string formatted = format_log_line(wl.time_us, text);
      if (::write(w->log_fd, formatted.data(), formatted.size()) < 0) {
      }
      if (on_line) on_line(wl);
      ExitStatus st;
      st.code = e.exit_code();
      spawn_failures_.push_back({w->rank, -1, st, e.what()});
      w->reported = true;
    }
    workers_.push_back(std::move(w));
  }
}

void Agent::add_poll_fds(std::vector<struct pollfd>& fds) const {
  for (const auto& w : workers_) {
    if (w->proc.stdout_fd() >= 0) fds.push_back({w->proc.stdout_fd(), POLLIN, 0});
    if (w->proc.stderr_fd() >= 0) fds.push_back({w->proc.stderr_fd(), POLLIN, 0});
  }
}

void Agent::handle_ready(const std::vector<struct pollfd>& fds) {
  for (const auto& p : fds) {
    if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
    for (auto& w : workers_) {
      if (p.fd == w->proc.stdout_fd())
        read_pipe(*w, false);
      else if (p.fd == w->proc.stderr_fd())
        read_pipe(*w, true);
    }
  }
}

void Agent::emit(Worker& w, bool is_stderr, std::string& pending, bool flush_partial) {
  size_t start = 0;
  int64_t now = unix_micros();
  std::string batch;
  while (true) {
    size_t nl = pending.find('\n', start);
    size_t len;
    if (nl != std::string::npos) {
      len = nl - start;
    } else if (pending.size() - start >= kMaxLine || (flush_partial && start < pending.size())) {
      len = pending.size() - start;
    } else {
      break;
    }
    std::string text = pending.substr(start, len);
    if (!text.empty() && text.back() == '\r') text.pop_back();
    batch += format_log_line(now, text);
    if (on_line) on_line(WorkerLine{w.rank, now, is_stderr, text});
    start += len + (nl != std::string::npos ? 1 : 0);
    if (nl == std::string::npos) break;
  }
  pending.erase(0, start);
  if (!batch.empty() && w.log_fd >= 0) {
    size_t done = 0;
    while (done < batch.size()) {
      ssize_t n = ::write(w.log_fd, batch.data() + done, batch.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
  }
}

void Agent::read_pipe(Worker& w, bool is_stderr) {
  int fd = is_stderr ? w.proc.stderr_fd() : w.proc.stdout_fd();
  std::string& pending = is_stderr ? w.err_pending : w.out_pending;
  char buf[65536];
  for (int i = 0; i < 16; ++i) {  // bounded: one chatty worker cannot starve the others
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      pending.append(buf, static_cast<size_t>(n));
      emit(w, is_stderr, pending, false);
      continue;
    }
    if (n < 0 && (errno == EINTR)) continue;
    if (n < 0 && errno == EAGAIN) return;
    emit(w, is_stderr, pending, true);  // EOF or error: flush the partial last line
    if (is_stderr)
      w.proc.close_stderr();
    else
      w.proc.close_stdout();
    return;
  }
}

std::vector<WorkerExit> Agent::reap() {
  std::vector<WorkerExit> out = std::move(spawn_failures_);
  spawn_failures_.clear();
  for (auto& w : workers_) {
    if (w->reported) continue;
    if (auto st = w->proc.try_wait()) {
      w->reported = true;
      // A group outlives its leader while the leader's children run; keep watching it then.
      if (::kill(-w->proc.pid(), 0) != 0 && errno == ESRCH) watchdog_->forget(w->proc.pid());
      out.push_back({w->rank, w->proc.pid(), *st, {}});
    }
  }
  return out;
}

void Agent::signal_all(int sig) {
  for (auto& w : workers_) w->proc.signal_group(sig);
}

int Agent::running() const {
  int n = 0;
  for (const auto& w : workers_)
    if (w->proc.running()) ++n;
  return n;
}

pid_t Agent::pid_of(int rank) const {
  for (const auto& w : workers_)
    if (w->rank == rank) return w->proc.pid();
  return -1;
}

void Agent::drain(Millis timeout) {
  Deadline deadline(timeout);
  while (!deadline.expired()) {
    std::vector<struct pollfd> fds;
    add_poll_fds(fds);
    if (fds.empty()) return;
    int n = ::poll(fds.data(), fds.size(), static_cast<int>(deadline.remaining().count()) + 1);
    if (n > 0) handle_ready(fds);
  }
}

}  // namespace ptrain::launch
