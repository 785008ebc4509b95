// GPT: whole-model gradients against finite differences, the pipeline split, init and hooks.
#include "gpt/gpt.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>

#include "grad_check.h"
#include "ptrain/core/error.h"
#include "ptrain/nn/init.h"
#include "ptrain/tensor/ops.h"

using namespace ptrain;
using namespace ptrain::nn;
using namespace ptrain::nn::testing;

namespace {

GptConfig tiny_config() {
  GptConfig c;
  c.layers = 2;
  c.heads = 2;
  c.dim = 8;
  c.seq_len = 6;
  c.vocab = 11;
  return c;
}

struct TinyData {
  int B = 2, T = 5;
  std::vector<int32_t> tokens, targets;
  TinyData(int vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    for (int i = 0; i < B * T; ++i) tokens.push_back(static_cast<int32_t>(rng() % vocab));
    for (int i = 0; i < B * T; ++i) targets.push_back(static_cast<int32_t>(rng() % vocab));
    targets[3] = -1;  // an ignored position
  }
  Batch batch() const {
    Batch b;
    b.B = B;
    b.T = T;
    b.add("tokens", tensor::DType::kI32, {B, T}, tokens.data());
    b.add("targets", tensor::DType::kI32, {B, T}, targets.data());
    return b;
  }
};

// Weights large enough that every nonlinearity is exercised (init's 0.02 would make the model
// nearly linear and the gradients tiny).
void randomize(Model& m, uint32_t seed) {
  auto w = randn(m.num_params(), seed, 0.3f);
  for (size_t i = 0; i < m.params().size(); ++i) {
    const auto& p = m.params()[i];
    if (p.name.find("ln_") != std::string::npos && p.name.ends_with(".weight")) {
      for (size_t j = 0; j < p.numel; ++j) w[p.offset + j] += 1.0f;
    }
  }
  std::copy(w.begin(), w.end(), m.param_data());
}

}  // namespace

TEST(Gpt, ParameterNamesAndShapesFollowHuggingFace) {
  Gpt m(tiny_config());
  const auto& p = m.params();
  ASSERT_EQ(p.size(), 2 + 12 * 2 + 2u);
  EXPECT_EQ(p[0].name, "wte.weight");
  EXPECT_EQ(p[0].shape, (std::vector<int64_t>{11, 8}));
  EXPECT_EQ(p[1].name, "wpe.weight");
  EXPECT_EQ(p[4].name, "h.0.attn.c_attn.weight");
  EXPECT_EQ(p[4].shape, (std::vector<int64_t>{8, 24}));
  EXPECT_EQ(p[12].name, "h.0.mlp.c_proj.weight");
  EXPECT_EQ(p[12].shape, (std::vector<int64_t>{32, 8}));
  EXPECT_TRUE(p[12].decay);
  EXPECT_FALSE(p[13].decay);  // h.0.mlp.c_proj.bias
  EXPECT_EQ(p.back().name, "ln_f.bias");
  size_t total = 0;
  for (const auto& info : p) {
    EXPECT_EQ(info.offset, total) << info.name;
    total += info.numel;
  }
  EXPECT_EQ(total, m.num_params());
}

TEST(Gpt, GradientsMatchFiniteDifferences) {
  Gpt m(tiny_config());
  randomize(m, 1);
  TinyData data(11, 2);
  auto acts = m.make_activations(data.B, data.T);
  m.zero_grad();
  m.forward(data.batch(), *acts);
  m.backward(*acts, 1.0f);
  std::vector<float> analytic(m.grad_data(), m.grad_data() + m.num_params());
  // Float forward, double accumulation of the loss; eps large enough to rise above float noise.
  std::vector<double> fd(m.num_params());
  const float eps = 1e-2f;
  float* w = m.param_data();
  for (size_t i = 0; i < m.num_params(); ++i) {
    float keep = w[i];
    w[i] = keep + eps;
    double up = m.forward(data.batch(), *acts);
    w[i] = keep - eps;
    double down = m.forward(data.batch(), *acts);
    w[i] = keep;
    fd[i] = (up - down) / (2.0 * eps);
  }
  for (const auto& p : m.params()) {
    std::vector<float> a(analytic.begin() + p.offset, analytic.begin() + p.offset + p.numel);
    std::vector<double> f(fd.begin() + p.offset, fd.begin() + p.offset + p.numel);
    expect_grad_close(a, f, 3e-3, 2e-2, p.name);
  }
}

