// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF), as Rust's str: it
// decides which names the seed's checkpoint walk accepts and what metadata.json may hold.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace nucleus::checkpoint {

bool is_valid_utf8(std::string_view s) noexcept;
// A C0 control or DEL: what a terminal acts on within ASCII.
constexpr bool is_ascii_control(std::uint32_t c) noexcept { return c < 0x20 || c == 0x7f; }
// s with every byte that does not start a valid sequence replaced by U+FFFD.
std::string to_valid_utf8(std::string_view s);
// Text from a checkpoint folder, CRIU or an error message, fit to show: bytes that are not UTF-8
// as \xNN; for a terminal (or a log) also whatever it would act on (a folder someone else made
// must not move the cursor, rewrite a line or retitle the window): C0 controls and DEL as \n,
// \r, \t or \xNN, C1 controls and bidirectional controls as \uNNNN, the backslash doubled so
// that no escape can be forged. For JSON (terminal false) the bytes that are not UTF-8 alone: the
// writer escapes the rest. The CLI shows text through it, and the C API's messages are made of it.
std::string printable(std::string_view s, bool terminal = true);

}  // namespace nucleus::checkpoint
