// Ed25519 keys for checkpoint signatures a receiver can verify but not forge: a host signs with
// its secret key; verifiers hold only public keys, in a trust folder (see KeyStore).
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include <nucleus/checkpoint_export.h>

namespace nucleus::checkpoint {

// Who made a signature: a holder of the HMAC key (which can verify and forge alike), or of an
// Ed25519 secret key. The values are the C API's nc_signing.
enum class SignatureKind : int { hmac_sha256 = 1, ed25519 = 2 };

class NC_EXPORT Ed25519PublicKey {
 public:
  static constexpr std::size_t size = 32;
  // The first 16 bytes of SHA-256 of the key: what a signature names its key by.
  static constexpr std::size_t id_size = 16;
  using Bytes = std::array<unsigned char, size>;
  using Id = std::array<unsigned char, id_size>;
  // The first line of a public key file; the key follows on one line in lowercase hex.
  static constexpr std::string_view file_header = "nucleus-checkpoint-ed25519-public 1";
  static constexpr std::size_t max_file_size = 4096;

  explicit Ed25519PublicKey(const Bytes& bytes) noexcept : bytes_(bytes) {}

  const Bytes& bytes() const noexcept { return bytes_; }
  Id id() const;
  std::string id_hex() const { return hex(id()); }
  static std::string hex(const Id& id);  // 32 lowercase hex digits, as signatures name keys

  // The text of a public key file: the header line, then the key's 64 hex digits and a newline.
  std::string to_file_text() const;
  // Strict: exactly to_file_text()'s form. Throws Error(Status::key) naming `source` otherwise.
  static Ed25519PublicKey parse_file_text(std::string_view text, std::string_view source);

 private:
  Bytes bytes_;
};

// A secret key in libsodium's guarded memory, held as HmacKey holds its bytes.
class NC_EXPORT Ed25519SecretKey {
 public:
  static constexpr std::size_t size = 64;       // libsodium's secret key: seed, then public key
  static constexpr std::size_t seed_size = 32;

  // From the 64-byte secret key (its public half must be the seed's) or the 32-byte seed; throws
  // Error(Status::key) for anything else.
  static Ed25519SecretKey from_bytes(std::span<const unsigned char> bytes);
  static Ed25519SecretKey generate();  // from libsodium's CSPRNG

  std::span<const unsigned char> bytes() const noexcept;  // the 64-byte secret key
  Ed25519PublicKey public_key() const;

 private:
  struct Deleter {
    void operator()(unsigned char* p) const noexcept;
  };
  explicit Ed25519SecretKey(std::unique_ptr<unsigned char[], Deleter> data) noexcept;
  std::unique_ptr<unsigned char[], Deleter> data_;
};

}  // namespace nucleus::checkpoint
