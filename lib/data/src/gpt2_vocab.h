// The GPT-2 vocabulary files (third_party/gpt2) built into the library by gpt2_vocab.cc.
#pragma once

#include <string_view>

namespace ptrain::data::detail {

std::string_view builtin_gpt2_encoder_json();  // encoder.json
std::string_view builtin_gpt2_vocab_bpe();     // vocab.bpe

}  // namespace ptrain::data::detail
