// BERT's masked-language-model corruption as a pure function of (seed, epoch, window,
// position), so a run masks the same positions on any data-parallel split and after a resume
// (configs/README.md, "type: bert", documents it):
//   splitmix64(z): z += 0x9E3779B97F4A7C15; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
//                  z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31)  (mod 2^64)
//   position j of window w (tokens [w*T, (w+1)*T)) in epoch e:
//     x = splitmix64(((e << 40) + w*T + j) ^ splitmix64(seed));
//     masked iff (x >> 40) * 2^-24 < mask_prob; then y = splitmix64(x), r = (y >> 40) * 2^-24:
//     r < 0.8: the mask token; r < 0.9: the id splitmix64(y) mod vocab; else unchanged.
#pragma once

#include <cstdint>

namespace ptrain::models::bert {

uint64_t splitmix64(uint64_t z);

struct MlmMasking {
  uint64_t seed = 1;  // train.seed
  double mask_prob = 0.15;
  int seq_len = 1;  // T
  int vocab = 1;
  int mask_token = 0;

  // Whether position j of window w in epoch e is masked (a target).
  bool masked(int64_t epoch, int64_t window, int j) const;
  // The model's input at that position for the original token `token`; `*target` is `token`
  // where masked, -1 elsewhere.
  int32_t apply(int64_t epoch, int64_t window, int j, int32_t token, int32_t* target) const;

 private:
  uint64_t draw(int64_t epoch, int64_t window, int j) const;
};

}  // namespace ptrain::models::bert
