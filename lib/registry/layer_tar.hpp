// The image layer that carries a checkpoint: a tar (POSIX pax) of the checkpoint folder, its
// entries at the layer's root. Written by libarchive from the one checkpoint walk; read back by
// libarchive but extracted entry by entry here, never by libarchive's extract-to-disk, so that
// nothing but plain folders and regular files lands below the staging folder.
#pragma once

#include <cstdint>
#include <string>

namespace nucleus::checkpoint::registry {

struct LayerBlob {
  std::string digest;  // "sha256:" + hex of the bytes written
  std::uint64_t size = 0;
};

// Writes the checkpoint folder open at root_fd as an uncompressed tar to out_fd (from its current
// offset): folders 0700 and files 0600, owned by 0:0, dated the epoch, so that the same checkpoint
// always makes the same layer. A symlink (a chain layer's parent link) is refused (Status::invalid).
LayerBlob write_layer(int root_fd, int out_fd);

enum class LayerCompression { none, gzip, zstd };

// Extracts the tar layer open at layer_fd (read from offset 0) into the empty folder open at
// staging_fd. Accepted: folders and regular files whose names are plain relative paths (a "./"
// in front is allowed), within HmacTree's limits on entries, depth, path length and total bytes;
// they are created 0700 and 0600, whatever the tar says. Anything else (links, devices, FIFOs,
// absolute names, "..", a name listed twice, a sparse entry, a tar that is not in the compression
// given or is malformed) is refused with Status::integrity naming the entry.
void extract_layer(int layer_fd, LayerCompression compression, int staging_fd);

}  // namespace nucleus::checkpoint::registry
