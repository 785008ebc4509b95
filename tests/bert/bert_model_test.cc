// BERT's layers against naive double-precision references and finite differences, the whole
// model's gradients, Hugging Face names and shapes, the masking function's first values, and
// the padded vocabulary split.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "bert/bert.h"
#include "bert/bert_layers.h"
#include "bert/masking.h"
#include "nn/grad_check.h"
#include "ptrain/core/error.h"
#include "ptrain/models/registry.h"
#include "ptrain/spec/plan.h"
#include "ptrain/spec/spec.h"
#include "ptrain/tensor/ops.h"
#include "shared/vocab_parallel.h"

using namespace ptrain;
using namespace ptrain::nn;
using namespace ptrain::nn::testing;

namespace {

// --- naive references, in double ---

std::vector<double> ref_layernorm(const std::vector<double>& x, const std::vector<double>& w,
                                  const std::vector<double>& b, int N, int C, double eps) {
  std::vector<double> y(x.size());
  for (int n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += x[n * C + c] / C;
    for (int c = 0; c < C; ++c) v += (x[n * C + c] - m) * (x[n * C + c] - m) / C;
    for (int c = 0; c < C; ++c)
      y[n * C + c] = (x[n * C + c] - m) / std::sqrt(v + eps) * w[c] + b[c];
  }
  return y;
}

// q|k|v concatenated: [3, B*T, NH*HD]; out [B*T, NH*HD]; every query sees every key.
std::vector<double> ref_attention(const std::vector<double>& qkv, int B, int T, int NH, int HD) {
  const int C = NH * HD, N = B * T;
  const double* q = qkv.data();
  const double* k = q + N * C;
  const double* v = k + N * C;
  std::vector<double> out(size_t(N) * C, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < T; ++i) {
        std::vector<double> s(T);
        double mx = -1e300, sum = 0;
        for (int j = 0; j < T; ++j) {
          double d = 0;
          for (int c = 0; c < HD; ++c)
            d += q[(b * T + i) * C + h * HD + c] * k[(b * T + j) * C + h * HD + c];
          s[j] = d / std::sqrt(double(HD));
          mx = std::max(mx, s[j]);
        }
        for (int j = 0; j < T; ++j) sum += (s[j] = std::exp(s[j] - mx));
        for (int j = 0; j < T; ++j)
          for (int c = 0; c < HD; ++c)
            out[(b * T + i) * C + h * HD + c] += s[j] / sum * v[(b * T + j) * C + h * HD + c];
      }
  return out;
}

double dot(const std::vector<double>& a, const std::vector<float>& r) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * r[i];
  return s;
}

}  // namespace

TEST(BertLayers, AttentionMatchesNaiveReferenceAndSeesEveryPosition) {
  const int B = 2, T = 5, NH = 2, HD = 3, C = NH * HD, N = B * T;
  auto qkv = randn(3 * size_t(N) * C, 1);
  std::vector<float> out(size_t(N) * C), probs(size_t(B) * NH * T * T);
  bert::attention_forward(tensor::cpu_ops(), out.data(), probs.data(), qkv.data(),
                          qkv.data() + N * C, qkv.data() + 2 * N * C, {B, T, NH, HD});
  auto ref = ref_attention(to_double(qkv), B, T, NH, HD);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref[i], 1e-5) << i;
  // Bidirectional: the first query attends to the last key (a causal mask would give 0).
  EXPECT_GT(probs[T - 1], 1e-3);
}

