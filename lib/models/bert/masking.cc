// The masking function of masking.h.
#include "bert/masking.h"

namespace ptrain::models::bert {

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

namespace {
constexpr double kTwoPowMinus24 = 1.0 / double(1 << 24);
double unit24(uint64_t x) {
  return double(x >> 40) * kTwoPowMinus24;
}
}  // namespace

uint64_t MlmMasking::draw(int64_t epoch, int64_t window, int j) const {
  const uint64_t counter =
      (uint64_t(epoch) << 40) + uint64_t(window) * uint64_t(seq_len) + uint64_t(j);
  return splitmix64(counter ^ splitmix64(seed));
}

bool MlmMasking::masked(int64_t epoch, int64_t window, int j) const {
  return unit24(draw(epoch, window, j)) < mask_prob;
}

int32_t MlmMasking::apply(int64_t epoch, int64_t window, int j, int32_t token,
                          int32_t* target) const {
  const uint64_t x = draw(epoch, window, j);
  if (unit24(x) >= mask_prob) {
    *target = -1;
    return token;
  }
  *target = token;
  const uint64_t y = splitmix64(x);
  const double r = unit24(y);
  if (r < 0.8) return mask_token;
  if (r < 0.9) return int32_t(splitmix64(y) % uint64_t(vocab));
  return token;
}

}  // namespace ptrain::models::bert
