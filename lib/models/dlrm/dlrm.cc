// DLRM forward/backward on the host: Linear layers through the op table (OpenBLAS), the
// lookups, the interaction and the loss through dlrm_ops.h.
#include "dlrm/dlrm.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "dlrm/dlrm_ops.h"
#include "ptrain/core/error.h"
#include "ptrain/nn/init.h"
#include "ptrain/nn/layers.h"

namespace ptrain::nn {

class DlrmActivations : public Activations {
 public:
  DlrmActivations(const std::vector<int>& bot, const std::vector<int>& top, int K, int D, int B)
      : B_(B), K_(K) {
    dense.assign(size_t(B) * bot[0], 0.f);
    for (size_t i = 1; i < bot.size(); ++i) bot_pre.emplace_back(size_t(B) * bot[i], 0.f);
    for (size_t i = 1; i < bot.size(); ++i) bot_post.emplace_back(size_t(B) * bot[i], 0.f);
    for (size_t i = 1; i < top.size(); ++i) top_pre.emplace_back(size_t(B) * top[i], 0.f);
    for (size_t i = 1; i < top.size(); ++i) top_post.emplace_back(size_t(B) * top[i], 0.f);
    sparse.assign(size_t(B) * K, 0);
    idx.assign(size_t(B), 0);
    emb.assign(size_t(B) * D, 0.f);
    v.assign(size_t(B) * (K + 1) * D, 0.f);
    z.assign(size_t(B) * top[0], 0.f);
    targets.assign(size_t(B), 0.f);
    losses.assign(size_t(B), 0.f);
  }
  int batch() const override { return B_; }
  int seq() const override { return 1; }
  const float* output() const override { return nullptr; }
  const float* input_grad() const override { return nullptr; }

  std::vector<float> dense;                           // [B, dense]
  std::vector<std::vector<float>> bot_pre, bot_post;  // [B, bottom[i]]
  std::vector<std::vector<float>> top_pre, top_post;  // [B, top[i]]; top_pre.back() = logits
  std::vector<int32_t> sparse;                        // [B, K]
  std::vector<int32_t> idx;                           // [B] one table's column
  std::vector<float> emb;                             // [B, D] scratch
  std::vector<float> v;                               // [B, K+1, D] the interaction's input
  std::vector<float> z;                               // [B, D + (K+1)K/2]
  std::vector<float> targets, losses;                 // [B]
  bool forward_done = false;
  dlrm::Routing routing;  // sharded tables: this microbatch's lookups

 private:
  int B_, K_;
};

namespace {

void relu(float* out, const float* in, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = in[i] > 0 ? in[i] : 0.f;
}
// g [n] = g * (pre > 0), in place.
void relu_back(float* g, const float* pre, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!(pre[i] > 0)) g[i] = 0.f;
}

}  // namespace

void validate(const DlrmConfig& c) {
  if (c.tables.empty())
    throw ConfigError("DLRM needs at least one embedding table",
                      "set model.tables or model.sparse");
  if (c.bottom.empty() || c.bottom.back() != c.dim)
    throw ConfigError(fmt::format("model.bottom_mlp must end at model.embedding_dim {} (it ends at "
                                  "{})",
                                  c.dim, c.bottom.empty() ? c.dense : c.bottom.back()),
                      "the dot interaction needs the bottom output as wide as an embedding");
  if (c.top.empty() || c.top.back() != 1)
    throw ConfigError("model.top_mlp must end at 1 (one logit)", "end top_mlp with 1");
}

Dlrm::Dlrm(const DlrmConfig& config) : Model(tensor::Device::kCpu), cfg_(config) {
  validate(cfg_);
  const int K = int(cfg_.tables.size()), D = cfg_.dim;
  bot_dims_.push_back(cfg_.dense);
  for (int w : cfg_.bottom) bot_dims_.push_back(w);
  top_dims_.push_back(dlrm::interaction_width(K + 1, D));
  for (int w : cfg_.top) top_dims_.push_back(w);
  // DLRM's state_dict order: emb_l, bot_l, top_l (Sequential indices 0, 2, ... skip the ReLUs).
  table_first_ = params_.size();
  if (sharded()) {
    PTRAIN_CHECK(cfg_.dp_rank >= 0 && cfg_.dp_rank < cfg_.dp_size, "data rank {} of {}",
                 cfg_.dp_rank, cfg_.dp_size);
    splits_ = dlrm::place_tables(cfg_.tables, cfg_.placement, cfg_.dp_size);
  }
  for (int k = 0; k < K; ++k) {
    if (sharded()) {
      add_sharded_param(fmt::format("emb_l.{}.weight", k), {cfg_.tables[k], D}, splits_[k],
                        cfg_.dp_rank);
      continue;
    }
    add_param(fmt::format("emb_l.{}.weight", k), {cfg_.tables[k], D});
    params_.back().decay = false;  // weight decay never touches embeddings
  }
  bottom_first_ = params_.size();
  for (size_t i = 0; i + 1 < bot_dims_.size(); ++i) {
    add_param(fmt::format("bot_l.{}.weight", 2 * i), {bot_dims_[i + 1], bot_dims_[i]});
    add_param(fmt::format("bot_l.{}.bias", 2 * i), {bot_dims_[i + 1]});
  }
  top_first_ = params_.size();
  for (size_t i = 0; i + 1 < top_dims_.size(); ++i) {
    add_param(fmt::format("top_l.{}.weight", 2 * i), {top_dims_[i + 1], top_dims_[i]});
    add_param(fmt::format("top_l.{}.bias", 2 * i), {top_dims_[i + 1]});
  }
  allocate_params();
}

