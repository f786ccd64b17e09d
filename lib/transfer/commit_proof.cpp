#include "transfer/commit_proof.hpp"

#include <sodium.h>

#include <nucleus/checkpoint/error.hpp>

#include "signature/hex.hpp"
#include "signature/sha256.hpp"

namespace nucleus::checkpoint::transfer {

namespace {

// The signed message: its own domain (no checkpoint signature's message begins so, and Ed25519
// here is pure where checkpoints use Ed25519ph), the nonce, the SHA-256 of the signature text, and
// what else is bound (of a fixed length for each kind of migration).
std::string commit_message(const CommitNonce& nonce, std::string_view signature_text, std::string_view bound) {
  static constexpr std::string_view domain{"nucleus-checkpoint-migration-commit\0", 36};
  Sha256 sha;
  sha.update(signature_text.data(), signature_text.size());
  const Sha256::Digest digest = sha.final();
  std::string message(domain);
  message.append(reinterpret_cast<const char*>(nonce.data()), nonce.size());
  message.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  message.append(bound);
  return message;
}

HmacSha256::Mac mac_of(const HmacKey& key, const std::string& message) {
  HmacSha256 mac(key.bytes());
  mac.update(message.data(), message.size());
  return mac.final();
}

Error bad_proof() {
  return Error(Status::integrity, "the source's commit does not prove that the checkpoint's signer sent it on this "
                                  "connection (a stream replayed, or a forged commit)");
}

}  // namespace

CommitNonce new_commit_nonce() {
  CommitNonce nonce;
  randombytes_buf(nonce.data(), nonce.size());
  return nonce;
}

std::string prove_commit(TreeKey key, const CommitNonce& nonce, std::string_view signature_text,
                         std::string_view bound) {
  const std::string message = commit_message(nonce, signature_text, bound);
  if (const HmacKey* hmac = key.get<HmacKey>()) return HmacSha256::to_hex(mac_of(*hmac, message));
  const Ed25519SecretKey* secret = key.get<Ed25519SecretKey>();
  if (!secret) throw Error(Status::internal, "a commit is proven with a secret key");
  std::array<unsigned char, crypto_sign_BYTES> signature{};
  crypto_sign_detached(signature.data(), nullptr, reinterpret_cast<const unsigned char*>(message.data()),
                       message.size(), secret->bytes().data());
  return to_lower_hex(signature);
}

void check_commit(TreeKey key, const CommitNonce& nonce, std::string_view signature_text, std::string_view proof,
                  std::string_view bound) {
  const std::string message = commit_message(nonce, signature_text, bound);
  if (const HmacKey* hmac = key.get<HmacKey>()) {
    const std::optional<HmacSha256::Mac> given = HmacSha256::from_hex(proof);
    if (!given || sodium_memcmp(given->data(), mac_of(*hmac, message).data(), given->size()) != 0) throw bad_proof();
    return;
  }
  const Ed25519PublicKey* public_key = key.get<Ed25519PublicKey>();
  if (!public_key) throw Error(Status::internal, "a commit is checked with the HMAC key or a public key");
  const auto signature = array_from_lower_hex<crypto_sign_BYTES>(proof);
  if (!signature || crypto_sign_verify_detached(signature->data(), reinterpret_cast<const unsigned char*>(message.data()),
                                                message.size(), public_key->bytes().data()) != 0)
    throw bad_proof();
}

}  // namespace nucleus::checkpoint::transfer
