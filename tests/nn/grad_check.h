// Helpers for gradient checks: central finite differences in double precision and a
// comparison that reports the worst element.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace ptrain::nn::testing {

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// d loss / d x[i] for every i, by central differences of a double-precision loss.
inline std::vector<double> fd_grad(const std::function<double(const std::vector<double>&)>& loss,
                                   std::vector<double> x, double eps = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double keep = x[i];
    x[i] = keep + eps;
    double up = loss(x);
    x[i] = keep - eps;
    double down = loss(x);
    x[i] = keep;
    g[i] = (up - down) / (2 * eps);
  }
  return g;
}

// Every |analytic - reference| <= atol + rtol * |reference|.
inline void expect_grad_close(const std::vector<float>& analytic,
                              const std::vector<double>& reference, double atol, double rtol,
                              const std::string& what) {
  ASSERT_EQ(analytic.size(), reference.size()) << what;
  size_t bad = 0, worst = 0;
  double worst_err = 0;
  for (size_t i = 0; i < analytic.size(); ++i) {
    double err = std::abs(analytic[i] - reference[i]);
    double tol = atol + rtol * std::abs(reference[i]);
    if (err > tol) ++bad;
    if (err - tol > worst_err) {
      worst_err = err - tol;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << analytic.size()
                     << " elements off; worst at " << worst << ": analytic " << analytic[worst]
                     << " vs reference " << reference[worst];
}

}  // namespace ptrain::nn::testing