TEST(Gpt, TwoStagePipelineEqualsWholeModel) {
  GptConfig whole_cfg = tiny_config();
  whole_cfg.layers = 3;
  GptConfig s0 = whole_cfg, s1 = whole_cfg;
  s0.layer_end = 1;
  s0.has_head = false;
  s1.layer_begin = 1;
  s1.has_embedding = false;
  Gpt whole(whole_cfg), first(s0), last(s1);
  whole.init(7);
  first.init(7);
  last.init(7);
  TinyData data(11, 3);

  auto wa = whole.make_activations(data.B, data.T);
  whole.zero_grad();
  double whole_loss = whole.forward(data.batch(), *wa);
  whole.backward(*wa, 0.1f);

  auto fa = first.make_activations(data.B, data.T);
  auto la = last.make_activations(data.B, data.T);
  first.zero_grad();
  last.zero_grad();
  Batch b0 = data.batch();
  b0.remove("targets");
  EXPECT_EQ(first.forward(b0, *fa), 0.0);
  Batch b1 = data.batch();
  b1.remove("tokens");
  b1.input = fa->output();
  double split_loss = last.forward(b1, *la);
  last.backward(*la, 0.1f);
  first.backward(*fa, 0.1f, la->input_grad());

  EXPECT_NEAR(split_loss, whole_loss, 1e-6 * std::abs(whole_loss));
  for (size_t i = 0; i < whole.params().size(); ++i) {
    const auto& p = whole.params()[i];
    std::vector<double> expect(whole.grad_data() + p.offset,
                               whole.grad_data() + p.offset + p.numel);
    std::vector<float> got(p.numel, 0.0f);
    int i0 = first.find_param(p.name), i1 = last.find_param(p.name);
    ASSERT_TRUE(i0 >= 0 || i1 >= 0) << p.name;
    for (auto [m, idx] : {std::pair<Gpt*, int>{&first, i0}, {&last, i1}}) {
      if (idx < 0) continue;
      const auto& q = m->params()[idx];
      EXPECT_EQ(q.shape, p.shape);
      for (size_t j = 0; j < p.numel; ++j) {
        got[j] += m->grad_data()[q.offset + j];  // the tied wte sums over both stages
        EXPECT_EQ(m->param_data()[q.offset + j], whole.param_data()[p.offset + j]) << p.name;
      }
    }
    expect_grad_close(got, expect, 1e-7, 1e-5, p.name);
  }
}

TEST(Gpt, InitFollowsGpt2Recipe) {
  GptConfig c = tiny_config();
  c.dim = 64;
  c.heads = 4;
  c.layers = 8;
  Gpt m(c);
  m.init(1);
  auto stddev = [&](const std::string& name) {
    const auto& p = m.params()[m.find_param(name)];
    double s = 0;
    for (size_t j = 0; j < p.numel; ++j) s += std::pow(m.param_data()[p.offset + j], 2);
    return std::sqrt(s / p.numel);
  };
  EXPECT_NEAR(stddev("h.0.mlp.c_fc.weight"), 0.02, 0.001);
  EXPECT_NEAR(stddev("h.3.attn.c_proj.weight"), 0.02 / std::sqrt(16.0), 0.0005);
  EXPECT_NEAR(stddev("h.3.mlp.c_proj.weight"), 0.02 / std::sqrt(16.0), 0.0003);
  EXPECT_EQ(stddev("h.1.attn.c_attn.bias"), 0.0);
  const auto& ln = m.params()[m.find_param("h.2.ln_2.weight")];
  for (size_t j = 0; j < ln.numel; ++j) EXPECT_EQ(m.param_data()[ln.offset + j], 1.0f);
}

TEST(Gpt, InitDependsOnSeedAndNameOnly) {
  Gpt a(tiny_config()), b(tiny_config());
  a.init(5);
  b.init(5);
  EXPECT_TRUE(std::equal(a.param_data(), a.param_data() + a.num_params(), b.param_data()));
  b.init(6);
  EXPECT_FALSE(std::equal(a.param_data(), a.param_data() + a.num_params(), b.param_data()));
  // Same stream for the same name regardless of model: element 3 of h.1.mlp.c_fc.weight.
  std::vector<float> w(4);
  fill_normal(w.data(), 4, param_key(5, "h.1.mlp.c_fc.weight"), 0.0f, 0.02f);
  const auto& p = a.params()[a.find_param("h.1.mlp.c_fc.weight")];
  EXPECT_EQ(a.param_data()[p.offset + 3], w[3]);
}

