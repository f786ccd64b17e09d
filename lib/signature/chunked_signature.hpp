// The chunked signature format (version 2), specified in the README ("Signatures"): an
// HMAC-SHA256 over the list of (kind, path, size, chunked digest) of every entry, in the tree
// walk's order. File digests are independent, so they are computed on every core, and even
// while CRIU is still writing the files (LiveDigests).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include <nucleus/checkpoint/hmac_tree.hpp>

#include "signature/chunked_digest.hpp"
#include "signature/hmac_sha256.hpp"

namespace nucleus::checkpoint {

struct ChunkedSignature {
  static constexpr std::string_view header = "nucleus-checkpoint-signature 2";
  static constexpr std::string_view family = "nucleus-checkpoint-signature ";  // any version
  static constexpr std::uint64_t default_chunk_size = 4 << 20;
  // From 1 MiB: the chunk size is read before anything is verified, and tiny chunks (a read and a
  // digest per 4 KiB) nearly triple verification's time. This library writes 4 MiB.
  static constexpr std::uint64_t min_chunk_size = 1 << 20, max_chunk_size = 1 << 30;

  std::uint64_t chunk_size = default_chunk_size;
  HmacSha256::Mac mac{};

  // The content of checkpoint.hmac: three lines, "header", "chunk-size N", "hmac-sha256 HEX".
  std::string to_text() const;
  // Strict; Status::integrity errors say what is malformed.
  static ChunkedSignature parse(std::string_view text);
};

// Digests of files begun before signing (by LiveDigests while CRIU wrote them), by device and
// inode; signing takes them over and hashes only the rest.
using StartedDigests = std::map<std::pair<dev_t, ino_t>, ChunkedFileDigest>;

// The chunked-format MAC of the folder at root_fd (its top-level checkpoint.hmac left out). Only
// signing a dump passes started digests and twins; verification hashes every byte itself.
HmacSha256::Mac chunked_tree_mac(int root_fd, const HmacKey& key, std::uint64_t chunk_size,
                                 const HmacTree::Progress& progress, StartedDigests* started = nullptr,
                                 TwinChunks* twins = nullptr);

// Writes root_fd/checkpoint.hmac in the chunked format, atomically.
void sign_chunked(int root_fd, const HmacKey& key, const HmacTree::Progress& progress,
                  StartedDigests* started = nullptr, TwinChunks* twins = nullptr);

}  // namespace nucleus::checkpoint