TEST(BertLayers, AttentionGradientsMatchFiniteDifferences) {
  const int B = 2, T = 4, NH = 2, HD = 2, C = NH * HD, N = B * T;
  auto qkv = randn(3 * size_t(N) * C, 2);
  auto r = randn(size_t(N) * C, 3);
  std::vector<float> out(size_t(N) * C), probs(size_t(B) * NH * T * T), dqkv(qkv.size(), 0.0f),
      scratch(T * T);
  const float *q = qkv.data(), *k = q + N * C, *v = k + N * C;
  bert::attention_forward(tensor::cpu_ops(), out.data(), probs.data(), q, k, v, {B, T, NH, HD});
  bert::attention_backward(tensor::cpu_ops(), dqkv.data(), dqkv.data() + N * C,
                           dqkv.data() + 2 * N * C, scratch.data(), r.data(), probs.data(), q, k, v,
                           {B, T, NH, HD});
  auto fd =
      fd_grad([&](const std::vector<double>& x) { return dot(ref_attention(x, B, T, NH, HD), r); },
              to_double(qkv));
  expect_grad_close(dqkv, fd, 1e-5, 1e-4, "attention dq|dk|dv");
}

TEST(BertLayers, LayerNormUsesItsEpsAndItsGradientsMatchFiniteDifferences) {
  const int N = 3, C = 5;
  auto x = randn(N * C, 4, 0.5f), w = randn(C, 5), bias = randn(C, 6), r = randn(N * C, 7);
  std::vector<float> y(N * C), mean(N), rstd(N), dx(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
  bert::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), bias.data(), N, C,
                          1e-12f);
  auto ref = ref_layernorm(to_double(x), to_double(w), to_double(bias), N, C, 1e-12);
  for (int i = 0; i < N * C; ++i) EXPECT_NEAR(y[i], ref[i], 1e-5) << i;
  // A constant row: with eps 1e-12 (not the op table's 1e-5) the output is the bias exactly.
  std::vector<float> flat(C, 3.0f), out1(C), m1(1), r1(1);
  bert::layernorm_forward(out1.data(), m1.data(), r1.data(), flat.data(), w.data(), bias.data(), 1,
                          C, 1e-12f);
  EXPECT_FLOAT_EQ(out1[0], bias[0]);
  bert::layernorm_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(),
                           mean.data(), rstd.data(), N, C);
  const auto xd = to_double(x), wd = to_double(w), bd = to_double(bias);
  expect_grad_close(dx,
                    fd_grad(
                        [&](const std::vector<double>& v) {
                          return dot(ref_layernorm(v, wd, bd, N, C, 1e-12), r);
                        },
                        xd),
                    1e-5, 1e-4, "layernorm dx");
  expect_grad_close(dw,
                    fd_grad(
                        [&](const std::vector<double>& v) {
                          return dot(ref_layernorm(xd, v, bd, N, C, 1e-12), r);
                        },
                        wd),
                    1e-5, 1e-4, "layernorm dweight");
  expect_grad_close(db,
                    fd_grad(
                        [&](const std::vector<double>& v) {
                          return dot(ref_layernorm(xd, wd, v, N, C, 1e-12), r);
                        },
                        bd),
                    1e-5, 1e-4, "layernorm dbias");
}

TEST(BertLayers, GeluIsTheErfFormWithMatchingGradient) {
  std::vector<float> x = {-3.0f, -1.0f, -0.25f, 0.0f, 0.5f, 1.0f, 2.5f}, y(x.size()),
                     dy(x.size(), 1.0f), dx(x.size(), 0.0f);
  bert::gelu_erf_forward(y.data(), x.data(), x.size());
  // erf GELU(1) = 0.8413447; the tanh approximation gives 0.8411920.
  EXPECT_NEAR(y[5], 0.8413447, 1e-6);
  EXPECT_NEAR(y[1], -0.1586553, 1e-6);
  bert::gelu_erf_backward(dx.data(), x.data(), dy.data(), x.size());
  auto ref = [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); };
  for (size_t i = 0; i < x.size(); ++i)
    EXPECT_NEAR(dx[i], (ref(x[i] + 1e-6) - ref(x[i] - 1e-6)) / 2e-6, 1e-5) << x[i];
}