void Dlrm::init(uint64_t seed) {
  std::vector<float> host;
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamInfo& p = params_[i];
    host.resize(p.numel);
    const uint64_t key = param_key(seed, p.name);
    if (i >= table_first_ && i < bottom_first_) {
      // Element j of this rank's rows is element row_begin * D + j of the full table.
      const float b = float(std::sqrt(1.0 / double(p.full_shape[0])));
      const uint64_t first = uint64_t(p.row_begin) * uint64_t(cfg_.dim);
      for (size_t j = 0; j < host.size(); ++j)
        host[j] = static_cast<float>(-b + (b - -b) * uniform01(key, first + j));
    } else if (p.shape.size() == 2) {
      const double sd = std::sqrt(2.0 / double(p.shape[0] + p.shape[1]));
      for (size_t j = 0; j < host.size(); ++j) host[j] = float(sd * normal01(key, j));
    } else {
      const double sd = std::sqrt(1.0 / double(p.shape[0]));
      for (size_t j = 0; j < host.size(); ++j) host[j] = float(sd * normal01(key, j));
    }
    ops().copy_from_host(param_data() + p.offset, host.data(), p.numel * sizeof(float));
  }
}

std::unique_ptr<Activations> Dlrm::make_activations(int B, int) const {
  PTRAIN_CHECK(B > 0, "batch {} must be positive", B);
  return std::make_unique<DlrmActivations>(bot_dims_, top_dims_, int(cfg_.tables.size()), cfg_.dim,
                                           B);
}

double Dlrm::forward(const Batch& batch, Activations& acts_base) {
  auto& a = dynamic_cast<DlrmActivations&>(acts_base);
  PTRAIN_CHECK(batch.B == a.batch(), "batch {} does not match activations {}", batch.B, a.batch());
  const float* dense = batch.f32("dense");
  const int32_t* sparse = batch.i32("sparse");
  const float* targets = batch.f32("targets");
  PTRAIN_CHECK(dense && sparse && targets, "DLRM needs dense, sparse and targets");
  const tensor::Ops& o = ops();
  const int B = batch.B, K = int(cfg_.tables.size()), D = cfg_.dim, F = K + 1;
  std::copy(dense, dense + size_t(B) * cfg_.dense, a.dense.begin());
  std::copy(sparse, sparse + size_t(B) * K, a.sparse.begin());
  std::copy(targets, targets + B, a.targets.begin());

  // Bottom MLP, ReLU after every layer.
  const float* in = a.dense.data();
  for (size_t i = 0; i + 1 < bot_dims_.size(); ++i) {
    const ParamInfo& w = params_[bottom_param(i)];
    const ParamInfo& b = params_[bottom_param(i) + 1];
    linear_forward(o, a.bot_pre[i].data(), in, param_data() + w.offset, param_data() + b.offset, B,
                   bot_dims_[i], bot_dims_[i + 1]);
    relu(a.bot_post[i].data(), a.bot_pre[i].data(), a.bot_pre[i].size());
    in = a.bot_post[i].data();
  }
  // v [B,F,D]: the bottom output, then each table's lookup.
  for (int b = 0; b < B; ++b)
    std::copy(in + size_t(b) * D, in + size_t(b + 1) * D, &a.v[size_t(b) * F * D]);
  if (sharded()) sharded_lookup(a);
  for (int k = 0; k < K && !sharded(); ++k) {
    const ParamInfo& t = params_[table_param(k)];
    for (int b = 0; b < B; ++b) a.idx[b] = a.sparse[size_t(b) * K + k];
    dlrm::embedding_lookup(a.emb.data(), param_data() + t.offset, a.idx.data(), B, t.shape[0], D);
    for (int b = 0; b < B; ++b)
      std::copy(&a.emb[size_t(b) * D], &a.emb[size_t(b + 1) * D],
                &a.v[(size_t(b) * F + k + 1) * D]);
  }
  dlrm::dot_interaction_forward(a.z.data(), a.v.data(), B, F, D);
  // Top MLP, ReLU after all but the last layer (the logit).
  in = a.z.data();
  const size_t top_layers = top_dims_.size() - 1;
  for (size_t i = 0; i < top_layers; ++i) {
    const ParamInfo& w = params_[top_param(i)];
    const ParamInfo& b = params_[top_param(i) + 1];
    linear_forward(o, a.top_pre[i].data(), in, param_data() + w.offset, param_data() + b.offset, B,
                   top_dims_[i], top_dims_[i + 1]);
    if (i + 1 < top_layers) relu(a.top_post[i].data(), a.top_pre[i].data(), a.top_pre[i].size());
    in = a.top_post[i].data();
  }
  a.forward_done = true;
  return dlrm::bce_with_logits_forward(a.losses.data(), a.top_pre.back().data(), a.targets.data(),
                                       B);
}

