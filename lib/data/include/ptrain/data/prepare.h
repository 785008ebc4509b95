// `ptrain data prepare`: text files -> llm.c token files (token_stream.h's format) through a
// tokenizer, optionally holding out the last share of the tokens as an eval file.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ptrain::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // text files, tokenized in order
  std::string output;               // the train split, OUT.bin
  std::string tokenizer = "gpt2";   // bytes|gpt2
  // The last floor(tokens * f) tokens go to eval_path_for(output); f in [0, 1).
  double eval_fraction = 0;
  size_t chunk_bytes = size_t{1} << 20;  // text tokenized per progress update
  // Called after each chunk with (bytes done, bytes in all inputs).
  std::function<void(uint64_t, uint64_t)> progress;
};

struct PrepareResult {
  std::string train_path, eval_path;  // eval_path empty without an eval split
  int64_t train_tokens = 0, eval_tokens = 0;
  uint64_t bytes = 0;  // text read
  double seconds = 0;  // tokenizing and writing
};

// The eval file next to a train file, llm.c's naming: data/x.bin -> data/x_val.bin.
std::string eval_path_for(const std::string& output);

// With the gpt2 tokenizer every input starts with <|endoftext|> (50256), as llm.c's data
// scripts separate documents; bytes adds nothing. Throws ConfigError naming the input or output
// for a missing input, an output that is an input, an empty split, or a bad fraction.
PrepareResult prepare_tokens(const PrepareOptions& options);

}  // namespace ptrain::data
