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

// The proof of message, in lowercase hex: a MAC by the HMAC key or a signature by an Ed25519 secret key.
std::string proof_of(TreeKey key, const std::string& message) {
  if (const HmacKey* hmac = key.get<HmacKey>()) return HmacSha256::to_hex(mac_of(*hmac, message));
  const Ed25519SecretKey* secret = key.get<Ed25519SecretKey>();
  if (!secret) throw Error(Status::internal, "a migration's proof is made with a secret key");
  std::array<unsigned char, crypto_sign_BYTES> signature{};
  crypto_sign_detached(signature.data(), nullptr, reinterpret_cast<const unsigned char*>(message.data()),
                       message.size(), secret->bytes().data());
  return to_lower_hex(signature);
}

// Whether proof is message's, by the HMAC key (compared in constant time) or an Ed25519 public key.
bool proves(TreeKey key, const std::string& message, std::string_view proof) {
  if (const HmacKey* hmac = key.get<HmacKey>()) {
    const std::optional<HmacSha256::Mac> given = HmacSha256::from_hex(proof);
    return given && sodium_memcmp(given->data(), mac_of(*hmac, message).data(), given->size()) == 0;
  }
  const Ed25519PublicKey* public_key = key.get<Ed25519PublicKey>();
  if (!public_key) throw Error(Status::internal, "a migration's proof is checked with the HMAC key or a public key");
  const auto signature = array_from_lower_hex<crypto_sign_BYTES>(proof);
  return signature && crypto_sign_verify_detached(signature->data(), reinterpret_cast<const unsigned char*>(message.data()),
                                                  message.size(), public_key->bytes().data()) == 0;
}

// A message bound to this connection: its own domain, both nonces, then `bytes`.
std::string connection_message(std::string_view domain, const AnswerNonces& nonces, std::string_view bytes) {
  std::string message(domain);
  message.append(reinterpret_cast<const char*>(nonces.receiver.data()), nonces.receiver.size());
  message.append(reinterpret_cast<const char*>(nonces.source.data()), nonces.source.size());
  message.append(bytes);
  return message;
}

// An answer's signed message: the answer's bytes.
std::string answer_message(const AnswerNonces& nonces, std::string_view answer) {
  return connection_message({"nucleus-checkpoint-migration-answer\0", 36}, nonces, answer);
}

// The source's: the SHA-256 of the receiver's greeting as the source read it (so that nothing in
// it, the key the receiver answers with included, is changed on the way unseen), then the kind of
// key it proves itself with, named as a signature's third line begins.
std::string source_message(TreeKey key, const AnswerNonces& nonces, std::string_view greeting) {
  Sha256 sha;
  sha.update(greeting.data(), greeting.size());
  const Sha256::Digest digest = sha.final();
  std::string bytes(reinterpret_cast<const char*>(digest.data()), digest.size());
  bytes += key.kind() == SignatureKind::hmac_sha256 ? ChunkedSignature::hmac_line : ChunkedSignature::ed25519_line;
  return connection_message({"nucleus-checkpoint-migration-source\0", 36}, nonces, bytes);
}

constexpr std::string_view proof_member = ",\"proof\":\"";

}  // namespace

CommitNonce new_commit_nonce() {
  CommitNonce nonce;
  randombytes_buf(nonce.data(), nonce.size());
  return nonce;
}

std::string prove_commit(TreeKey key, const CommitNonce& nonce, std::string_view signature_text,
                         std::string_view bound) {
  return proof_of(key, commit_message(nonce, signature_text, bound));
}

void check_commit(TreeKey key, const CommitNonce& nonce, std::string_view signature_text, std::string_view proof,
                  std::string_view bound) {
  if (!proves(key, commit_message(nonce, signature_text, bound), proof))
    throw Error(Status::integrity, "the source's commit does not prove that the checkpoint's signer sent it on this "
                                   "connection (a stream replayed, or a forged commit)");
}

std::string prove_answer(TreeKey key, const AnswerNonces& nonces, std::string_view answer) {
  if (!answer.ends_with('}')) throw Error(Status::internal, "an answer is a JSON object");
  std::string line(answer.substr(0, answer.size() - 1));
  line += proof_member;
  line += proof_of(key, answer_message(nonces, answer));
  line += "\"}\n";
  return line;
}

std::string check_answer(TreeKey key, const AnswerNonces& nonces, std::string_view line) {
  if (line.ends_with('\n')) line.remove_suffix(1);
  // The proof is the last member, in hex (no quote, no escape within): what precedes it, closed,
  // is the answer as the receiver wrote it, byte for byte.
  const std::size_t at = line.rfind(proof_member);
  if (at == std::string_view::npos || !line.ends_with("\"}"))
    throw Error(Status::integrity, "the receiver's answer carries no proof that the receiver gave it on this "
                                   "connection (an answer made on the way)");
  const std::string_view proof = line.substr(at + proof_member.size(), line.size() - at - proof_member.size() - 2);
  std::string answer(line.substr(0, at));
  answer += '}';
  if (!proves(key, answer_message(nonces, answer), proof))
    throw Error(Status::integrity, "the receiver's answer is not proven by the receiver on this connection (an "
                                   "answer forged or replayed on the way)");
  return answer;
}

std::string prove_source(TreeKey key, const AnswerNonces& nonces, std::string_view greeting) {
  return proof_of(key, source_message(key, nonces, greeting));
}

void check_source(TreeKey key, const AnswerNonces& nonces, std::string_view greeting, std::string_view proof) {
  if (!proves(key, source_message(key, nonces, greeting), proof))
    throw Error(Status::integrity, "the source's answer to the greeting is not proven for this connection by the key "
                                   "it names (a source with another key, an answer replayed from another "
                                   "connection, or a greeting changed on the way)");
}

}  // namespace nucleus::checkpoint::transfer
