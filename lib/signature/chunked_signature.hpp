// The chunked signature formats, specified in the README ("Signatures"). Version 2: an
// HMAC-SHA256 over the list of (kind, path, size, chunked digest) of every entry, in the tree
// walk's order. Version 3, the manifest format: the same records under its own header, and
// checkpoint.hmac lists every file's chunk digests as well (see signed_manifest.hpp). File
// digests are independent, so they are computed on every core, and even while CRIU is still
// writing the files (LiveDigests).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

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

  SignatureFormat format = SignatureFormat::chunked;  // chunked (2) or manifest (3)
  std::uint64_t chunk_size = default_chunk_size;
  HmacSha256::Mac mac{};
  // Format 3 only: each regular file's chunk digests, in walk order.
  std::vector<std::vector<Sha256::Digest>> manifest;

  static std::string_view header_of(SignatureFormat format);  // chunked or manifest
  // The content of checkpoint.hmac: three lines, "header", "chunk-size N", "hmac-sha256 HEX",
  // then in format 3 a line of hex chunk digests per file.
  std::string to_text() const;
  // Strict; Status::integrity errors say what is malformed. A manifest is checked only for its
  // own form here: its lines are matched to files by SignedManifest.
  static ChunkedSignature parse(std::string_view text);
};

// The chunks a file of `size` bytes is cut into: what its manifest line lists.
constexpr std::uint64_t chunk_count(std::uint64_t size, std::uint64_t chunk_size) {
  return size / chunk_size + (size % chunk_size != 0);
}

// The MAC of the chunked formats, fed record by record in walk order: the header, 0x00 and the
// chunk size first, then a record for each folder and file.
class ChunkedTreeMac {
 public:
  ChunkedTreeMac(const HmacKey& key, SignatureFormat format, std::uint64_t chunk_size);
  void folder(std::string_view rel);
  void file(std::string_view rel, std::uint64_t size, const Sha256::Digest& file_digest);
  HmacSha256::Mac final() { return mac_.final(); }

 private:
  void path_record(char kind, std::string_view rel);
  HmacSha256 mac_;
};

// The text of dir_fd/checkpoint.hmac, read only up to the size its format allows (told from its
// first bytes). Status::integrity if the folder is unsigned or the file is larger.
std::string read_signature_text(int dir_fd);

// Status::integrity, saying the folder is not as signed, unless the MACs are equal; compared in
// constant time.
void require_same_mac(const HmacSha256::Mac& signed_mac, const HmacSha256::Mac& computed);

// Digests of files begun before signing (by LiveDigests while CRIU wrote them), by device and
// inode; signing takes them over and hashes only the rest.
using StartedDigests = std::map<std::pair<dev_t, ino_t>, ChunkedFileDigest>;

// The signature of the folder at root_fd (its top-level checkpoint.hmac left out) in a chunked
// format, chunked or manifest: its MAC, and in format 3 its manifest. Only signing a dump passes
// started digests and twins; verification hashes every byte itself. Verifying format 3 passes
// the manifest already authenticated: then each file must be the one listed, path and size,
// every chunk is checked against it as it is hashed, and no manifest is returned.
ChunkedSignature chunked_signature_of(int root_fd, const HmacKey& key, SignatureFormat format,
                                      std::uint64_t chunk_size, const HmacTree::Progress& progress,
                                      StartedDigests* started = nullptr, TwinChunks* twins = nullptr,
                                      const SignedManifest* expected = nullptr);

// Format 2's MAC of the folder at root_fd.
HmacSha256::Mac chunked_tree_mac(int root_fd, const HmacKey& key, std::uint64_t chunk_size,
                                 const HmacTree::Progress& progress, StartedDigests* started = nullptr,
                                 TwinChunks* twins = nullptr);

// Writes root_fd/checkpoint.hmac in a chunked format (chunked or manifest), atomically.
void sign_chunked(int root_fd, const HmacKey& key, const HmacTree::Progress& progress,
                  StartedDigests* started = nullptr, TwinChunks* twins = nullptr,
                  SignatureFormat format = SignatureFormat::chunked);

}  // namespace nucleus::checkpoint