void Dlrm::backward(Activations& acts_base, float dloss_scale, const float*) {
  auto& a = dynamic_cast<DlrmActivations&>(acts_base);
  PTRAIN_CHECK(a.forward_done, "backward without a forward on these activations");
  const tensor::Ops& o = ops();
  const int B = a.batch(), K = int(cfg_.tables.size()), D = cfg_.dim, F = K + 1;
  const size_t top_layers = top_dims_.size() - 1;
  std::vector<float> dout(static_cast<size_t>(B)), din;
  dlrm::bce_with_logits_backward(dout.data(), a.top_pre.back().data(), a.targets.data(),
                                 dloss_scale, B);
  for (size_t i = top_layers; i-- > 0;) {
    const ParamInfo& w = params_[top_param(i)];
    const ParamInfo& b = params_[top_param(i) + 1];
    const float* in = i == 0 ? a.z.data() : a.top_post[i - 1].data();
    din.assign(size_t(B) * top_dims_[i], 0.f);
    linear_backward(o, din.data(), grad_data() + w.offset, grad_data() + b.offset, dout.data(), in,
                    param_data() + w.offset, B, top_dims_[i], top_dims_[i + 1]);
    grad_ready(top_param(i) + 1);
    grad_ready(top_param(i));
    if (i > 0) relu_back(din.data(), a.top_pre[i - 1].data(), din.size());
    dout.swap(din);
  }
  // dout = d z; the interaction's gradient splits into the bottom output's and the lookups'.
  std::vector<float> dv(size_t(B) * F * D);
  dlrm::dot_interaction_backward(dv.data(), dout.data(), a.v.data(), B, F, D);
  if (sharded()) sharded_backward(a, dv.data());
  for (int k = 0; k < K && !sharded(); ++k) {
    const ParamInfo& t = params_[table_param(k)];
    for (int b = 0; b < B; ++b) {
      a.idx[b] = a.sparse[size_t(b) * K + k];
      std::copy(&dv[(size_t(b) * F + k + 1) * D], &dv[(size_t(b) * F + k + 2) * D],
                &a.emb[size_t(b) * D]);
    }
    dlrm::embedding_backward(grad_data() + t.offset, a.emb.data(), a.idx.data(), B, t.shape[0], D);
  }
  for (int k = K; k-- > 0;) grad_ready(table_param(k));
  dout.assign(size_t(B) * D, 0.f);
  for (int b = 0; b < B; ++b)
    std::copy(&dv[size_t(b) * F * D], &dv[size_t(b) * F * D + D], &dout[size_t(b) * D]);
  for (size_t i = bot_dims_.size() - 1; i-- > 0;) {
    const ParamInfo& w = params_[bottom_param(i)];
    const ParamInfo& b = params_[bottom_param(i) + 1];
    relu_back(dout.data(), a.bot_pre[i].data(), dout.size());
    const float* in = i == 0 ? a.dense.data() : a.bot_post[i - 1].data();
    din.assign(size_t(B) * bot_dims_[i], 0.f);
    linear_backward(o, i > 0 ? din.data() : nullptr, grad_data() + w.offset, grad_data() + b.offset,
                    dout.data(), in, param_data() + w.offset, B, bot_dims_[i], bot_dims_[i + 1]);
    grad_ready(bottom_param(i) + 1);
    grad_ready(bottom_param(i));
    dout.swap(din);
  }
}

