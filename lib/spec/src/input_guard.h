// Checks on raw spec text that must run before (or instead of) YAML parsing: file size and type,
// binary bytes, tab indentation, and alias bombs (refused before anything is expanded).
#pragma once

#include <cstdint>
#include <string>

namespace ptrain::spec::detail {

// At most this many nodes may be produced by expanding aliases in one spec.
inline constexpr int64_t kMaxAliasExpansion = 10000;

// Reads a spec file after checking that it exists, is a regular file and is at most
// kMaxSpecBytes; throws ConfigError naming the file otherwise.
std::string read_spec_file(const std::string& path, int64_t max_bytes);

// Refuses bytes that cannot be YAML text (NUL, control characters, invalid UTF-8) and tabs used
// for indentation, with the position of the first offender.
void check_text(const std::string& text, const std::string& display);

// Walks the YAML event stream (no node tree) and refuses a document whose aliases would expand
// to more than `max_expanded` nodes, or that holds more than one document. Parse errors come out
// as ConfigError with their position.
void check_aliases(const std::string& text, const std::string& display, int64_t max_expanded);

// "file:line:col" with 1-based line and column from yaml-cpp's 0-based mark.
std::string position(const std::string& display, int line0, int col0);

}  // namespace ptrain::spec::detail
