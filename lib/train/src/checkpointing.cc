#include "ptrain/train/checkpointing.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>

#include "ptrain/core/error.h"
#include "ptrain/data/safetensors.h"
#include "ptrain/parallel/pipeline.h"
#include "ptrain/parallel/tensor_parallel.h"
#include "ptrain/spec/spec.h"

namespace ptrain::train {

namespace {

// FullState <-> bytes for sending a pipeline stage's tensors: per tensor its name, '\0', the
// dimension count and dimensions (int64), then the floats.
template <typename T>
void put(std::string& out, const T& v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}
template <typename T>
T take(const std::string& in, size_t& at) {
  PTRAIN_CHECK(at + sizeof(T) <= in.size(), "truncated pipeline stage state");
  T v;
  std::memcpy(&v, in.data() + at, sizeof v);
  at += sizeof v;
  return v;
}

std::string serialize_state(const FullState& state) {
  std::string out;
  for (const auto& t : state) {
    out += t.name;
    out += '\0';
    put(out, int64_t(t.shape.size()));
    for (int64_t d : t.shape) put(out, d);
    put(out, int64_t(t.data.size()));
    out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size() * sizeof(float));
  }
  return out;
}

FullState deserialize_state(const std::string& in) {
  FullState out;
  size_t at = 0;
  while (at < in.size()) {
    FullTensor t;
    size_t end = in.find('\0', at);
    PTRAIN_CHECK(end != std::string::npos, "truncated pipeline stage state");
    t.name = in.substr(at, end - at);
    at = end + 1;
    auto nd = take<int64_t>(in, at);
    for (int64_t i = 0; i < nd; ++i) t.shape.push_back(take<int64_t>(in, at));
    auto n = take<int64_t>(in, at);
    PTRAIN_CHECK(at + size_t(n) * sizeof(float) <= in.size(), "truncated pipeline stage state");
    t.data.resize(size_t(n));
    std::memcpy(t.data.data(), in.data() + at, size_t(n) * sizeof(float));
    at += size_t(n) * sizeof(float);
    out.push_back(std::move(t));
  }
  return out;
}

// The pipeline step of gather_full: each stage's tensors (held by its dp = tp = 0 rank) go to
// stage 0, global rank 0, in stage order; a stage's copy of a tied parameter is left out.
FullState merge_pipeline_stages(const nn::Model& model, FullState local, comm::ProcessMesh& mesh) {
  auto& pp = mesh.pp();
  const int stage = pp.rank(), stages = pp.size();
  for (const auto& p : model.params())
    if (p.tied_copy) std::erase_if(local, [&](const FullTensor& t) { return t.name == p.name; });
  const uint32_t tag = (1u << 24) - 3;
  if (stage != 0) {
    parallel::send_bytes(pp, serialize_state(local), 0, tag, model.device());
    return {};
  }
  for (int s = 1; s < stages; ++s) {
    FullState more = deserialize_state(parallel::recv_bytes(pp, s, tag, model.device()));
    for (auto& t : more) local.push_back(std::move(t));
  }
  return local;
}

// The tensor-parallel step of gather_full: every rank of the tensor group sends its parts and
// tensor rank 0 gets each parameter's full tensor (joined along its split dimension).
FullState join_tensor_parallel_parts(const nn::Model& model, const float* flat,
                                     comm::ProcessMesh& mesh) {
  auto& tp = mesh.tp();
  const tensor::Ops& ops = tensor::ops(model.device());
  FullState out;
  for (const auto& p : model.params()) {
    auto full = parallel::gather_split_param(tp, ops, p, flat + p.offset);
    if (tp.rank() == 0) out.push_back({p.name, p.full_shape, {full.begin(), full.end()}});
  }
  return out;
}

}  // namespace

namespace {

// The model's buffers as full tensors (they are never split over the tensor group).
FullState buffer_tensors(const nn::Model& model) {
  FullState out;
  if (model.buffers().empty()) return out;
  std::vector<float> host(model.num_buffer_elems());
  tensor::ops(model.device())
      .copy_to_host(host.data(), model.buffer_data(), host.size() * sizeof(float));
  for (const auto& b : model.buffers())
    out.push_back({b.name, b.shape,
                   HostVector<float>(host.begin() + b.offset, host.begin() + b.offset + b.numel)});
  return out;
}

}  // namespace

