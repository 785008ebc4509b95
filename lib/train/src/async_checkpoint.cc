#include "async_checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>

#include "ptrain/core/error.h"
#include "ptrain/train/checkpointing.h"

namespace ptrain::train {

std::string checkpoint_dir_of(const spec::JobSpec& spec, const std::string& run_dir) {
  if (!spec.checkpoint.dir.empty()) return spec.checkpoint.dir;
  return run_dir.empty() ? std::string() : run_dir + "/checkpoints";
}

std::string async_resume_key(int round) {
  return fmt::format("ptrain/ps/r{}/resume", round);
}

std::string encode_resume(const AsyncResume& r) {
  return fmt::format("{}\n{}", r.step, r.manifest);
}

AsyncResume decode_resume(const std::string& text) {
  AsyncResume r;
  size_t nl = text.find('\n');
  PTRAIN_CHECK(nl != std::string::npos, "malformed resume record '{}'", text);
  r.step = std::stoll(text.substr(0, nl));
  r.manifest = text.substr(nl + 1);
  return r;
}

bool AsyncCheckpointWriter::Pending::complete() const {
  for (size_t i = 0; i < expected.size(); ++i)
    if (expected[i] == 0 || got[i] < expected[i]) return false;
  return true;
}

AsyncCheckpointWriter::AsyncCheckpointWriter(Options options, std::unique_ptr<nn::Model> model)
    : opt_(std::move(options)), model_(std::move(model)) {
  PTRAIN_CHECK(model_ && model_->device() == tensor::Device::kCpu, "a host model is needed");
  PTRAIN_CHECK(opt_.servers >= 1 && opt_.workers >= 1, "servers {} workers {}", opt_.servers,
               opt_.workers);
  n_ = model_->num_params();
  done_.insert(opt_.last_step * opt_.workers);
  thread_ = std::thread([this] { write_loop(); });
}

AsyncCheckpointWriter::~AsyncCheckpointWriter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void AsyncCheckpointWriter::add(parallel::ShardSnapshot snap) {
  const bool whole = snap.pieces == 0;
  std::unique_lock lock(mu_);
  if (snap.index < 0 || snap.index >= opt_.servers)
    throw RemoteError(fmt::format("a checkpoint piece from server {} of a job with {} server(s)",
                                  snap.index, opt_.servers),
                      "every server must run the same job spec");
  if (done_.count(snap.version)) return;
  auto& p = pending_[snap.version];
  if (p.expected.empty()) {
    p.expected.assign(size_t(opt_.servers), 0);
    p.got.assign(size_t(opt_.servers), 0);
    p.params.assign(n_, 0.0f);
  }
  auto place = [&](std::vector<float>& dst, const std::vector<float>& src, const char* what) {
    if (snap.begin + src.size() > n_)
      throw RemoteError(fmt::format("server {} sent {} {} floats from element {} of a model of {}",
                                    snap.index, src.size(), what, snap.begin, n_),
                        "every server must run the same job spec");
    std::copy(src.begin(), src.end(), dst.begin() + long(snap.begin));
  };
  if (!snap.params.empty()) place(p.params, snap.params, "parameter");
  for (auto& [name, data] : snap.state) {
    auto it = std::find_if(p.state.begin(), p.state.end(),
                           [&](const auto& s) { return s.first == name; });
    if (it == p.state.end()) it = p.state.insert(p.state.end(), {name, std::vector<float>(n_)});
    place(it->second, data, "optimizer state");
  }
  if (snap.index == 0) {
    p.buffers = std::move(snap.buffers);
    p.optimizer_steps = snap.optimizer_steps;
  }
  const size_t i = size_t(snap.index);
  if (whole) {
    p.expected[i] = 1;
    p.got[i] = 1;
  } else {
    p.expected[i] = snap.pieces;
    ++p.got[i];
  }
  if (!p.complete()) return;
  // At most one complete checkpoint waits behind the one being written.
  auto node = pending_.extract(snap.version);
  cv_.wait(lock, [&] { return stopping_ || queue_.empty(); });
  if (stopping_) return;
  queue_.emplace_back(snap.version, std::move(node.mapped()));
  cv_.notify_all();
}

bool AsyncCheckpointWriter::wait_written(int64_t version, Millis timeout,
                                         const std::function<bool()>& stop) {
  auto until = Clock::now() + timeout;
  std::unique_lock lock(mu_);
  while (!done_.count(version) && error_.empty()) {
    if (stop && stop()) return false;
    if (Clock::now() >= until) {
      std::vector<int> missing;
      auto it = pending_.find(version);
      for (int s = 0; s < opt_.servers; ++s)
        if (it == pending_.end() || it->second.expected[size_t(s)] == 0 ||
            it->second.got[size_t(s)] < it->second.expected[size_t(s)])
          missing.push_back(s);
      throw TimeoutError(
          fmt::format("the checkpoint of step {} is still incomplete after {} ms{}",
                      version / opt_.workers, timeout.count(),
                      missing.empty() ? std::string()
                                      : fmt::format(": no snapshot yet from server(s) {}",
                                                    fmt::join(missing, ", "))),
          "see those servers' logs (server-<i>.log in the run folder)");
    }
    cv_.wait_for(lock, Millis(100));
  }
  if (!error_.empty()) throw IoError(error_, "see the checkpoint folder and its disk");
  return true;
}

std::string AsyncCheckpointWriter::error() const {
  std::lock_guard lock(mu_);
  return error_;
}

std::vector<double> AsyncCheckpointWriter::save_seconds() const {
  std::lock_guard lock(mu_);
  return save_s_;
}

void AsyncCheckpointWriter::write_loop() {
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, with every complete checkpoint written
    auto [version, p] = std::move(queue_.front());
    queue_.pop_front();
    writing_ = version;
    cv_.notify_all();  // room for the next complete one
    lock.unlock();
    std::string failed;
    double t0 = mono_seconds();
    try {
      write(version, p);
    } catch (const std::exception& e) {
      failed = e.what();
    }
    double dt = mono_seconds() - t0;
    lock.lock();
    writing_ = -1;
    if (!failed.empty() && error_.empty()) error_ = failed;
    if (failed.empty()) save_s_.push_back(dt);
    done_.insert(version);
    cv_.notify_all();
  }
}

