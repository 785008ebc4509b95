// Embeds third_party/gpt2/encoder.json and vocab.bpe with the assembler's .incbin, so the
// binary (and its bundle) needs no vocabulary file at run time. PTRAIN_GPT2_DIR is set by CMake,
// which also makes this file depend on the two files.
#include "gpt2_vocab.h"

#ifndef PTRAIN_GPT2_DIR
#error "PTRAIN_GPT2_DIR must name the folder of encoder.json and vocab.bpe"
#endif

__asm__(
    ".pushsection .rodata\n"
    ".balign 16\n"
    "ptrain_gpt2_encoder_json_begin:\n"
    ".incbin \"" PTRAIN_GPT2_DIR
    "/encoder.json\"\n"
    "ptrain_gpt2_encoder_json_end:\n"
    ".balign 16\n"
    "ptrain_gpt2_vocab_bpe_begin:\n"
    ".incbin \"" PTRAIN_GPT2_DIR
    "/vocab.bpe\"\n"
    "ptrain_gpt2_vocab_bpe_end:\n"
    ".popsection\n");

extern "C" {
extern const char ptrain_gpt2_encoder_json_begin[], ptrain_gpt2_encoder_json_end[];
extern const char ptrain_gpt2_vocab_bpe_begin[], ptrain_gpt2_vocab_bpe_end[];
}

namespace ptrain::data::detail {

std::string_view builtin_gpt2_encoder_json() {
  return {ptrain_gpt2_encoder_json_begin,
          static_cast<size_t>(ptrain_gpt2_encoder_json_end - ptrain_gpt2_encoder_json_begin)};
}

std::string_view builtin_gpt2_vocab_bpe() {
  return {ptrain_gpt2_vocab_bpe_begin,
          static_cast<size_t>(ptrain_gpt2_vocab_bpe_end - ptrain_gpt2_vocab_bpe_begin)};
}

}  // namespace ptrain::data::detail
