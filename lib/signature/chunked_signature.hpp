// The chunked signature formats, specified in the README ("Signatures"). Version 2: an
// HMAC-SHA256 over the list of (kind, path, size, chunked digest) of every entry, in the tree
// walk's order. Version 3, the manifest format: the same records under its own header, and
// checkpoint.hmac lists every file's chunk digests as well (see signed_manifest.hpp). File
// digests are independent, so they are computed on every core, and even while CRIU is still
// writing the files (LiveDigests). Either version may instead be signed with Ed25519ph over the
// same records (behind a domain separator of its own), which verifiers check with a public key.
#pragma once

#include <sodium.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nucleus/checkpoint/ed25519.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>

#include "signature/chunked_digest.hpp"
#include "signature/hmac_sha256.hpp"

namespace nucleus::checkpoint {

class SignedManifest;

struct ChunkedSignature {
  static constexpr std::string_view header = "nucleus-checkpoint-signature 2";
  static constexpr std::string_view manifest_header = "nucleus-checkpoint-signature 3";
  static constexpr std::string_view family = "nucleus-checkpoint-signature ";  // any version
  static constexpr std::uint64_t default_chunk_size = 4 << 20;
  // From 1 MiB: the chunk size is read before anything is verified, and tiny chunks (a read and a
  // digest per 4 KiB) nearly triple verification's time. This library writes 4 MiB.
  static constexpr std::uint64_t min_chunk_size = 1 << 20, max_chunk_size = 1 << 30;
  // The most of checkpoint.hmac that is read in formats 1 and 2.
  static constexpr std::size_t max_text_size_without_manifest = 4096;
  // The most in format 3, from the limits on what a tree holds: a 64-digit digest for each
  // min_chunk_size of max_total_bytes(), and for each of max_entries a partial last chunk and a
  // newline, plus 4 KiB for the three lines above them. 126 MiB at the default limits.
  static std::uint64_t max_manifest_text_size();

  // How the third line begins: "hmac-sha256 HEX", or "ed25519 KEY-ID SIGNATURE-HEX".
  static constexpr std::string_view hmac_line = "hmac-sha256", ed25519_line = "ed25519";
  using Ed25519Signature = std::array<unsigned char, crypto_sign_BYTES>;

  SignatureFormat format = SignatureFormat::chunked;  // chunked (2) or manifest (3)
  std::uint64_t chunk_size = default_chunk_size;
  SignatureKind kind = SignatureKind::hmac_sha256;
  HmacSha256::Mac mac{};                 // hmac_sha256
  Ed25519PublicKey::Id key_id{};         // ed25519: the key that signed
  Ed25519Signature ed25519_signature{};  // ed25519
  // Format 3 only: each regular file's chunk digests, in walk order.
  std::vector<std::vector<Sha256::Digest>> manifest;

  static std::string_view header_of(SignatureFormat format);  // chunked or manifest
  // The content of checkpoint.hmac: three lines, "header", "chunk-size N", "hmac-sha256 HEX" (or
  // "ed25519 KEY-ID SIGNATURE-HEX"), then in format 3 a line of hex chunk digests per file.
  std::string to_text() const;
  // Strict; Status::integrity errors say what is malformed. A manifest is checked only for its
  // own form here: its lines are matched to files by SignedManifest.
  static ChunkedSignature parse(std::string_view text);
};

// Format 3's manifest checked for its form alone, a piece at a time as it arrives: lines of
// 64-digit lowercase hex digests, at most HmacTree::max_entries of them (a line per file), the last
// one terminated. Status::integrity saying what is malformed, at the first byte that is.
class ManifestForm {
 public:
  void feed(std::string_view text);
  std::size_t finish() const;  // the number of lines, once the whole manifest was fed

 private:
  std::size_t lines_ = 0;    // ended
  std::size_t length_ = 0;   // of the line being fed
  bool in_line_ = false;     // one was begun
  bool not_hex_ = false;     // it holds a byte that is not a lowercase hex digit (told after its length)
};

// The chunks a file of `size` bytes is cut into: what its manifest line lists.
constexpr std::uint64_t chunk_count(std::uint64_t size, std::uint64_t chunk_size) {
  return size / chunk_size + (size % chunk_size != 0);
}

// The key a chunked signature's records are signed or checked with: the HMAC key (both), an
// Ed25519 secret key (signs) or a trusted Ed25519 public key (checks). It refers to the key and
// owns nothing.
class TreeKey {
 public:
  TreeKey(const HmacKey& key) noexcept : key_(&key) {}           // converts: callers pass keys
  TreeKey(const Ed25519SecretKey& key) noexcept : key_(&key) {}  // converts
  TreeKey(const Ed25519PublicKey& key) noexcept : key_(&key) {}  // converts
  SignatureKind kind() const noexcept {
    return std::holds_alternative<const HmacKey*>(key_) ? SignatureKind::hmac_sha256 : SignatureKind::ed25519;
  }
  template <class Key>
  const Key* get() const noexcept {
    const auto* key = std::get_if<const Key*>(&key_);
    return key ? *key : nullptr;
  }

