// Moving a checkpoint through any descriptor (a file, a pipe, a socket) as one framed stream, the
// README's "Transfer stream": the exporter sends the signature and the listing of the folder, then
// every file chunk by chunk; the importer authenticates the listing before it accepts a file byte,
// checks each chunk as it arrives, and renames the folder into place only once all of it verified.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nucleus/checkpoint/key_store.hpp>
#include <nucleus/checkpoint_export.h>

namespace nucleus::checkpoint {

enum class Compression : int {
  none = 0,
  zstd = 1,  // libzstd's streaming format, level 1 (fast), a window of 512 KiB (importers accept up to 8 MiB)
};

struct TransferOptions {
  Compression compression = Compression::none;  // of what export_checkpoint writes; an import reads either
};

// Writes the checkpoint folder `dir`, signed in the manifest format (3), to fd from its current
// offset. It verifies nothing (the importer does); a folder signed in format 1 or 2, or a pre-dump
// layer with a parent, is refused (Status::invalid) before a byte is written. A reader that goes
// away fails it with Status::io, never with SIGPIPE (the calling thread blocks SIGPIPE while it
// writes; the process's signal dispositions are left alone).
NC_EXPORT void export_checkpoint(const std::filesystem::path& dir, int fd, const TransferOptions& options = {});

// Reads a stream written by export_checkpoint from fd into a new checkpoint folder `dir` (which
// must not exist, or be an empty folder), staged beside it and renamed into place only once every
// byte verified against the signature: an HMAC one with the store's key (loaded once the stream's
// signature is read) or the key given, an Ed25519 one with a public key the store's trust folder
// (the default store's, when a key is given) holds. A stream that is truncated, reordered, corrupted, too large, has trailing
// bytes, or does not verify is refused with Status::integrity, and leaves nothing behind.
NC_EXPORT void import_checkpoint(int fd, const std::filesystem::path& dir, const KeyStore& store = KeyStore());
NC_EXPORT void import_checkpoint(int fd, const std::filesystem::path& dir, const HmacKey& key);

// Pre-dump chains (the README's "Chain stream"): a layer with all its parents, or only those a
// receiver lacks, as one stream.
struct ChainTransferOptions {
  Compression compression = Compression::none;
  // The SHA-256s (lowercase hex) of the checkpoint.hmac of layers the receiver holds already (as
  // `nucleus-checkpoint inspect` or sha256sum shows them): named in the stream, not sent.
  std::vector<std::string> receiver_has;
};

// Writes the chain of the layer folder `layer` (the layer and each parent, a sibling folder) to fd,
// oldest first: a table naming every layer and its signature's SHA-256, then each layer not in
// options.receiver_has as export_checkpoint writes a checkpoint, its parent link left out. Only the
// chain's structure is checked, no signature (the importer verifies): a broken link, a parent not
// bound, more than CheckpointChain::max_layers layers (Status::integrity), or a layer to send not
// signed in format 3 (Status::invalid) is refused before a byte is written. A folder without a
// parent is a chain of one.
NC_EXPORT void export_chain(const std::filesystem::path& layer, int fd, const ChainTransferOptions& options = {});

// Reads a stream written by export_chain from fd into the store folder `store_dir` (created if
// missing), each layer sent imported as import_checkpoint imports a checkpoint into the sibling
// folder the stream names, the parents first, its parent link made by the importer as its signature
// covers it. A layer not sent must be in the store already, under its name, with the signature the
// stream names; a layer sent must not be. Once the stream has ended, the whole chain is verified
// (CheckpointChain::verify). Any failure is Status::integrity (a layer named by another folder in
// the store: Status::invalid) and removes the layers this import made; folders that were there
// before are left alone. Returns the newest layer's folder.
NC_EXPORT std::filesystem::path import_chain(int fd, const std::filesystem::path& store_dir,
                                             const KeyStore& store = KeyStore());

}  // namespace nucleus::checkpoint
