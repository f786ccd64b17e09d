#include <nucleus/checkpoint/ed25519.hpp>

#include <sodium.h>

#include <algorithm>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "signature/hex.hpp"
#include "signature/sha256.hpp"
#include "signature/sodium.hpp"

namespace nucleus::checkpoint {

static_assert(Ed25519PublicKey::size == crypto_sign_PUBLICKEYBYTES && Ed25519SecretKey::size == crypto_sign_SECRETKEYBYTES &&
              Ed25519SecretKey::seed_size == crypto_sign_SEEDBYTES);

// --- Ed25519PublicKey ---

Ed25519PublicKey::Id Ed25519PublicKey::id() const {
  Sha256 sha;
  sha.update(bytes_.data(), bytes_.size());
  const Sha256::Digest digest = sha.final();
  Id id{};
  std::copy_n(digest.begin(), id.size(), id.begin());
  return id;
}

std::string Ed25519PublicKey::hex(const Id& id) { return to_lower_hex(id); }

std::string Ed25519PublicKey::to_file_text() const { return fmt::format("{}\n{}\n", file_header, to_lower_hex(bytes_)); }

Ed25519PublicKey Ed25519PublicKey::parse_file_text(std::string_view text, std::string_view source) {
  const auto malformed = [&] {
    return Error(Status::key, fmt::format("{} is not an Ed25519 public key file: it must be the line '{}' and then "
                                          "the key as {} lowercase hex digits on one line, as `nucleus-checkpoint "
                                          "keygen --ed25519` writes it",
                                          source, file_header, 2 * size));
  };
  if (text.size() != file_header.size() + 1 + 2 * size + 1 || !text.starts_with(file_header) ||
      text[file_header.size()] != '\n' || !text.ends_with('\n'))
    throw malformed();
  const auto bytes = array_from_lower_hex<size>(text.substr(file_header.size() + 1, 2 * size));
  if (!bytes) throw malformed();
  return Ed25519PublicKey(*bytes);
}

// --- Ed25519SecretKey ---

void Ed25519SecretKey::Deleter::operator()(unsigned char* p) const noexcept { free_key_bytes(p); }

Ed25519SecretKey::Ed25519SecretKey(std::unique_ptr<unsigned char[], Deleter> data) noexcept : data_(std::move(data)) {}

std::span<const unsigned char> Ed25519SecretKey::bytes() const noexcept { return {data_.get(), size}; }

Ed25519PublicKey Ed25519SecretKey::public_key() const {
  Ed25519PublicKey::Bytes bytes{};
  crypto_sign_ed25519_sk_to_pk(bytes.data(), data_.get());
  return Ed25519PublicKey(bytes);
}

Ed25519SecretKey Ed25519SecretKey::from_bytes(std::span<const unsigned char> bytes) {
  if (bytes.size() != size && bytes.size() != seed_size)
    throw Error(Status::key, fmt::format("an Ed25519 secret key is {} bytes (or its seed, {}), not {}", size,
                                         seed_size, bytes.size()));
  std::unique_ptr<unsigned char[], Deleter> data(alloc_key_bytes(size));
  unsigned char public_key[crypto_sign_PUBLICKEYBYTES];
  // The key pair is derived from the seed either way: a 64-byte key whose public half is not its
  // seed's is damaged, and would sign what no one can verify.
  crypto_sign_seed_keypair(public_key, data.get(), bytes.data());
  if (bytes.size() == size && sodium_memcmp(data.get(), bytes.data(), size) != 0)
    throw Error(Status::key, "the Ed25519 secret key is damaged: its public half is not its seed's");
  return Ed25519SecretKey(std::move(data));
}

Ed25519SecretKey Ed25519SecretKey::generate() {
  std::unique_ptr<unsigned char[], Deleter> data(alloc_key_bytes(size));
  unsigned char public_key[crypto_sign_PUBLICKEYBYTES];
  crypto_sign_keypair(public_key, data.get());
  return Ed25519SecretKey(std::move(data));
}

}  // namespace nucleus::checkpoint
