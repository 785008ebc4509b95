// The GPT-2 merges (third_party/gpt2/vocab.bpe, gzip-compressed at build time) built into a
// program: gpt2_vocab.cc, an object library (ptrain_gpt2) that the ptrain binary links,
// registers them at start-up; the encoder follows from the merges (tokenizer.cc). Programs
// that never tokenize stay smaller.
#pragma once

#include <string_view>

namespace ptrain::data::detail {

// Called by gpt2_vocab.cc's static initializer with the bytes of vocab.bpe.gz.
void register_builtin_gpt2_merges(std::string_view vocab_bpe_gz);

}  // namespace ptrain::data::detail
