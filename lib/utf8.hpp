// Strict UTF-8 validation (no overlong forms, no surrogates, nothing above U+10FFFF), matching
// Rust's str, which decides which names the seed's checkpoint walk accepts.
#pragma once

#include <string_view>

namespace nucleus::checkpoint {

bool is_valid_utf8(std::string_view s) noexcept;

}  // namespace nucleus::checkpoint
