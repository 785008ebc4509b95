// Embeds the gzip-compressed GPT-2 merges (vocab.bpe.gz, made from third_party/gpt2/vocab.bpe at
// build time) with the assembler's .incbin, so the binary (and its bundle) needs no vocabulary
// file at run time, and registers them with the tokenizer. PTRAIN_GPT2_MERGES_GZ is the file's
// path, set by CMake.
#include "gpt2_vocab.h"

#ifndef PTRAIN_GPT2_MERGES_GZ
#error "PTRAIN_GPT2_MERGES_GZ must name vocab.bpe.gz"
#endif

__asm__(
    ".pushsection .rodata\n"
    ".balign 16\n"
    "ptrain_gpt2_merges_gz_begin:\n"
    ".incbin \"" PTRAIN_GPT2_MERGES_GZ
    "\"\n"
    "ptrain_gpt2_merges_gz_end:\n"
    ".popsection\n");

extern "C" {
extern const char ptrain_gpt2_merges_gz_begin[], ptrain_gpt2_merges_gz_end[];
}

namespace {

[[maybe_unused]] const bool registered = [] {
  ptrain::data::detail::register_builtin_gpt2_merges(
      {ptrain_gpt2_merges_gz_begin,
       static_cast<size_t>(ptrain_gpt2_merges_gz_end - ptrain_gpt2_merges_gz_begin)});
  return true;
}();

}  // namespace