 private:
  std::variant<const HmacKey*, const Ed25519SecretKey*, const Ed25519PublicKey*> key_;
};

// The keys a verifier holds, each loaded only when a signature needs it: the HMAC key (the one
// given, or the key store's), and the trusted Ed25519 public keys of the store's trust folder (the
// default store's when an HMAC key is given).
class VerifyingKeys {
 public:
  VerifyingKeys(const HmacKey& key) noexcept : given_(&key) {}  // converts: callers pass keys
  VerifyingKeys(const KeyStore& store) : store_(store) {}       // converts
  // The key that checks `signature`: the HMAC key, or the trusted public key its key id names
  // (Status::integrity naming the id and the trust folder if there is none).
  TreeKey key_for(const ChunkedSignature& signature) const;
  const HmacKey& hmac() const;

 private:
  const HmacKey* given_ = nullptr;
  std::optional<KeyStore> store_;
  mutable std::optional<HmacKey> loaded_;            // loaded at the first need
  mutable std::optional<Ed25519PublicKey> trusted_;  // the last key found
};

// The authenticator of the chunked formats' record stream, fed record by record in walk order to
// one of two sinks: an HMAC keyed with the HMAC key, or an Ed25519ph signature (libsodium's
// multi-part crypto_sign) whose message begins with ed25519_domain and 0x00. Then come the
// header, 0x00 and the chunk size, then a record for each folder, file and parent link.
class ChunkedTreeMac {
 public:
  static constexpr std::string_view ed25519_domain = "nucleus-checkpoint-ed25519";

  ChunkedTreeMac(TreeKey key, SignatureFormat format, std::uint64_t chunk_size);
  void folder(std::string_view rel);
  void file(std::string_view rel, std::uint64_t size, const Sha256::Digest& file_digest);
  // A chain layer's parent link (the only symlink a walk accepts) and its target.
  void link(std::string_view rel, std::string_view target);
  // Signs: sets the signature's kind and its MAC, or its key id and Ed25519 signature. Needs the
  // HMAC key or an Ed25519 secret key.
  void sign(ChunkedSignature& signature);
  // Status::integrity unless `signature` is the records', by the MAC (constant-time) or the
  // public key. Needs the HMAC key or the public key the signature names.
  void check(const ChunkedSignature& signature);

 private:
  void update(const void* data, std::size_t size);
  void update_u64le(std::uint64_t value);
  void path_record(char kind, std::string_view rel);
  TreeKey key_;
  std::optional<HmacSha256> mac_;  // the HMAC sink
  crypto_sign_state ed25519_{};    // the Ed25519ph sink: a SHA-512 state of the records, no secret
};

// The text of dir_fd/checkpoint.hmac, read only up to the size its format allows (told from its
// first bytes). Status::integrity if the folder is unsigned or the file is larger.
std::string read_signature_text(int dir_fd);

// Status::integrity, saying the folder is not as signed, unless the MACs are equal; compared in
// constant time.
void require_same_mac(const HmacSha256::Mac& signed_mac, const HmacSha256::Mac& computed);

// Status::invalid unless `format` can carry a signature of `kind`: the seed format is HMAC-only.
void require_signable(SignatureFormat format, SignatureKind kind);

// Digests of files begun before signing (by LiveDigests while CRIU wrote them), by device and
// inode; signing takes them over and hashes only the rest.
using StartedDigests = std::map<std::pair<dev_t, ino_t>, ChunkedFileDigest>;

// The signature of the folder at root_fd (its top-level checkpoint.hmac left out) in a chunked
// format, chunked or manifest, made with the HMAC key or an Ed25519 secret key: its MAC or
// Ed25519 signature, and in format 3 its manifest. Only signing a dump passes started digests and
// twins; verification hashes every byte itself.
ChunkedSignature chunked_signature_of(int root_fd, TreeKey key, SignatureFormat format,
                                      std::uint64_t chunk_size, const HmacTree::Progress& progress,
                                      StartedDigests* started = nullptr, TwinChunks* twins = nullptr);

// Status::integrity unless `signature` is the folder's, checked with `key` (the HMAC key, or the
// public key the signature names). Verifying format 3 passes the manifest already authenticated:
// then each file must be the one listed, path and size, and every chunk is checked against it as
// it is hashed.
void verify_chunked(int root_fd, TreeKey key, const ChunkedSignature& signature, const HmacTree::Progress& progress,
                    const SignedManifest* expected = nullptr);

// Format 2's MAC of the folder at root_fd.
HmacSha256::Mac chunked_tree_mac(int root_fd, const HmacKey& key, std::uint64_t chunk_size,
                                 const HmacTree::Progress& progress, StartedDigests* started = nullptr,
                                 TwinChunks* twins = nullptr);

// Writes root_fd/checkpoint.hmac in a chunked format (chunked or manifest), atomically, signed
// with the HMAC key or an Ed25519 secret key.
void sign_chunked(int root_fd, TreeKey key, const HmacTree::Progress& progress,
                  StartedDigests* started = nullptr, TwinChunks* twins = nullptr,
                  SignatureFormat format = SignatureFormat::chunked);

}  // namespace nucleus::checkpoint
