// Tokenizers that live outside ptrain_data register their factory here (tokenizer.cc).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "ptrain/data/tokenizer.h"

namespace ptrain::data::detail {

using TokenizerFactory = std::function<std::unique_ptr<Tokenizer>()>;

// Called from static initializers; make_tokenizer(name) then calls the factory.
void register_tokenizer(const std::string& name, TokenizerFactory factory);

}  // namespace ptrain::data::detail
