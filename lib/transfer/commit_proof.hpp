// A migration's proofs, one each way.
//
// The commit: the receiver sends a fresh nonce as the connection opens, and the source's commit
// carries a MAC (HMAC key) or an Ed25519 signature, by the key that signed the checkpoint, over
// that nonce and the checkpoint's signature. So a tree runs on the receiver only when the holder of
// its signing key commits this checkpoint on this connection: not from an old stream replayed, nor
// on a commit forged by whoever can reach the receiver's port.
//
// The source: its answer to the greeting carries a fresh nonce of its own and a proof over both
// nonces and the greeting's bytes by the key it signs with (the HMAC key, or its Ed25519 key, which the receiver must trust).
// So the receiver takes a stream, and spends an import and a restore on it, only from a source
// holding a key it verifies with, on this connection: not from a stream replayed, nor from whoever
// can reach its port.
//
// The answers: the source answers the greeting with a fresh nonce of its own, and each of the
// receiver's answers once the source proved its key ("go" on) ends with a proof over both nonces and the
// answer's exact bytes: a MAC by the HMAC key that signed the checkpoint (both hosts hold it), or
// for an Ed25519-signed one, a signature by the receiver's own Ed25519 key, which the source must
// trust. So the source ends its tree only on an "ok" the receiver gave on this connection, and
// resumes it after the commit only on the receiver's own refusal: whoever sits on the path can cut
// the connection (the source then keeps its tree stopped and says so), but cannot answer for the
// receiver.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include "signature/chunked_signature.hpp"

namespace nucleus::checkpoint::transfer {

using CommitNonce = std::array<unsigned char, 32>;

CommitNonce new_commit_nonce();
// The proof, in lowercase hex, made with the HMAC key or an Ed25519 secret key. `bound`: what else
// the commit vouches for (post-copy: the page stream's keys, page_keys_bound), empty if nothing.
std::string prove_commit(TreeKey key, const CommitNonce& nonce, std::string_view signature_text,
                         std::string_view bound = {});
// Status::integrity unless `proof` is the proof for nonce, signature_text and bound by the HMAC key
// (compared in constant time) or by the Ed25519 public key.
void check_commit(TreeKey key, const CommitNonce& nonce, std::string_view signature_text, std::string_view proof,
                  std::string_view bound = {});

// The two nonces the receiver's answers are bound to.
struct AnswerNonces {
  CommitNonce receiver;  // its greeting's
  CommitNonce source;    // the source's answer to the greeting
};
// `answer` (one JSON object, no newline) with its proof appended as its last member,
// "proof":"<hex>", and a newline: proven with the HMAC key or the receiver's Ed25519 secret key.
std::string prove_answer(TreeKey key, const AnswerNonces& nonces, std::string_view answer);
// The answer `line` (its newline, if any, left out) carries as proven by the HMAC key or the receiver's Ed25519
// public key, its proof removed; Status::integrity if it carries none or another.
std::string check_answer(TreeKey key, const AnswerNonces& nonces, std::string_view line);

// The source's proof, in lowercase hex, for its answer to `greeting` (the receiver's line, without
// its newline): by the HMAC key or its Ed25519 secret key, the one it signs the checkpoint with.
std::string prove_source(TreeKey key, const AnswerNonces& nonces, std::string_view greeting);
// Status::integrity unless `proof` is the source's for `nonces` and `greeting` by the HMAC key
// (constant time) or the Ed25519 public key.
void check_source(TreeKey key, const AnswerNonces& nonces, std::string_view greeting, std::string_view proof);

}  // namespace nucleus::checkpoint::transfer
