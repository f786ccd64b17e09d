// Lowercase hex, the one way signature and key files write bytes: written by libsodium, and read
// strictly (exactly 2 digits a byte, 0-9 and a-f only).
#pragma once

#include <sodium.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace nucleus::checkpoint {

inline std::string to_lower_hex(std::span<const unsigned char> bytes) {
  std::string hex(2 * bytes.size() + 1, '\0');
  sodium_bin2hex(hex.data(), hex.size(), bytes.data(), bytes.size());
  hex.pop_back();
  return hex;
}

// True if `hex` is exactly out.size() bytes in lowercase hex, then in `out`.
inline bool from_lower_hex(std::string_view hex, std::span<unsigned char> out) {
  const bool lower_hex =
      std::all_of(hex.begin(), hex.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
  std::size_t len = 0;
  return hex.size() == 2 * out.size() && lower_hex &&
         sodium_hex2bin(out.data(), out.size(), hex.data(), hex.size(), nullptr, &len, nullptr) == 0 &&
         len == out.size();
}

template <std::size_t N>
std::optional<std::array<unsigned char, N>> array_from_lower_hex(std::string_view hex) {
  std::array<unsigned char, N> bytes{};
  if (!from_lower_hex(hex, bytes)) return std::nullopt;
  return bytes;
}

}  // namespace nucleus::checkpoint