void AsyncCheckpointWriter::write(int64_t version, Pending& p) {
  const int64_t step = version / opt_.workers;
  {
    std::lock_guard lock(mu_);
    // Another version of the same step (checkpoint.every < workers) or the one resumed from.
    for (int64_t v : done_)
      if (v / opt_.workers == step) return;
  }
  // The host model carries the joined state, so the sync path turns it into named tensors.
  std::copy(p.params.begin(), p.params.end(), model_->param_data());
  if (!p.buffers.empty()) {
    PTRAIN_CHECK(p.buffers.size() == model_->num_buffer_elems(), "buffers {} vs {}",
                 p.buffers.size(), model_->num_buffer_elems());
    std::copy(p.buffers.begin(), p.buffers.end(), model_->buffer_data());
  }
  FullState model_state = gather_model_state(*model_, nullptr);
  std::vector<std::pair<std::string, FullState>> optim_state;
  for (const auto& [name, flat] : p.state)
    optim_state.emplace_back(name, gather_full(*model_, flat.data(), nullptr));
  auto meta = opt_.metadata;
  meta["data_position"] = std::to_string(step);
  meta["server_updates"] = std::to_string(version);
  std::unique_ptr<FaultInjection::SaveWatch> watch;
  if (opt_.faults) watch = opt_.faults->during_save(step, opt_.dir);
  auto manifest = save_training_state(opt_.dir, opt_.keep, step, model_state, optim_state,
                                      opt_.optimizer.c_str(), p.optimizer_steps, meta);
  if (opt_.log)
    opt_.log(fmt::format("checkpoint: saved step {} ({} server updates) to {}", step, version,
                         manifest.model_path()));
}

}  // namespace ptrain::train
