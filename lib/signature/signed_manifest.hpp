// Format 3's manifest, authenticated: every signed file's path, size and chunk digests, so that a
// chunk can be checked on its own as it is read (a restore streaming images to CRIU refuses a bad
// chunk before CRIU reads it), and a small file before it is used, without hashing the whole
// folder first. Loading reads names, kinds and sizes only: no file's bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nucleus/checkpoint/key_store.hpp>

#include "signature/chunked_digest.hpp"
#include "signature/chunked_signature.hpp"
#include "signature/sha256.hpp"

namespace nucleus::checkpoint {

struct ManifestFile {
  std::string path;  // relative, '/'-joined, as in the walk
  std::uint64_t size = 0;
  std::vector<Sha256::Digest> chunks;
};

class SignedManifest {
 public:
  friend class ManifestListing;

  // Reads dir_fd/checkpoint.hmac; if it is format 3, walks the folder (names, kinds, sizes; no
  // file's bytes) and authenticates the manifest with its MAC or Ed25519 signature (the HMAC key
  // or the trusted public key it names, from `keys`). Status::integrity if anything does not match. std::nullopt if the folder is signed in format 1 or 2 (the caller falls back to
  // HmacTree::verify).
  static std::optional<SignedManifest> load(int dir_fd, const VerifyingKeys& keys);
  // load's first half, which needs no key: dir_fd/checkpoint.hmac read once and parsed if it is
  // format 3 (nothing verified), std::nullopt for formats 1 and 2; Status::integrity if the folder
  // is unsigned or the manifest malformed.
  static std::optional<ChunkedSignature> read_signature(int dir_fd);
  // load's second half, for a format 3 signature already parsed.
  static SignedManifest authenticate(int dir_fd, const VerifyingKeys& keys, ChunkedSignature signature);

  std::uint64_t chunk_size() const noexcept { return chunk_size_; }
  const std::vector<ManifestFile>& files() const noexcept { return files_; }  // walk order
  const ManifestFile* find(std::string_view path) const;                      // nullptr if no such file was signed

 private:
  SignedManifest() = default;

  std::uint64_t chunk_size_ = 0;
  std::vector<ManifestFile> files_;
  std::vector<std::size_t> by_path_;  // indexes into files_ in path order: walk order is not ("a/b" < "a.b")
};

// Authenticates a format 3 signature against a listing of the tree given entry by entry in walk
// order: the folder's own walk (SignedManifest::authenticate), or a transfer stream's listing,
// which arrives before any file byte. Each file's listed chunk digests stand in for its bytes.
class ManifestListing {
 public:
  // `key` (the HMAC key, or the public key the signature names) must outlive the listing.
  ManifestListing(TreeKey key, ChunkedSignature signature);
  void folder(std::string_view rel);
  void file(std::string_view rel, std::uint64_t size);
  void link(std::string_view rel, std::string_view target);  // a chain layer's parent link
  // Status::integrity unless the listing is exactly what was signed; the manifest otherwise.
  SignedManifest authenticate() &&;

 private:
  ChunkedSignature signature_;  // its manifest lines are moved into manifest_ as files are listed
  ChunkedTreeMac mac_;
  SignedManifest manifest_;
  std::size_t files_ = 0;
  std::string wrong_length_;  // the first line that does not fit its file
};

// Status::integrity (naming the file and the byte range) unless `data`, `size` bytes, is exactly
// chunk `index` of `file` as signed (size must be the chunk's full length).
void check_chunk(const ManifestFile& file, std::uint64_t chunk_size, std::uint64_t index, const void* data,
                 std::size_t size);

// Hashes the whole file read from fd (pread, from offset 0) on `threads` threads and checks every
// chunk and the size; Status::integrity naming the file otherwise.
void verify_file(int fd, const ManifestFile& file, std::uint64_t chunk_size, unsigned threads);

// For ChunkedFileDigest::finish of `file` into `digest`: checks each window's chunk digests
// against the signed ones as they come (Status::integrity at the first that differs), then calls
// `then`.
ChunkedFileDigest::BytesHashed checking_chunks(const ManifestFile& file, std::uint64_t chunk_size,
                                               const ChunkedFileDigest& digest,
                                               ChunkedFileDigest::BytesHashed then = {});

// HmacTree::verify of a format 3 signature: authenticates the manifest (no file's bytes read),
// then hashes every file on every core, refusing at the first chunk that differs.
void verify_with_manifest(int dir_fd, const VerifyingKeys& keys, ChunkedSignature signature,
                          const HmacTree::Progress& progress);

}  // namespace nucleus::checkpoint
