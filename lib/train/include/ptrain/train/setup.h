// Building a worker's pieces from the spec: device, threads, the model (this rank's pipeline
// stage and tensor shard, built by its family: models/registry.h) and the optimizer.
#pragma once

#include <memory>

#include "ptrain/nn/model.h"
#include "ptrain/optim/optimizer.h"
#include "ptrain/optim/schedule.h"
#include "ptrain/spec/job_spec.h"
#include "ptrain/tensor/ops.h"

namespace ptrain::train {

// nodes.device: cpu | cuda | auto (cuda when a usable device exists). Throws ConfigError for
// cuda without a device.
tensor::Device resolve_device(const std::string& device);

// Threads for this worker's CPU kernels: nodes.threads_per_proc, else OMP_NUM_THREADS, else 1.
int resolve_threads(const spec::JobSpec& spec);

// The model (pipeline stage `stage` when pipeline > 1; tensor shard `tp_rank`), initialised
// from train.seed, or from model.init_from when set.
std::unique_ptr<nn::Model> make_model(const spec::JobSpec& spec, tensor::Device device, int stage,
                                      int tp_rank, int dp_rank = 0);

optim::ParamLayout make_layout(const nn::Model& model);
std::unique_ptr<optim::Optimizer> make_optimizer(const spec::JobSpec& spec, const tensor::Ops& ops,
                                                 optim::ParamLayout layout, optim::Shard shard);
optim::LrSchedule make_schedule(const spec::JobSpec& spec);

// Copies weights (and buffers) named as the family names them (HF GPT-2, nn.Linear, ...) from a
// safetensors file into the model. Tensors the model does not have are ignored when
// `allow_extra` (e.g. a HF file's attn.bias buffers); missing tensors and shape mismatches are
// listed in one ConfigError.
void load_weights(nn::Model& model, const std::string& path, bool allow_extra = true);

}  // namespace ptrain::train
