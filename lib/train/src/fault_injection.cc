#include "fault_injection.h"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <thread>

#include "ptrain/core/env.h"
#include "ptrain/core/error.h"

namespace ptrain::train {

namespace {
constexpr const char* kVar = "PTRAIN_TEST_FAIL_AT_STEP";

void die(int sig, const std::string& why) {
  std::fprintf(stderr, "ptrain worker: %s: %s (test fault injection)\n", kVar, why.c_str());
  std::fflush(nullptr);
  ::raise(sig);
}
}  // namespace

FaultInjection FaultInjection::from_env(int rank, int round) {
  FaultInjection out;
  auto value = env_get(kVar);
  if (!value || value->empty()) return out;
  std::stringstream items(*value);
  std::string item;
  while (std::getline(items, item, ',')) {
    std::vector<std::string> parts;
    std::stringstream fields(item);
    std::string f;
    while (std::getline(fields, f, ':')) parts.push_back(f);
    long long r = 0, step = 0, rnd = 0;
    std::string how = parts.size() > 3 ? parts[3] : "kill";
    bool ok =
        parts.size() >= 2 && parts.size() <= 4 && (how == "kill" || how == "stop" || how == "save");
    try {
      if (ok) {
        r = std::stoll(parts[0]);
        step = std::stoll(parts[1]);
        rnd = parts.size() > 2 ? std::stoll(parts[2]) : 0;
      }
    } catch (const std::exception&) {
      ok = false;
    }
    if (!ok)
      throw ConfigError(fmt::format("{}: cannot read '{}'", kVar, item),
                        "write RANK:STEP[:ROUND[:kill|stop|save]], comma-separated");
    if (r == rank && rnd == round) out.faults_.push_back({step, how});
  }
  return out;
}

void FaultInjection::before_step(int64_t steps_done) const {
  for (const auto& f : faults_) {
    if (f.step != steps_done || f.how == "save") continue;
    die(f.how == "stop" ? SIGSTOP : SIGKILL,
        fmt::format("{} after step {}", f.how == "stop" ? "stopping" : "killing", steps_done));
  }
}

std::unique_ptr<FaultInjection::SaveWatch> FaultInjection::during_save(
    int64_t step, const std::string& dir) const {
  for (const auto& f : faults_)
    if (f.step == step && f.how == "save") return std::make_unique<SaveWatch>(dir);
  return nullptr;
}

struct FaultInjection::SaveWatch::Impl {
  int inotify_fd = -1;
  int stop_fd = -1;
  std::thread thread;
};

FaultInjection::SaveWatch::SaveWatch(const std::string& dir) : impl_(std::make_unique<Impl>()) {
  std::filesystem::create_directories(dir);
  impl_->inotify_fd = PTRAIN_SYSCALL(::inotify_init1(IN_CLOEXEC));
  PTRAIN_SYSCALL(::inotify_add_watch(impl_->inotify_fd, dir.c_str(), IN_CREATE));
  impl_->stop_fd = PTRAIN_SYSCALL(::eventfd(0, EFD_CLOEXEC));
  impl_->thread = std::thread([fd = impl_->inotify_fd, stop = impl_->stop_fd, dir] {
    alignas(struct inotify_event) char buf[4096];
    while (true) {
      struct pollfd fds[2] = {{fd, POLLIN, 0}, {stop, POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) continue;
      if (fds[1].revents) return;
      ssize_t n = ::read(fd, buf, sizeof buf);
      for (ssize_t off = 0; n > 0 && off < n;) {
        auto* ev = reinterpret_cast<struct inotify_event*>(buf + off);
        std::string name = ev->len ? ev->name : "";
        if (name.find(".tmp") != std::string::npos)
          die(SIGKILL, fmt::format("killing while {}/{} is being written", dir, name));
        off += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
      }
    }
  });
}

FaultInjection::SaveWatch::~SaveWatch() {
  uint64_t one = 1;
  ssize_t n = ::write(impl_->stop_fd, &one, sizeof one);
  (void)n;
  impl_->thread.join();
  ::close(impl_->inotify_fd);
  ::close(impl_->stop_fd);
}

}  // namespace ptrain::train