FullState gather_model_state(const nn::Model& model, comm::ProcessMesh* mesh) {
  // Buffers ride along with the parameters: appended before the pipeline merge, on the ranks
  // that write (dp = tp = 0 of every stage).
  auto with_buffers = [&](FullState s) {
    for (auto& b : buffer_tensors(model)) s.push_back(std::move(b));
    return s;
  };
  return gather_full(model, model.param_data(), mesh, with_buffers);
}

HostVector<float> gather_rows(comm::ProcessMesh* mesh, const std::vector<int64_t>& splits,
                              size_t inner, const float* local) {
  const int ranks = int(splits.size()) - 1;
  const int me = mesh ? mesh->coords().dp : 0;
  const size_t mine = size_t(splits[size_t(me) + 1] - splits[size_t(me)]) * inner;
  if (!mesh || mesh->shape().dp == 1) {
    PTRAIN_CHECK(ranks == 1 || mine == size_t(splits.back()) * inner,
                 "rows split over {} ranks without a data group", ranks);
    return HostVector<float>(local, local + mine);
  }
  auto& dp = mesh->dp();
  PTRAIN_CHECK(dp.size() == ranks, "rows split over {} ranks, the data group has {}", ranks,
               dp.size());
  std::vector<size_t> send(size_t(ranks), 0), recv(size_t(ranks), 0);
  send[0] = mine;
  if (me == 0)
    for (int r = 0; r < ranks; ++r)
      recv[size_t(r)] = size_t(splits[size_t(r) + 1] - splits[size_t(r)]) * inner;
  HostVector<float> full(me == 0 ? size_t(splits.back()) * inner : 0);
  float dummy = 0;
  dp.alltoallv(mine ? local : &dummy, send, full.empty() ? &dummy : full.data(), recv,
               comm::DType::kF32);
  return full;
}

FullState gather_full(const nn::Model& model, const float* flat, comm::ProcessMesh* mesh,
                      const std::function<FullState(FullState)>& add, bool sharded) {
  // Sharded parameters: every data rank's rows onto data rank 0, before the others return.
  std::map<std::string, HostVector<float>> joined;
  if (sharded)
    for (const auto& p : model.params()) {
      if (p.sync != nn::ParamInfo::Sync::kSharded) continue;
      std::vector<float> local(p.numel);
      tensor::ops(model.device())
          .copy_to_host(local.data(), flat + p.offset, p.numel * sizeof(float));
      joined[p.name] =
          gather_rows(mesh, p.row_splits, p.full_numel() / size_t(p.full_shape[0]), local.data());
    }
  // Tensor parallelism (tp > 1) joins split parameters here; pipeline parallelism (pp > 1)
  // merges the stages onto pipeline rank 0. With neither, the local tensors are the full ones.
  if (mesh) {
    auto c = mesh->coords();
    if (c.dp != 0) return {};
    if (mesh->shape().tp > 1) {
      FullState out = join_tensor_parallel_parts(model, flat, *mesh);
      if (c.tp != 0) return {};
      if (add) out = add(std::move(out));
      if (mesh->shape().pp > 1) return merge_pipeline_stages(model, std::move(out), *mesh);
      return out;
    }
  }
  // Host memory is copied once, straight into the tensors; device memory is staged first.
  const float* host = flat;
  std::vector<float> staged;
  if (model.device() != tensor::Device::kCpu) {
    staged.resize(sharded ? model.num_params() : model.dense_numel());
    tensor::ops(model.device()).copy_to_host(staged.data(), flat, staged.size() * sizeof(float));
    host = staged.data();
  }
  FullState out;
  for (const auto& p : model.params()) {
    if (p.sync == nn::ParamInfo::Sync::kSharded) {
      if (sharded) out.push_back({p.name, p.full_shape, std::move(joined[p.name])});
      continue;
    }
    out.push_back({p.name, p.shape, HostVector<float>(host + p.offset, host + p.offset + p.numel)});
  }
  if (add) out = add(std::move(out));
  if (mesh && mesh->shape().pp > 1) return merge_pipeline_stages(model, std::move(out), *mesh);
  return out;
}

