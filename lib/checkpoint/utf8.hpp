// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF), as Rust's str: it
// decides which names the seed's checkpoint walk accepts and what metadata.json may hold.
#pragma once

#include <string>
#include <string_view>

namespace nucleus::checkpoint {

bool is_valid_utf8(std::string_view s) noexcept;
// s with every byte that does not start a valid sequence replaced by U+FFFD.
std::string to_valid_utf8(std::string_view s);

}  // namespace nucleus::checkpoint
