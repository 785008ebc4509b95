// The per-job secret every coordinator RPC carries: made from OS randomness, compared in
// constant time, passed to children as PTRAIN_TOKEN (never on a command line, never logged).
#pragma once

#include <string>
#include <string_view>

namespace ptrain::rendezvous {

// Metadata key that carries the token on every RPC.
inline constexpr const char* kTokenMetadataKey = "x-ptrain-token";

// 32 random bytes from getrandom(2), hex-encoded (64 characters).
std::string make_token();

// True when a equals b; the time taken does not depend on where they differ.
bool token_equal(std::string_view a, std::string_view b);

}  // namespace ptrain::rendezvous
