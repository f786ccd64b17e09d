// A migration's commit, proven: the receiver sends a fresh nonce as the connection opens, and the
// source's commit carries a MAC (HMAC key) or an Ed25519 signature, by the key that signed the
// checkpoint, over that nonce and the checkpoint's signature. So a tree runs on the receiver only
// when the holder of its signing key commits this checkpoint on this connection: not from an old
// stream replayed, nor on a commit forged by whoever can reach the receiver's port.
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

}  // namespace nucleus::checkpoint::transfer
