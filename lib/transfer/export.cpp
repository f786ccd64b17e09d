// export_checkpoint: the signature, the listing from the folder's walk, then every file's chunks;
// export_chain: a chain's table, then each layer the receiver lacks as export_checkpoint writes it.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/transfer.hpp>

#include "checkpoint/chain.hpp"
#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"
#include "signature/chunked_signature.hpp"
#include "transfer/listing.hpp"
#include "transfer/transfer_stream.hpp"

namespace nucleus::checkpoint {

namespace {

struct ListedFile {
  std::string path;
  std::uint64_t size = 0;
};

// A pre-dump layer's parent link points at its parent's images, which only a chain stream carries.
void refuse_parent_link(int dir_fd, const std::filesystem::path& dir) {
  if (has_parent_link(dir_fd))
    throw Error(Status::invalid, fmt::format("checkpoint {} is a pre-dump layer (it has {}): export it with its "
                                             "chain (nucleus-checkpoint export --chain, nc_export_chain), or export "
                                             "a full dump",
                                             dir.native(), parent_link_path));
}

// A checkpoint stream's body but its end frame: the signature (the folder's, as read), the listing
// from the folder's walk, then every file's chunks. A chain layer's parent link is left out (with
// `layer`): the importer makes it, as the signature must cover it.
void write_checkpoint(transfer::StreamWriter& out, int dir_fd, const std::filesystem::path& dir,
                      const std::string& signature, bool layer = false) {
  const std::uint64_t chunk_size = ChunkedSignature::parse(signature).chunk_size;
  out.frame(transfer::Frame::signature, signature.data(), signature.size());

  // The listing, in walk order, bounded as any walk is; the files are read after it.
  std::vector<ListedFile> files;
  std::string record;
  walk_checkpoint_files(dir_fd, [&](int, const struct stat& st, const std::string& rel) {
    if (S_ISDIR(st.st_mode)) return out.frame(transfer::Frame::folder, rel.data(), rel.size());
    if (S_ISLNK(st.st_mode) && layer && rel == parent_link_path) return;
    if (!S_ISREG(st.st_mode))  // a parent link that appeared since it was looked for
      throw Error(Status::invalid, fmt::format("checkpoint entry '{}' of {} is not a regular file or folder: a "
                                               "pre-dump layer is exported only with its chain (--chain)",
                                               rel, dir.native()));
    const auto size = static_cast<std::uint64_t>(st.st_size);
    record.assign(8, '\0');
    transfer::put_u64le(record.data(), size);
    record += rel;
    out.frame(transfer::Frame::file, record.data(), record.size());
    files.push_back({rel, size});
  }, HmacTree::signature_file, HmacTree::max_total_bytes());
  out.frame(transfer::Frame::listing_end, nullptr, 0);

  std::vector<char> chunk;
  for (const ListedFile& file : files) {
    const UniqueFd file_fd = open_beneath(dir_fd, file.path, "checkpoint file");
    const struct stat st = stat_fd(file_fd.get(), file.path);
    if (!S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_size) != file.size)
      throw Error(Status::integrity, fmt::format("checkpoint file '{}' changed while it was exported", file.path));
    for (std::uint64_t offset = 0; offset < file.size; offset += chunk_size) {
      const auto length = static_cast<std::size_t>(std::min(chunk_size, file.size - offset));
      chunk.resize(length);
      if (pread_full(file_fd.get(), chunk.data(), length, offset, file.path) != length)
        throw Error(Status::integrity, fmt::format("checkpoint file '{}' shrank while it was exported", file.path));
      out.frame(transfer::Frame::chunk, chunk.data(), length);
    }
  }
}

}  // namespace

void transfer::export_checkpoint(const std::filesystem::path& dir, int fd, const TransferOptions& options,
                                 std::chrono::milliseconds stall_timeout) {
  const UniqueFd dir_fd = open_dir(dir, "checkpoint folder");
  refuse_parent_link(dir_fd.get(), dir);
  const std::string signature = transfer::manifest_signature_text(dir_fd.get(), dir);
  const transfer::SigpipeBlock sigpipe_blocked;
  transfer::StreamWriter out(fd, options.compression, transfer::StreamKind::checkpoint, stall_timeout);
  write_checkpoint(out, dir_fd.get(), dir, signature);
  out.finish();
}

void export_checkpoint(const std::filesystem::path& dir, int fd, const TransferOptions& options) {
  transfer::export_checkpoint(dir, fd, options, {});
}

void export_chain(const std::filesystem::path& layer, int fd, const ChainTransferOptions& options) {
  const std::filesystem::path dir = layer.lexically_normal().has_filename() ? layer.lexically_normal()
                                                                            : layer.lexically_normal().parent_path();
  const std::string name = dir.filename();
  if (!is_plain_name(name))
    throw Error(Status::invalid, fmt::format("{} names no checkpoint folder: give the layer's folder", layer.native()));
  // The chain's structure (links as the metadata names them, parents bound, at most max_layers),
  // without a signature verified: the importer verifies every layer.
  std::vector<ChainLayer> layers = verify_chain(open_dir(dir, "checkpoint folder").get(), name, [](int) {},
                                                ChainUse::exports);
  std::reverse(layers.begin(), layers.end());  // oldest first
  std::vector<transfer::ChainEntry> table;
  for (ChainLayer& each : layers) {
    if (each.signature_sha256.empty()) each.signature_sha256 = signature_sha256(each.dir.get());
    const bool held = std::find(options.receiver_has.begin(), options.receiver_has.end(), each.signature_sha256) !=
                      options.receiver_has.end();
    const std::filesystem::path shown = dir.parent_path() / each.name;
    if (!held) transfer::manifest_signature_text(each.dir.get(), shown);  // refused before a byte is written
    table.push_back({each.name, each.signature_sha256, !held});
  }
  const transfer::SigpipeBlock sigpipe_blocked;
  transfer::StreamWriter out(fd, options.compression, transfer::StreamKind::chain);
  const std::string encoded = transfer::encode_chain_table(table);
  out.frame(transfer::Frame::chain, encoded.data(), encoded.size());
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (!table[i].sent) continue;
    const std::filesystem::path shown = dir.parent_path() / layers[i].name;
    write_checkpoint(out, layers[i].dir.get(), shown, transfer::manifest_signature_text(layers[i].dir.get(), shown),
                     i > 0);
    out.frame(transfer::Frame::end, nullptr, 0);
  }
  out.finish();
}

}  // namespace nucleus::checkpoint