TEST(Gpt, InitWritesTheReferenceValuesOverWhateverWasThere) {
  // Large enough for the threaded, vectorised fills (wte: 1M elements over 3 threads).
  GptConfig c = tiny_config();
  c.dim = 256;
  c.heads = 4;
  c.vocab = 4096;
  c.seq_len = 16;
  const int threads = tensor::cpu_threads();
  tensor::set_cpu_threads(3);
  Gpt m(c);
  std::fill(m.param_data(), m.param_data() + m.num_params(), std::nanf(""));
  m.init(1337);
  tensor::set_cpu_threads(threads);
  const float std_proj = 0.02f / std::sqrt(2.0f * static_cast<float>(c.layers));
  for (const auto& info : m.params()) {
    std::vector<float> want(info.numel);
    const std::string& n = info.name;
    if (n.find("ln_") != std::string::npos && n.ends_with(".weight"))
      std::fill(want.begin(), want.end(), 1.0f);
    else if (n.ends_with(".bias"))
      std::fill(want.begin(), want.end(), 0.0f);
    else
      fill_normal_reference(want.data(), want.size(), param_key(1337, n), 0.0f,
                            n.ends_with("c_proj.weight") ? std_proj : 0.02f);
    EXPECT_EQ(std::memcmp(want.data(), m.param_data() + info.offset, info.numel * sizeof(float)), 0)
        << n;
  }
}

TEST(Gpt, GradReadyHookReportsEveryParamOnceInReverseLayerOrder) {
  Gpt m(tiny_config());
  m.init(1);
  std::vector<size_t> order;
  m.set_grad_ready_hook([&](size_t i) { order.push_back(i); });
  TinyData data(11, 4);
  auto acts = m.make_activations(data.B, data.T);
  m.forward(data.batch(), *acts);
  m.backward(*acts, 1.0f);
  std::vector<size_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  std::vector<size_t> all(m.params().size());
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(sorted, all);
  auto pos = [&](const std::string& name) {
    return std::find(order.begin(), order.end(), static_cast<size_t>(m.find_param(name))) -
           order.begin();
  };
  EXPECT_LT(pos("ln_f.weight"), pos("h.1.mlp.c_fc.weight"));
  EXPECT_LT(pos("h.1.ln_1.weight"), pos("h.0.mlp.c_proj.weight"));
  EXPECT_LT(pos("h.0.ln_1.bias"), pos("wte.weight"));
}

TEST(Gpt, TrainingStepsLowerTheLoss) {
  GptConfig c = tiny_config();
  Gpt m(c);
  m.init(3);
  TinyData data(11, 5);
  for (int i = 0; i < data.B * data.T; ++i) data.targets[i] = (data.tokens[i] + 1) % 11;
  auto acts = m.make_activations(data.B, data.T);
  std::vector<float> mom(m.num_params()), var(m.num_params());
  double first = 0, last = 0;
  for (int step = 1; step <= 60; ++step) {
    m.zero_grad();
    double loss = m.forward(data.batch(), *acts) / (data.B * data.T);
    m.backward(*acts, 1.0f / (data.B * data.T));
    tensor::cpu_ops().adamw_update(m.param_data(), m.grad_data(), mom.data(), var.data(),
                                   m.num_params(), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, step);
    if (step == 1) first = loss;
    last = loss;
  }
  EXPECT_NEAR(first, std::log(11.0), 0.2);
  EXPECT_LT(last, 0.5 * first);
}

TEST(Gpt, BadConfigsAreConfigErrors) {
  GptConfig c = tiny_config();
  c.heads = 3;
  EXPECT_THROW(Gpt{c}, ConfigError);
  c = tiny_config();
  c.tp_size = 2;
  EXPECT_THROW(Gpt{c}, ConfigError);
  c = tiny_config();
  c.layer_end = 5;
  EXPECT_THROW(Gpt{c}, ConfigError);
  Gpt m(tiny_config());
  EXPECT_THROW(m.make_activations(1, 7), ConfigError);  // longer than seq_len
}

TEST(Gpt, TokenOutsideVocabularyIsAConfigError) {
  Gpt m(tiny_config());
  m.init(1);
  TinyData data(11, 6);
  data.tokens[4] = 11;
  auto acts = m.make_activations(data.B, data.T);
  EXPECT_THROW(m.forward(data.batch(), *acts), ConfigError);
}
