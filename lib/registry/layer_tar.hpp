// The image layer that carries a checkpoint: a tar (POSIX pax) of the checkpoint folder, its
// entries at the layer's root, in the order a transfer stream sends them: checkpoint.hmac first
// (format 3 only), then checkpoint.listing (the tree's folders and files with their sizes, as a
// transfer stream's listing frames), then every folder and file in that order. A pull so
// authenticates the listing before it writes a byte, and checks every chunk before it writes it.
// Written by libarchive; read back by libarchive but extracted by the library itself, never by
// libarchive's extract-to-disk.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "signature/chunked_signature.hpp"

namespace nucleus::checkpoint::registry {

// The layer's second entry: not a file of the checkpoint, and not extracted by a pull.
inline constexpr std::string_view listing_entry = "checkpoint.listing";

struct LayerBlob {
  std::string digest;  // "sha256:" + hex of the bytes written
  std::uint64_t size = 0;
};

// Writes the checkpoint folder open at root_fd, whose checkpoint.hmac holds signature_text (format
// 3), as an uncompressed tar to out_fd (from its current offset): folders 0700 and files 0600,
// owned by 0:0, dated the epoch, so that the same checkpoint always makes the same layer. A
// symlink (a chain layer's parent link) is refused (Status::invalid); a file that changes size
// meanwhile is Status::integrity.
LayerBlob write_layer(int root_fd, std::string_view signature_text, int out_fd);

enum class LayerCompression { none, gzip, zstd };

// The layer's next bytes, empty at its end; valid until the next call. It throws to stop the
// reading (the exception leaves extract_layer as it was thrown).
using LayerSource = std::function<std::span<const char>()>;

// Extracts the layer read from `source` (in the compression given only, `compressed_size` bytes as
// its manifest says) into the empty folder open at staging_fd: checkpoint.hmac is parsed (format 3
// only), the listing authenticated with `keys`, and then only the listed folders and files are
// made, 0700 and 0600, each tar entry required to be the next listed one with its listed size,
// each chunk checked before it is written, checkpoint.hmac written last. What is taken from
// `source` and what it decompresses to are bounded: before the listing is authenticated by what a
// signature and a listing may take, after it by what the listed tree takes as a tar (compressed,
// plus 1/64 for framing). Anything else is Status::integrity naming the entry. It returns at the
// tar's end, which need not be the source's.
void extract_layer(const LayerSource& source, LayerCompression compression, std::uint64_t compressed_size,
                   int staging_fd, const VerifyingKeys& keys);

}  // namespace nucleus::checkpoint::registry
