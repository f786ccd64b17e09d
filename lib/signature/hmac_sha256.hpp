// Streaming HMAC-SHA256 from one of two well-kept implementations: OpenSSL's libcrypto, which
// uses the CPU's SHA extensions (about 4x libsodium's portable C here), when the library is built
// with it; otherwise libsodium. Both give the same bytes; libsodium stays for keys, randomness and
// constant-time comparison either way.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace nucleus::checkpoint {

class HmacSha256 {
 public:
  enum class Engine { sodium, openssl };
  using Mac = std::array<unsigned char, 32>;

  // OpenSSL when built in, unless NUCLEUS_CHECKPOINT_HMAC_ENGINE=sodium.
  static Engine default_engine();
  static bool available(Engine engine) noexcept;
  static std::string_view name(Engine engine) noexcept;

  explicit HmacSha256(std::span<const unsigned char> key, Engine engine = default_engine());
  ~HmacSha256();
  HmacSha256(const HmacSha256&) = delete;
  HmacSha256& operator=(const HmacSha256&) = delete;

  void update(const void* data, std::size_t size);
  void update_u64le(std::uint64_t value);  // 8 bytes, little-endian: how both formats encode sizes
  Mac final();

  // 64 lowercase hex digits, the way both formats store a MAC; from_hex accepts nothing else.
  static std::string to_hex(const Mac& mac);
  static std::optional<Mac> from_hex(std::string_view hex);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace nucleus::checkpoint
