// HMAC-SHA256 over a whole checkpoint folder, in one of three signature formats (the README's
// "Signatures" specifies them). Verification recognises each.
//
// The seed format (nucleus-container 0.3.3's, byte for byte): the MAC covers a depth-first walk
// in byte order of names: for a folder "D\0" + relative path + "\0", then its contents; for a
// file "F\0" + relative path + "\0" + its size as u64 little-endian + its bytes. Only the
// top-level checkpoint.hmac is left out. The MAC is stored there as 64 lowercase hex digits.
// Symlinks, FIFOs, sockets, devices and names that are not UTF-8 are integrity failures;
// everything is opened relative to its parent's descriptor with O_NOFOLLOW, so a walk never
// leaves the tree.
//
// The chunked format (version 2): an HMAC over the list of (kind, path, size, digest) of every
// entry, where a file's digest is SHA-256 over the SHA-256 of each chunk (4 MiB as written here).
// Chunks are hashed on every core, and a dump hashes its images while CRIU writes them.
//
// The manifest format (version 3): the chunked format's MAC, and checkpoint.hmac lists every
// file's chunk digests too, so that once the list is authenticated each chunk can be checked on
// its own (a restore checks the images it streams to CRIU): what new checkpoints get.
//
// Formats 2 and 3 may be signed with an Ed25519 secret key instead of the HMAC key: verifiers then
// need only the public key, in their key store's trust folder, and cannot forge a signature.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include <nucleus/checkpoint/key_store.hpp>

namespace nucleus::checkpoint {

enum class SignatureFormat : int {
  seed = 1,      // nucleus-container 0.3.3's serial MAC over the sorted tree
  chunked = 2,   // per-file chunked SHA-256 digests bound by one HMAC
  manifest = 3,  // chunked, and every chunk's digest listed under the HMAC, so that each chunk can be
                 // checked alone (a restore streaming images to CRIU); the default for dumps
};

// Who signed a checkpoint, from its checkpoint.hmac alone (nothing verified).
struct CheckpointSigner {
  SignatureKind kind = SignatureKind::hmac_sha256;
  std::string key_id;  // Ed25519: the public key's id (Ed25519PublicKey::id_hex); empty for HMAC
};

class NC_EXPORT HmacTree {
 public:
  static constexpr const char* signature_file = "checkpoint.hmac";
  // Limits on what a walk accepts; beyond them a tree is an integrity failure, not a resource sink.
  static constexpr int max_depth = 64;                   // folders nested below the checkpoint folder
  static constexpr std::size_t max_entries = 1000000;    // files and folders in the whole tree
  static constexpr std::size_t max_path_length = 4096;   // bytes of a relative path
  // Bytes of files (the sum of their sizes) that signing or verifying hashes for one tree, and the
  // share of them that may be holes of sparse files (bytes not allocated on disk, which cost
  // whoever made them nothing; CRIU writes its images densely). Both are checked from the sizes
  // before any byte is hashed, so a hostile tree costs minutes at most: 1 TiB, more than the
  // memory of nearly any machine whose processes a checkpoint holds, hashes in about 7 minutes at
  // 2.7 GB/s; its holes allowance, a sixteenth (64 GiB), in about 25 s.
  static constexpr std::uint64_t default_max_total_bytes = std::uint64_t{1} << 40;
  static constexpr std::uint64_t max_holes_share = 16;
  // The byte limit in force, for the whole process: the last set_max_total_bytes (0 goes back to
  // the default), else $NUCLEUS_CHECKPOINT_MAX_BYTES (decimal bytes), else default_max_total_bytes.
  // Throws Error(Status::invalid) if the variable is not a positive decimal number.
  static std::uint64_t max_total_bytes();
  static void set_max_total_bytes(std::uint64_t bytes) noexcept;
  // Called from the calling thread as file bytes are hashed, with the running total: after each
  // read of up to 1 MiB in the seed format, each window of up to 64 chunks in the chunked one.
  using Progress = std::function<void(std::uint64_t bytes_hashed)>;

  // Lowercase hex seed-format HMAC of the folder at dir. Throws Error(Status::integrity) for a tree it
  // refuses, Error(Status::not_found/io) when dir cannot be read.
  static std::string compute(const std::filesystem::path& dir, const HmacKey& key,
                     const Progress& progress = {});
  static std::string compute(int dir_fd, const HmacKey& key,
                     const Progress& progress = {});

  // Writes dir/checkpoint.hmac atomically (temp file 0600, fsync, rename, fsync the folder): sign
  // in the seed format, sign_as in the one given.
  static void sign(const std::filesystem::path& dir, const HmacKey& key,
                     const Progress& progress = {});
  static void sign(int dir_fd, const HmacKey& key,
                     const Progress& progress = {});
  static void sign_as(const std::filesystem::path& dir, const HmacKey& key, SignatureFormat format,
                     const Progress& progress = {});
  static void sign_as(int dir_fd, const HmacKey& key, SignatureFormat format,
                     const Progress& progress = {});
  // Signed with an Ed25519 secret key, in the chunked or manifest format (Status::invalid for the
  // seed format, which is HMAC-only).
  static void sign_as(const std::filesystem::path& dir, const Ed25519SecretKey& key, SignatureFormat format,
                      const Progress& progress = {});
  static void sign_as(int dir_fd, const Ed25519SecretKey& key, SignatureFormat format,
                      const Progress& progress = {});

  // The format dir/checkpoint.hmac is written in, from its text alone (nothing is verified).
  // Throws Error(Status::integrity) if the folder is unsigned or the signature malformed.
  static SignatureFormat format_of(const std::filesystem::path& dir);
  static SignatureFormat format_of(int dir_fd);
  // Which kind of key signed dir, and which Ed25519 key, from its text alone (nothing verified);
  // throws as format_of.
  static CheckpointSigner signer_of(const std::filesystem::path& dir);
  static CheckpointSigner signer_of(int dir_fd);

  // Throws Error(Status::integrity) unless dir/checkpoint.hmac holds the folder's MAC, in any of
  // the formats (compared in constant time), or its Ed25519 signature by a key in the trust folder
  // of the default key store.
  static void verify(const std::filesystem::path& dir, const HmacKey& key,
                     const Progress& progress = {});
  static void verify(int dir_fd, const HmacKey& key,
                     const Progress& progress = {});
  // As above with the store's key, or for an Ed25519 signature the key the signature names in the
  // store's trust folder, loaded only once the folder is known to carry a signature: an unsigned
  // folder is an integrity failure even where there is no key.
  static void verify(const std::filesystem::path& dir, const KeyStore& store,
                     const Progress& progress = {});
  static void verify(int dir_fd, const KeyStore& store,
                     const Progress& progress = {});
};

}  // namespace nucleus::checkpoint