namespace {

BertConfig tiny_config() {
  BertConfig c;
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
  explicit TinyData(int vocab) {
    std::mt19937 rng(9);
    for (int i = 0; i < B * T; ++i) tokens.push_back(int32_t(rng() % vocab));
    for (int i = 0; i < B * T; ++i) targets.push_back(i % 3 == 0 ? int32_t(rng() % vocab) : -1);
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

void randomize(Model& m, uint32_t seed) {
  auto w = randn(m.num_params(), seed, 0.3f);
  for (const auto& p : m.params())
    if (p.name.ends_with("LayerNorm.weight"))
      for (size_t j = 0; j < p.numel; ++j) w[p.offset + j] += 1.0f;
  std::copy(w.begin(), w.end(), m.param_data());
}

}  // namespace

TEST(Bert, ParameterNamesAndShapesFollowHuggingFace) {
  BertConfig c = tiny_config();
  c.positions = 9;  // an init_from table with more rows than seq_len
  Bert m(c);
  const auto& p = m.params();
  ASSERT_EQ(p.size(), 5 + 16 * 2 + 5u);
  EXPECT_EQ(p[0].name, "bert.embeddings.word_embeddings.weight");
  EXPECT_EQ(p[0].shape, (std::vector<int64_t>{11, 8}));
  EXPECT_EQ(p[1].name, "bert.embeddings.position_embeddings.weight");
  EXPECT_EQ(p[1].shape, (std::vector<int64_t>{9, 8}));
  EXPECT_EQ(p[2].name, "bert.embeddings.token_type_embeddings.weight");
  EXPECT_EQ(p[2].shape, (std::vector<int64_t>{2, 8}));
  EXPECT_EQ(p[3].name, "bert.embeddings.LayerNorm.weight");
  EXPECT_EQ(p[5].name, "bert.encoder.layer.0.attention.self.query.weight");
  EXPECT_EQ(p[11].name, "bert.encoder.layer.0.attention.output.dense.weight");
  EXPECT_EQ(p[13].name, "bert.encoder.layer.0.attention.output.LayerNorm.weight");
  EXPECT_EQ(p[15].name, "bert.encoder.layer.0.intermediate.dense.weight");
  EXPECT_EQ(p[15].shape, (std::vector<int64_t>{32, 8}));
  EXPECT_EQ(p[17].name, "bert.encoder.layer.0.output.dense.weight");
  EXPECT_EQ(p[17].shape, (std::vector<int64_t>{8, 32}));
  EXPECT_EQ(p[20].name, "bert.encoder.layer.0.output.LayerNorm.bias");
  EXPECT_EQ(p[37].name, "cls.predictions.transform.dense.weight");
  EXPECT_EQ(p[39].name, "cls.predictions.transform.LayerNorm.weight");
  EXPECT_EQ(p[41].name, "cls.predictions.bias");
  EXPECT_EQ(p[41].shape, (std::vector<int64_t>{11}));
  EXPECT_EQ(m.find_param("cls.predictions.decoder.weight"), -1);  // tied to word_embeddings
}

TEST(Bert, GradientsMatchFiniteDifferences) {
  Bert m(tiny_config());
  randomize(m, 1);
  TinyData data(11);
  auto acts = m.make_activations(data.B, data.T);
  m.zero_grad();
  m.forward(data.batch(), *acts);
  m.backward(*acts, 1.0f);
  std::vector<float> analytic(m.grad_data(), m.grad_data() + m.num_params());
  std::vector<double> fd(m.num_params());
  const float eps = 1e-2f;
  float* w = m.param_data();
  for (size_t i = 0; i < m.num_params(); ++i) {
    const float keep = w[i];
    w[i] = keep + eps;
    const double up = m.forward(data.batch(), *acts);
    w[i] = keep - eps;
    const double down = m.forward(data.batch(), *acts);
    w[i] = keep;
    fd[i] = (up - down) / (2.0 * eps);
  }
  for (const auto& p : m.params()) {
    std::vector<float> a(analytic.begin() + p.offset, analytic.begin() + p.offset + p.numel);
    std::vector<double> f(fd.begin() + p.offset, fd.begin() + p.offset + p.numel);
    expect_grad_close(a, f, 3e-3, 3e-2, p.name);
  }
}

TEST(Bert, TwoStagePipelineEqualsWholeModel) {
  Bert whole(tiny_config());
  BertConfig c0 = tiny_config(), c1 = tiny_config();
  c0.layer_end = 1;
  c0.has_head = false;
  c1.layer_begin = 1;
  c1.has_embedding = false;
  Bert s0(c0), s1(c1);
  whole.init(3);
  s0.init(3);
  s1.init(3);
  EXPECT_TRUE(s1.params()[0].tied_copy);
  EXPECT_EQ(s1.params()[0].name, "bert.embeddings.word_embeddings.weight");
  TinyData data(11);
  auto aw = whole.make_activations(data.B, data.T);
  auto a0 = s0.make_activations(data.B, data.T);
  auto a1 = s1.make_activations(data.B, data.T);
  const double lw = whole.forward(data.batch(), *aw);
  s0.forward(data.batch(), *a0);
  Batch b1 = data.batch();
  b1.input = a0->output();
  const double l1 = s1.forward(b1, *a1);
  EXPECT_NEAR(l1, lw, 1e-5 * std::abs(lw));
  EXPECT_GT(lw, 0);
}

TEST(Bert, EvalCountsMaskedPositionsPredictedRight) {
  Bert m(tiny_config());
  randomize(m, 2);
  TinyData data(11);
  auto acts = m.make_activations(data.B, data.T);
  m.set_training(false);
  m.forward(data.batch(), *acts);
  EvalSums sums;
  m.eval_sums(*acts, sums);
  EXPECT_EQ(sums["mlm_count"], 4);  // positions 0, 3, 6, 9 carry a target
  EXPECT_GE(sums["mlm_correct"], 0);
  EXPECT_LE(sums["mlm_correct"], 4);
}

TEST(Bert, BadConfigsAreConfigErrors) {
  BertConfig c = tiny_config();
  c.heads = 3;
  EXPECT_THROW(Bert{c}, ConfigError);
  c = tiny_config();
  c.positions = 4;  // fewer rows than seq_len 6
  EXPECT_THROW(Bert{c}, ConfigError);
}

// The first values of splitmix64 and of the masking for seed 7, T = 8, vocab 257, mask token
// 256, p = 0.15, computed independently by a short Python script (integers mod 2^64).
TEST(BertMasking, FirstValuesForAFixedSeed) {
  using models::bert::splitmix64;
  EXPECT_EQ(splitmix64(0), 0xe220a8397b1dcdafull);  // SplitMix64's first output for seed 0
  EXPECT_EQ(splitmix64(1), 0x910a2dec89025cc1ull);
  models::bert::MlmMasking mask;
  mask.seed = 7;
  mask.mask_prob = 0.15;
  mask.seq_len = 8;
  mask.vocab = 257;
  mask.mask_token = 256;
  struct Want {
    int64_t e, w;
    int j;
    int32_t input;
  };
  // (epoch, window, position) -> input for token (w*8 + j) % 100 + 32; the other positions of
  // windows 0..5 of epoch 0 are not masked.
  const std::vector<Want> want = {{0, 1, 4, 256}, {0, 2, 3, 256}, {0, 3, 3, 80},  {0, 3, 5, 256},
                                  {0, 3, 6, 256}, {0, 4, 4, 256}, {0, 5, 1, 256}, {0, 5, 6, 78},
                                  {2, 5, 3, 256}, {2, 5, 5, 256}};
  for (int64_t w = 0; w < 6; ++w)
    for (int j = 0; j < 8; ++j) {
      const int32_t token = int32_t((w * 8 + j) % 100 + 32);
      int32_t target = 0;
      const int32_t input = mask.apply(0, w, j, token, &target);
      auto it = std::find_if(want.begin(), want.end(),
                             [&](const Want& x) { return x.e == 0 && x.w == w && x.j == j; });
      if (it == want.end()) {
        EXPECT_EQ(target, -1) << w << "," << j;
        EXPECT_EQ(input, token) << w << "," << j;
      } else {
        EXPECT_EQ(target, token) << w << "," << j;
        EXPECT_EQ(input, it->input) << w << "," << j;
      }
    }
  int32_t target = 0;
  EXPECT_EQ(mask.apply(2, 5, 3, 75, &target), 256);
  EXPECT_EQ(target, 75);
  EXPECT_EQ(mask.apply(2, 5, 5, 77, &target), 256);
  EXPECT_EQ(mask.apply(0, 6, 3, 1, &target), 165);  // a random replacement
  int masked = 0;
  for (int64_t w = 0; w < 8; ++w)
    for (int j = 0; j < 8; ++j) masked += mask.masked(0, w, j) ? 1 : 0;
  EXPECT_EQ(masked, 11);
}

TEST(BertVocabSplit, UnevenVocabularyPadsTheLastRankAndRoundTrips) {
  auto p0 = VocabPart::of(257, 2, 0), p1 = VocabPart::of(257, 2, 1);
  EXPECT_EQ(p0.begin, 0);
  EXPECT_EQ(p0.size, 129);
  EXPECT_EQ(p1.begin, 129);
  EXPECT_EQ(p1.size, 128);
  EXPECT_EQ(p1.rows, 129);
  BertConfig c = tiny_config();
  c.vocab = 11;
  c.tp_size = 2;
  std::vector<float> full(11 * 8), back(11 * 8, -1.0f);
  for (size_t i = 0; i < full.size(); ++i) full[i] = float(i);
  for (int r = 0; r < 2; ++r) {
    c.tp_rank = r;
    Bert m(c);
    const ParamInfo& word = m.params()[0];
    EXPECT_EQ(word.shape, (std::vector<int64_t>{6, 8}));
    EXPECT_EQ(word.full_shape, (std::vector<int64_t>{11, 8}));
    std::vector<float> shard(word.numel, 0.0f);
    copy_shard_from_full(word, r, full.data(), shard.data());
    EXPECT_EQ(shard[0], float(r * 6 * 8));
    if (r == 1) {
      EXPECT_EQ(shard[5 * 8], 0.0f);  // the padding row stays empty
    }
    copy_shard_to_full(word, r, shard.data(), back.data());
  }
  EXPECT_EQ(back, full);
}

// The plan's figures (ptrain validate) count what the models of each rank hold.
TEST(BertFamily, PlanFiguresCountTheModelsParameters) {
  auto load = [](int tensor, int pipeline) {
    return spec::load_string(
        fmt::format("model: {{type: bert, layers: 4, heads: 4, dim: 16, seq_len: 8, vocab: 33}}\n"
                    "nodes: {{device: cpu, procs_per_node: {}}}\n"
                    "parallel: {{tensor: {}, pipeline: {}, microbatches: 2}}\n",
                    tensor * pipeline, tensor, pipeline),
        "plan.yaml");
  };
  spec::JobSpec one = load(1, 1);
  auto whole = models::make_model(one, tensor::Device::kCpu, 0, 0);
  EXPECT_EQ(spec::make_plan(one).parameters, int64_t(whole->num_params()));
  spec::JobSpec split = load(2, 2);
  const auto& family = models::family_of(split);
  const auto ranges = models::stage_ranges(split);
  for (int stage = 0; stage < 2; ++stage)
    for (int tp = 0; tp < 2; ++tp) {
      auto m = models::make_model(split, tensor::Device::kCpu, stage, tp);
      const int layers = ranges[size_t(stage)].second - ranges[size_t(stage)].first;
      EXPECT_EQ(family.stage_figures(split, stage, 0, layers, 1, 1, 4).parameters,
                int64_t(m->num_params()))
          << "stage " << stage << " tp " << tp;
    }
}
