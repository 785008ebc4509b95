#include "input_guard.h"

#include <sys/stat.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/parser.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "ptrain/core/error.h"

namespace ptrain::spec::detail {

std::string position(const std::string& display, int line0, int col0) {
  return fmt::format("{}:{}:{}", display, line0 + 1, col0 + 1);
}

std::string read_spec_file(const std::string& path, int64_t max_bytes) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT)
      throw ConfigError(fmt::format("{}: no such file", path),
                        "check the path; example specs are in configs/");
    throw ConfigError(fmt::format("{}: cannot read the spec: {}", path, std::strerror(err)),
                      "check the path and its permissions");
  }
  if (S_ISDIR(st.st_mode))
    throw ConfigError(fmt::format("{}: is a directory, not a spec file", path),
                      "name the .yaml file inside it");
  if (!S_ISREG(st.st_mode))
    throw ConfigError(fmt::format("{}: not a regular file", path), "name a .yaml file");
  if (st.st_size > max_bytes)
    throw ConfigError(
        fmt::format("{}: the file is {} bytes, over the {} byte limit for a spec", path,
                    static_cast<int64_t>(st.st_size), max_bytes),
        "a job spec is a few KB; keep data in data files and point data.path at them");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw ConfigError(fmt::format("{}: cannot open the spec: {}", path, std::strerror(errno)),
                      "check the file's permissions");
  std::string text;
  text.resize(static_cast<size_t>(st.st_size));
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  // The file may have grown between stat and read; never hold more than the limit.
  if (in.peek() != std::char_traits<char>::eof())
    throw ConfigError(fmt::format("{}: the file grew while it was read", path),
                      "write the spec completely, then run again");
  return text;
}

namespace {

// Length of the UTF-8 sequence starting at s[i], or 0 when it is not valid UTF-8.
size_t utf8_length(const std::string& s, size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  size_t n;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF)
    n = 2;
  else if (c >= 0xE0 && c <= 0xEF)
    n = 3;
  else if (c >= 0xF0 && c <= 0xF4)
    n = 4;
  else
    return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  return n;
}

// True when a line opens a block scalar (`key: |`, `- >-`, `key: |2 # note`).
bool opens_block_scalar(const std::string& line) {
  size_t end = line.find(" #");
  std::string body = line.substr(0, end);
  while (!body.empty() && (body.back() == ' ' || body.back() == '\r')) body.pop_back();
  size_t k = body.size();
  while (k > 0 && (body[k - 1] == '-' || body[k - 1] == '+' ||
                   std::isdigit(static_cast<unsigned char>(body[k - 1]))))
    --k;
  if (k == 0 || (body[k - 1] != '|' && body[k - 1] != '>')) return false;
  if (k == 1) return true;
  char before = body[k - 2];
  return before == ' ' || before == ':' || before == '-';
}

}  // namespace

void check_text(const std::string& text, const std::string& display) {
  int line = 0, col = 0;
  size_t i = 0;
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) i = 3;  // a UTF-8 byte order mark is fine
  for (; i < text.size();) {
    auto c = static_cast<unsigned char>(text[i]);
    bool control = (c < 0x20 && c != '\n' && c != '\r' && c != '\t') || c == 0x7F;
    size_t n = control ? 0 : utf8_length(text, i);
    if (n == 0)
      throw ConfigError(
          fmt::format("{}: not a YAML text file (byte 0x{:02x})", position(display, line, col), c),
          "a spec is UTF-8 text; check that the right file was given");
    if (c == '\n') {
      ++line;
      col = 0;
    } else {
      ++col;
    }
    i += n;
  }

  // Tabs may not indent YAML. Lines inside a block scalar (`|`, `>`) are content and may hold
  // tabs after their indentation.
  std::istringstream in(text);
  std::string l;
  int lineno = 0;
  int block_parent = -1;  // indentation of the line that opened a block scalar, -1 = none
  while (std::getline(in, l)) {
    size_t indent = l.find_first_not_of(' ');
    bool blank = l.find_first_not_of(" \t\r") == std::string::npos;
    if (block_parent >= 0 &&
        (blank || (indent != std::string::npos && static_cast<int>(indent) > block_parent))) {
      ++lineno;
      continue;
    }
    block_parent = -1;
    if (!blank && indent != std::string::npos && l[indent] == '\t')
      throw ConfigError(fmt::format("{}: tab used for indentation",
                                    position(display, lineno, static_cast<int>(indent))),
                        "YAML indents with spaces only; replace the tab with spaces");
    if (!blank && opens_block_scalar(l))
      block_parent = indent == std::string::npos ? 0 : static_cast<int>(indent);
    ++lineno;
  }
}

namespace {

// Computes, from the event stream alone, how many nodes the aliases would expand to.
class AliasGuard : public YAML::EventHandler {
 public:
  AliasGuard(std::string display, int64_t limit) : display_(std::move(display)), limit_(limit) {}

  YAML::Mark document_start;

  void OnDocumentStart(const YAML::Mark& mark) override {
    stack_.clear();
    document_start = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t anchor) override { leaf(anchor); }
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t anchor,
                const std::string&) override {
    leaf(anchor);
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    auto it = sizes_.find(anchor);
    int64_t size = it == sizes_.end() ? 1 : it->second;
    expanded_ += size;
    if (expanded_ > limit_)
      throw ConfigError(
          fmt::format("{}: aliases expand to more than {} nodes; refusing to expand them",
                      position(display_, mark.line, mark.column), limit_),
          "a job spec needs few anchors; write the values out instead of nesting aliases");
    add(size);
  }
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    stack_.push_back({anchor, 1});
  }
  void OnSequenceEnd() override { close(); }
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    stack_.push_back({anchor, 1});
  }
  void OnMapEnd() override { close(); }

 private:
  struct Open {
    YAML::anchor_t anchor;
    int64_t size;
  };
  void leaf(YAML::anchor_t anchor) {
    if (anchor != YAML::NullAnchor) sizes_[anchor] = 1;
    add(1);
  }
  void add(int64_t size) {
    if (!stack_.empty()) stack_.back().size += size;
  }
  void close() {
    Open done = stack_.back();
    stack_.pop_back();
    if (done.anchor != YAML::NullAnchor) sizes_[done.anchor] = done.size;
    add(done.size);
  }

  std::string display_;
  int64_t limit_;
  int64_t expanded_ = 0;
  std::vector<Open> stack_;
  std::map<YAML::anchor_t, int64_t> sizes_;
};

}  // namespace

void check_aliases(const std::string& text, const std::string& display, int64_t max_expanded) {
  std::istringstream in(text);
  AliasGuard guard(display, max_expanded);
  try {
    YAML::Parser parser(in);
    int documents = 0;
    while (true) {
      if (!parser.HandleNextDocument(guard)) break;
      if (++documents > 1)
        throw ConfigError(
            fmt::format("{}: a second YAML document starts here",
                        position(display, guard.document_start.line, guard.document_start.column)),
            "a spec is one document; remove the `---` separator and what follows");
    }
  } catch (const YAML::Exception& e) {
    throw ConfigError(
        fmt::format("{}: invalid YAML: {}", position(display, e.mark.line, e.mark.column), e.msg),
        "check the syntax on this line and the one before it");
  }
}

}  // namespace ptrain::spec::detail