void Dlrm::sharded_lookup(DlrmActivations& a) {
  const int B = a.batch(), K = int(cfg_.tables.size()), D = cfg_.dim, F = K + 1;
  dlrm::Routing& r = a.routing;
  GroupComm* comm = cfg_.dp_size > 1 ? dp_comm_ : nullptr;
  PTRAIN_CHECK(cfg_.dp_size == 1 || comm, "sharded tables over {} ranks need the data group",
               cfg_.dp_size);
  dlrm::route_lookups(comm, cfg_.dp_size, a.sparse.data(), B, K, splits_, r);
  // Serve the lookups this rank owns, in the order they came, then send the vectors back.
  const size_t served = r.serve_count();
  r.served.resize(served * D);
  for (size_t i = 0; i < served; ++i) {
    const ParamInfo& t = params_[table_param(size_t(r.recv_keys[2 * i]))];
    const int64_t local = r.recv_keys[2 * i + 1] - t.row_begin;
    PTRAIN_CHECK(local >= 0 && local < t.shape[0], "row {} of {} is not on data rank {}",
                 r.recv_keys[2 * i + 1], t.name, cfg_.dp_rank);
    std::memcpy(&r.served[i * D], param_data() + t.offset + size_t(local) * D, sizeof(float) * D);
  }
  r.returned.resize(r.sent() * D);
  std::vector<size_t> sc(r.recv_counts), rc(r.send_counts);
  for (auto& c : sc) c *= size_t(D);
  for (auto& c : rc) c *= size_t(D);
  dlrm::exchange(comm, r.served.data(), sc, r.returned.data(), rc, tensor::DType::kF32);
  for (size_t i = 0; i < r.sent(); ++i) {
    const size_t b = size_t(r.slots[i]) / size_t(K), k = size_t(r.slots[i]) % size_t(K);
    std::memcpy(&a.v[(b * F + k + 1) * D], &r.returned[i * D], sizeof(float) * D);
  }
}

void Dlrm::sharded_backward(DlrmActivations& a, const float* dv) {
  const int K = int(cfg_.tables.size()), D = cfg_.dim, F = K + 1;
  dlrm::Routing& r = a.routing;
  GroupComm* comm = cfg_.dp_size > 1 ? dp_comm_ : nullptr;
  // The vectors' gradients go to their owners in the order the lookups went.
  for (size_t i = 0; i < r.sent(); ++i) {
    const size_t b = size_t(r.slots[i]) / size_t(K), k = size_t(r.slots[i]) % size_t(K);
    std::memcpy(&r.returned[i * D], &dv[(b * F + k + 1) * D], sizeof(float) * D);
  }
  std::vector<size_t> sc(r.send_counts), rc(r.recv_counts);
  for (auto& c : sc) c *= size_t(D);
  for (auto& c : rc) c *= size_t(D);
  dlrm::exchange(comm, r.returned.data(), sc, r.served.data(), rc, tensor::DType::kF32);
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(K));
  for (size_t i = 0; i < r.serve_count(); ++i) {
    const size_t k = size_t(r.recv_keys[2 * i]);
    const ParamInfo& t = params_[table_param(k)];
    const int64_t local = r.recv_keys[2 * i + 1] - t.row_begin;
    float* g = grad_data() + t.offset + size_t(local) * D;
    for (int d = 0; d < D; ++d) g[d] += r.served[i * D + d];
    rows[k].push_back(local);
  }
  for (int k = 0; k < K; ++k) mark_touched(table_param(size_t(k)), rows[k].data(), rows[k].size());
}

double Dlrm::train_flops(int B, int) const {
  double macs = 0;
  for (size_t i = 0; i + 1 < bot_dims_.size(); ++i) macs += double(bot_dims_[i]) * bot_dims_[i + 1];
  for (size_t i = 0; i + 1 < top_dims_.size(); ++i) macs += double(top_dims_[i]) * top_dims_[i + 1];
  const double F = double(cfg_.tables.size() + 1);
  macs += F * (F - 1) / 2 * cfg_.dim;
  return 6.0 * B * macs;
}

void Dlrm::eval_scores(const Activations& acts_base, EvalScores& out) const {
  const auto& a = dynamic_cast<const DlrmActivations&>(acts_base);
  const float* logits = a.top_pre.back().data();
  out.scores.insert(out.scores.end(), logits, logits + a.batch());
  out.labels.insert(out.labels.end(), a.targets.begin(), a.targets.begin() + a.batch());
}

}  // namespace ptrain::nn