void read_local(const data::SafetensorsFile& file, const std::string& file_name,
                const nn::ParamInfo& p, std::vector<float>& out) {
  // Files hold full tensors; a tensor-parallel rank keeps its part (nn::ParamInfo::split_*).
  const auto& full_shape = p.full_shape.empty() ? p.shape : p.full_shape;
  const auto* info = file.find(file_name);
  if (!info || info->shape != full_shape)
    throw ConfigError(
        fmt::format("checkpoint '{}' has no tensor {} of shape [{}]{}", file.origin(), file_name,
                    fmt::join(full_shape, ","),
                    info ? fmt::format(" (it has [{}])", fmt::join(info->shape, ",")) : ""),
        "resume with the model the checkpoint was trained with");
  out.resize(p.numel);
  if (!p.is_split() && !p.is_row_sharded()) {
    file.read_f32(file_name, out.data());
    return;
  }
  std::vector<float> full(p.full_numel());
  file.read_f32(file_name, full.data());
  nn::copy_shard_from_full(p, p.split_rank, full.data(), out.data());
}

static std::vector<data::TensorRef> refs(const FullState& state, const std::string& suffix) {
  std::vector<data::TensorRef> out;
  for (const auto& t : state)
    out.push_back({t.name + suffix, data::DType::kF32, t.shape, t.data.data()});
  return out;
}

data::CheckpointManifest save_training_state(
    const std::string& dir, int keep, int64_t step, const FullState& model,
    const std::vector<std::pair<std::string, FullState>>& optim, const optim::Optimizer& optimizer,
    std::map<std::string, std::string> metadata) {
  return save_training_state(dir, keep, step, model, optim, optimizer.name(), optimizer.steps(),
                             std::move(metadata));
}

data::CheckpointManifest save_training_state(
    const std::string& dir, int keep, int64_t step, const FullState& model,
    const std::vector<std::pair<std::string, FullState>>& optim, const std::string& optimizer_name,
    int64_t optimizer_steps, std::map<std::string, std::string> metadata) {
  data::CheckpointData ckpt;
  ckpt.step = step;
  ckpt.model = refs(model, "");
  for (const auto& [state_name, state] : optim) {
    auto r = refs(state, "." + state_name);
    ckpt.optim.insert(ckpt.optim.end(), r.begin(), r.end());
  }
  metadata["step"] = std::to_string(step);
  metadata["optimizer"] = optimizer_name;
  metadata["optimizer_steps"] = std::to_string(optimizer_steps);
  ckpt.metadata = std::move(metadata);
  data::CheckpointOptions opts;
  opts.keep = keep;
  return data::save_checkpoint(dir, ckpt, opts);
}

BackgroundSaver::~BackgroundSaver() {
  if (!thread_.joinable()) return;
  thread_.join();
  if (error_) {
    try {
      std::rethrow_exception(error_);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "checkpoint: the background save failed: %s\n", e.what());
    }
  }
}

void BackgroundSaver::submit(std::function<void()> save) {
  wait();
  thread_ = std::thread([this, save = std::move(save)] {
    try {
      save();
    } catch (...) {
      error_ = std::current_exception();
    }
  });
}

