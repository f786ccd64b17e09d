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
// order, each file with what its manifest line lists: how many chunk digests, and the file digest
// they make, which stand in for its bytes. It holds no manifest line, so the lines may be read one
// at a time (a transfer's, spooled until they are authenticated).
class ManifestCheck {
 public:
  // `signature`'s manifest, if it has one, is not used: it has `lines` lines. `key` (the HMAC key,
  // or the public key the signature names) must outlive the check.
  ManifestCheck(TreeKey key, ChunkedSignature signature, std::size_t lines);
  void folder(std::string_view rel) { mac_.folder(rel); }
  void link(std::string_view rel, std::string_view target) { mac_.link(rel, target); }
  // The manifest line (from 0) the next file takes, or none once the lines no longer fit the files:
  // they are only counted from there on, the first misfit being what authenticate reports.
  std::optional<std::size_t> next_line();
  // The file that took `line`, which lists `chunks` digests making `file_digest`; false if they
  // cannot be its chunks.
  bool file(std::string_view rel, std::uint64_t size, std::size_t line, std::uint64_t chunks,
            const Sha256::Digest& file_digest);
  std::uint64_t chunk_size() const noexcept { return signature_.chunk_size; }
  // Status::integrity unless the listing is exactly what was signed.
  void authenticate();

 private:
  ChunkedSignature signature_;  // without its manifest
  ChunkedTreeMac mac_;
  std::size_t lines_, files_ = 0;
  std::string wrong_length_;  // the first line that does not fit its file
};

// Authenticates a format 3 signature against a listing of the tree given entry by entry in walk
// order: the folder's own walk (SignedManifest::authenticate). Each file's listed chunk digests
// stand in for its bytes, and are kept in the manifest it returns.
class ManifestListing {
 public:
  // `key` (the HMAC key, or the public key the signature names) must outlive the listing.
  ManifestListing(TreeKey key, ChunkedSignature signature);
  void folder(std::string_view rel) { check_.folder(rel); }
  void file(std::string_view rel, std::uint64_t size);
  void link(std::string_view rel, std::string_view target) { check_.link(rel, target); }  // a chain layer's parent link
  // Status::integrity unless the listing is exactly what was signed; the manifest otherwise.
  SignedManifest authenticate() &&;

 private:
  std::vector<std::vector<Sha256::Digest>> lines_;  // the signature's manifest, moved into manifest_ file by file
  ManifestCheck check_;
  SignedManifest manifest_;
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
