// export_checkpoint: the signature, the listing from the folder's walk, then every file's chunks.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/transfer.hpp>

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

// A pre-dump layer's parent link points at its parent's images, which a stream cannot carry yet.
void refuse_parent_link(int dir_fd, const std::filesystem::path& dir) {
  struct stat st {};
  const std::string link(parent_link_path);
  if (::fstatat(dir_fd, link.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0)
    throw Error(Status::invalid, fmt::format("checkpoint {} is a pre-dump layer (it has {}): exporting a chain of "
                                             "layers is not supported yet; export a full dump",
                                             dir.native(), link));
}

}  // namespace

void export_checkpoint(const std::filesystem::path& dir, int fd, const TransferOptions& options) {
  const UniqueFd dir_fd = open_dir(dir, "checkpoint folder");
  refuse_parent_link(dir_fd.get(), dir);
  const std::string signature = transfer::manifest_signature_text(dir_fd.get(), dir);
  const std::uint64_t chunk_size = ChunkedSignature::parse(signature).chunk_size;
  const transfer::SigpipeBlock sigpipe_blocked;
  transfer::StreamWriter out(fd, options.compression);
  out.frame(transfer::Frame::signature, signature.data(), signature.size());

  // The listing, in walk order, bounded as any walk is; the files are read after it.
  std::vector<ListedFile> files;
  std::string record;
  walk_checkpoint_files(dir_fd.get(), [&](int, const struct stat& st, const std::string& rel) {
    if (S_ISDIR(st.st_mode)) return out.frame(transfer::Frame::folder, rel.data(), rel.size());
    if (!S_ISREG(st.st_mode))  // a parent link that appeared since it was looked for
      throw Error(Status::invalid, fmt::format("checkpoint entry '{}' is not a regular file or folder: a pre-dump "
                                               "layer cannot be exported yet",
                                               rel));
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
    const UniqueFd file_fd = open_beneath(dir_fd.get(), file.path, "checkpoint file");
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
  out.finish();
}

}  // namespace nucleus::checkpoint