void BackgroundSaver::wait() {
  if (thread_.joinable()) thread_.join();
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

SavedState load_training_state(const data::CheckpointManifest& manifest, nn::Model& model,
                               optim::Optimizer& optimizer, optim::RowSparseOptimizer* sparse) {
  auto it = manifest.metadata.find("optimizer");
  if (it != manifest.metadata.end() && it->second != optimizer.name())
    throw ConfigError(fmt::format("checkpoint '{}' holds {} state but the job uses {}",
                                  manifest.manifest_path(), it->second, optimizer.name()),
                      "keep train.optimizer.type as it was, or set checkpoint.resume: never");
  auto mfile = data::SafetensorsFile::open(manifest.model_path());
  std::vector<float> host;
  for (size_t i = 0; i < model.params().size(); ++i) {
    const auto& p = model.params()[i];
    read_local(mfile, p.name, p, host);
    model.param(i).copy_from_host(host.data(), p.numel * sizeof(float));
  }
  for (const auto& b : model.buffers()) {
    const auto* info = mfile.find(b.name);
    if (!info || info->shape != b.shape)
      throw ConfigError(fmt::format("checkpoint '{}' has no buffer {} of shape [{}]",
                                    mfile.origin(), b.name, fmt::join(b.shape, ",")),
                        "resume with the model the checkpoint was trained with");
    host.resize(b.numel);
    mfile.read_f32(b.name, host.data());
    tensor::ops(model.device())
        .copy_from_host(model.buffer_data() + b.offset, host.data(), b.numel * sizeof(float));
  }
  auto states = optimizer.state();
  if (!states.empty()) {
    auto ofile = data::SafetensorsFile::open(manifest.optim_path());
    const auto& shard = optimizer.shard();
    const tensor::Ops& ops = tensor::ops(model.device());
    for (auto& s : states) {
      // Each parameter's part that falls inside this rank's (ZeRO-1) shard.
      for (const auto& p : model.params()) {
        size_t lo = std::max(p.offset, shard.begin);
        size_t hi = std::min(p.offset + p.numel, shard.end);
        if (lo >= hi) continue;
        read_local(ofile, p.name + "." + s.name, p, host);
        ops.copy_from_host(s.data + (lo - shard.begin), host.data() + (lo - p.offset),
                           (hi - lo) * sizeof(float));
      }
    }
  }
  if (sparse && sparse->has_state()) {
    // Row-wise accumulators [rows] of each sharded table, this rank's rows.
    auto ofile = data::SafetensorsFile::open(manifest.optim_path());
    size_t t = 0;
    for (const auto& p : model.params()) {
      if (p.sync != nn::ParamInfo::Sync::kSharded) continue;
      nn::ParamInfo rows = p;  // the same row split of a [rows] tensor
      rows.shape = {p.shape[0]};
      rows.full_shape = {p.full_shape[0]};
      rows.numel = size_t(p.shape[0]);
      read_local(ofile, p.name + ".sum", rows, host);
      std::copy(host.begin(), host.end(), sparse->accumulator(t++));
    }
  }
  SavedState saved;
  saved.step = manifest.step;
  saved.metadata = manifest.metadata;
  auto steps_it = manifest.metadata.find("optimizer_steps");
  optimizer.set_steps(steps_it != manifest.metadata.end() ? std::stoll(steps_it->second)
                                                          : manifest.step);
  return saved;
}

void check_fingerprints(const spec::JobSpec& spec, const data::CheckpointManifest& point) {
  if (spec.checkpoint.resume == "force") return;
  std::vector<std::string> differ;
  for (const auto& [part, print] : spec::fingerprints(spec)) {
    auto it = point.metadata.find("fingerprint." + part);
    if (it != point.metadata.end() && it->second != print) differ.push_back(part);
  }
  if (differ.empty()) return;
  throw ConfigError(
      fmt::format("checkpoint '{}' was written by a job with another {} section",
                  point.manifest_path(), fmt::join(differ, " and ")),
      "resume it with the spec that wrote it, give this job its own checkpoint.dir, or "
      "--set checkpoint.resume=force to load it anyway");
}

std::optional<data::CheckpointManifest> find_resume_point(const std::string& resume,
                                                          const std::string& dir) {
  if (resume == "never") return std::nullopt;
  if (resume == "auto" || resume == "force") return data::find_resume_checkpoint(dir);
  const std::string path = data::manifest_for(resume);  // a .safetensors file names its manifest
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw ConfigError(fmt::format("checkpoint.resume: '{}' does not exist", path),
                      "name a step-<n>.json manifest, one of its .safetensors files or a "
                      "checkpoint folder, or use auto");
  if (S_ISDIR(st.st_mode)) {
    auto found = data::find_resume_checkpoint(path);
    if (!found)
      throw ConfigError(fmt::format("checkpoint.resume: no complete checkpoint in '{}'", resume));
    return found;
  }
  return data::validate_checkpoint(path);
}

}  // namespace ptrain::train
