#include "checkpoint/utf8.hpp"

#include <cstdint>

#include <fmt/format.h>

namespace nucleus::checkpoint {

namespace {

// Length of the valid sequence at p, or 0 if none starts there.
std::size_t sequence_length(const unsigned char* p, const unsigned char* end) noexcept {
  const unsigned char c = *p;
  if (c < 0x80) return 1;
  std::size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c == 0xE0) { len = 3; lo = 0xA0; }
  else if (c == 0xED) { len = 3; hi = 0x9F; }  // no surrogates
  else if (c >= 0xE1 && c <= 0xEF) len = 3;
  else if (c == 0xF0) { len = 4; lo = 0x90; }
  else if (c >= 0xF1 && c <= 0xF3) len = 4;
  else if (c == 0xF4) { len = 4; hi = 0x8F; }
  else return 0;
  if (static_cast<std::size_t>(end - p) < len || p[1] < lo || p[1] > hi) return 0;
  for (std::size_t i = 2; i < len; ++i)
    if ((p[i] & 0xC0) != 0x80) return 0;
  return len;
}

// The code point of the valid sequence of len bytes at p.
std::uint32_t code_point(const unsigned char* p, std::size_t len) noexcept {
  std::uint32_t code = len == 1 ? p[0] : p[0] & (0x7f >> len);
  for (std::size_t i = 1; i < len; ++i) code = code << 6 | (p[i] & 0x3f);
  return code;
}

bool is_bidi_control(std::uint32_t c) noexcept {
  return c == 0x61c || c == 0x200e || c == 0x200f || (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069);
}

// Calls invalid(byte) for each byte of s that does not start a valid sequence, and
// valid(sequence, code point) for each valid sequence, in order.
template <typename Invalid, typename Valid>
void each_sequence(std::string_view s, Invalid&& invalid, Valid&& valid) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const std::size_t len = sequence_length(p, end);
    if (len == 0) {
      invalid(*p++);
      continue;
    }
    valid(std::string_view(reinterpret_cast<const char*>(p), len), code_point(p, len));
    p += len;
  }
}

}  // namespace

bool is_valid_utf8(std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const std::size_t len = sequence_length(p, end);
    if (len == 0) return false;
    p += len;
  }
  return true;
}

std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  each_sequence(
      s, [&](unsigned char) { out += "\xEF\xBF\xBD"; }, [&](std::string_view sequence, std::uint32_t) { out += sequence; });
  return out;
}

std::string printable(std::string_view s, bool terminal) {
  std::string out;
  out.reserve(s.size());
  each_sequence(
      s, [&](unsigned char byte) { out += fmt::format("\\x{:02x}", byte); },
      [&](std::string_view sequence, std::uint32_t c) {
        if (!terminal) out += sequence;
        else if (c == '\\') out += "\\\\";
        else if (c == '\n') out += "\\n";
        else if (c == '\r') out += "\\r";
        else if (c == '\t') out += "\\t";
        else if (is_ascii_control(c)) out += fmt::format("\\x{:02x}", c);
        else if ((c >= 0x80 && c <= 0x9f) || is_bidi_control(c)) out += fmt::format("\\u{:04x}", c);
        else out += sequence;
      });
  return out;
}

}  // namespace nucleus::checkpoint
