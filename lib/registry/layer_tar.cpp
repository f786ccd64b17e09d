#include "registry/layer_tar.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>

#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"
#include "registry/image_reference.hpp"
#include "signature/hex.hpp"
#include "signature/sha256.hpp"

namespace nucleus::checkpoint::registry {

namespace {

constexpr std::size_t io_size = 1 << 20;

struct ArchiveDeleter {
  void operator()(archive* a) const noexcept { archive_free(a); }
  void operator()(archive_entry* e) const noexcept { archive_entry_free(e); }
};
using Archive = std::unique_ptr<archive, ArchiveDeleter>;

std::string archive_says(archive* a) {
  const char* said = archive_error_string(a);
  return said ? said : "no detail";
}

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

// What write_layer's libarchive callbacks share: where the bytes go and their digest.
struct LayerSink {
  int fd;
  Sha256 sha;
  std::uint64_t size = 0;
  std::exception_ptr failure;
};

la_ssize_t write_to_sink(archive*, void* user, const void* data, size_t size) {
  auto& sink = *static_cast<LayerSink*>(user);
  try {
    write_all(sink.fd, data, size, "the image layer");
    sink.sha.update(data, size);
    sink.size += size;
    return static_cast<la_ssize_t>(size);
  } catch (...) {
    sink.failure = std::current_exception();
    return -1;
  }
}

}  // namespace

LayerBlob write_layer(int root_fd, int out_fd) {
  LayerSink sink{out_fd, Sha256(), 0, nullptr};
  Archive a(archive_write_new());
  if (!a) throw Error(Status::no_memory, "cannot start the image layer (libarchive)");
  const auto check = [&](int rc, std::string_view doing) {
    if (sink.failure) std::rethrow_exception(sink.failure);
    if (rc != ARCHIVE_OK)
      throw Error(Status::io, fmt::format("cannot write the image layer: {}: {}", doing, archive_says(a.get())));
  };
  check(archive_write_set_format_pax_restricted(a.get()), "pax format");
  check(archive_write_add_filter_none(a.get()), "no compression");
  check(archive_write_open(a.get(), &sink, nullptr, write_to_sink, nullptr), "open");
  const std::unique_ptr<archive_entry, ArchiveDeleter> entry(archive_entry_new());
  if (!entry) throw Error(Status::no_memory, "cannot start the image layer (libarchive)");
  std::vector<char> buffer(io_size);
  walk_checkpoint_files(
      root_fd,
      [&](int fd, const struct stat& st, const std::string& rel) {
        if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
          throw Error(Status::invalid, fmt::format("'{}' is a link to a parent checkpoint: a layer of a pre-dump chain "
                                                   "cannot be published on its own, only a checkpoint without a parent",
                                                   rel));
        archive_entry_clear(entry.get());
        archive_entry_set_pathname_utf8(entry.get(), rel.c_str());
        archive_entry_set_filetype(entry.get(), S_ISDIR(st.st_mode) ? AE_IFDIR : AE_IFREG);
        archive_entry_set_perm(entry.get(), S_ISDIR(st.st_mode) ? 0700 : 0600);
        archive_entry_set_size(entry.get(), S_ISDIR(st.st_mode) ? 0 : st.st_size);
        archive_entry_set_uid(entry.get(), 0);
        archive_entry_set_gid(entry.get(), 0);
        archive_entry_set_mtime(entry.get(), 0, 0);
        check(archive_write_header(a.get(), entry.get()), rel);
        if (S_ISDIR(st.st_mode)) return;
        const auto size = static_cast<std::uint64_t>(st.st_size);
        for (std::uint64_t at = 0; at < size;) {
          const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), size - at));
          if (pread_full(fd, buffer.data(), want, at, rel) != want)
            throw Error(Status::integrity,
                        fmt::format("checkpoint file '{}' shrank while it was being published", rel));
          if (archive_write_data(a.get(), buffer.data(), want) != static_cast<la_ssize_t>(want))
            check(ARCHIVE_FATAL, rel);
          at += want;
        }
      },
      {}, HmacTree::max_total_bytes());
  check(archive_write_close(a.get()), "close");
  const Sha256::Digest digest = sink.sha.final();
  return {"sha256:" + to_lower_hex(digest), sink.size};
}

namespace {

// A tar entry's name, checked and split into plain names; the layer's root ("." or "./") is empty.
std::vector<std::string> entry_names(const char* raw, bool folder) {
  if (!raw) throw integrity("the image layer has an entry whose name is not UTF-8; refused");
  std::string_view name = raw;
  const std::string quoted = quotable(name);
  if (name.size() > HmacTree::max_path_length)
    throw integrity(fmt::format("the image layer has an entry '{}...' whose name is longer than {} bytes; refused",
                                quoted, HmacTree::max_path_length));
  if (name.starts_with("./")) name.remove_prefix(2);
  if (folder && name.ends_with('/')) name.remove_suffix(1);
  std::vector<std::string> names;
  if (name.empty() || name == ".") {
    if (folder) return names;
    throw integrity(fmt::format("the image layer has a file named '{}'; refused", quoted));
  }
  for (;;) {
    const auto slash = name.find('/');
    const std::string_view part = name.substr(0, slash);
    if (!is_plain_name(part))
      throw integrity(
          fmt::format("the image layer has an entry '{}' that is not a plain relative path (an absolute "
                      "name, '..', '.', an empty or non-UTF-8 name); refused",
                      quoted));
    names.emplace_back(part);
    if (slash == std::string_view::npos) break;
    name.remove_prefix(slash + 1);
  }
  if (names.size() > static_cast<std::size_t>(HmacTree::max_depth) + 1)
    throw integrity(fmt::format("the image layer has an entry '{}' nested deeper than {} folders; refused", quoted,
                                HmacTree::max_depth));
  return names;
}

const char* type_name(mode_t type) {
  switch (type) {
    case AE_IFLNK:
      return "a symbolic link";
    case AE_IFCHR:
      return "a character device";
    case AE_IFBLK:
      return "a block device";
    case AE_IFIFO:
      return "a FIFO";
    case AE_IFSOCK:
      return "a socket";
    default:
      return "an entry of unknown type";
  }
}

// Writes the entry's data into fd, in order and exactly `size` bytes.
void extract_data(archive* a, int fd, std::uint64_t size, const std::string& quoted) {
  std::uint64_t written = 0;
  for (;;) {
    const void* block = nullptr;
    size_t length = 0;
    la_int64_t offset = 0;
    const int rc = archive_read_data_block(a, &block, &length, &offset);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK)
      throw integrity(fmt::format("the image layer is corrupt at '{}': {}; refused", quoted, archive_says(a)));
    if (offset < 0 || static_cast<std::uint64_t>(offset) != written || length > size - written)
      throw integrity(fmt::format("the image layer's entry '{}' is sparse or longer than it says; refused", quoted));
    write_all(fd, block, length, fmt::format("checkpoint file '{}'", quoted));
    written += length;
  }
  if (written != size)
    throw integrity(
        fmt::format("the image layer's entry '{}' holds {} of its {} bytes; refused", quoted, written, size));
}

}  // namespace

void extract_layer(int layer_fd, LayerCompression compression, int staging_fd) {
  Archive a(archive_read_new());
  if (!a) throw Error(Status::no_memory, "cannot read the image layer (libarchive)");
  // Only the compression the manifest names, and only tar.
  int filter = ARCHIVE_FILTER_NONE;
  int rc = ARCHIVE_OK;
  if (compression == LayerCompression::gzip)
    rc = archive_read_support_filter_gzip(a.get()), filter = ARCHIVE_FILTER_GZIP;
  if (compression == LayerCompression::zstd)
    rc = archive_read_support_filter_zstd(a.get()), filter = ARCHIVE_FILTER_ZSTD;
  if (rc != ARCHIVE_OK)  // ARCHIVE_WARN: libarchive would run an external program; not for untrusted bytes
    throw Error(Status::unsupported,
                fmt::format("this libarchive cannot decompress the image layer in process: {}", archive_says(a.get())));
  if (archive_read_support_format_tar(a.get()) != ARCHIVE_OK || ::lseek(layer_fd, 0, SEEK_SET) != 0 ||
      archive_read_open_fd(a.get(), layer_fd, io_size) != ARCHIVE_OK)
    throw integrity(fmt::format("the image layer cannot be read as a tar: {}; refused", archive_says(a.get())));

  std::size_t entries = 0;
  std::uint64_t bytes = 0;
  const std::uint64_t max_bytes = HmacTree::max_total_bytes();
  for (;;) {
    archive_entry* entry = nullptr;
    rc = archive_read_next_header(a.get(), &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK)
      throw integrity(fmt::format("the image layer is not a well-formed tar: {}; refused", archive_says(a.get())));
    if (archive_filter_code(a.get(), 0) != filter)
      throw integrity(fmt::format("the image layer is compressed as '{}', not as its manifest says; refused",
                                  archive_filter_name(a.get(), 0)));
    if (++entries > HmacTree::max_entries)
      throw integrity(fmt::format("the image layer has more than {} entries, the limit on a checkpoint; refused",
                                  HmacTree::max_entries));
    const mode_t type = archive_entry_filetype(entry);
    const char* raw_name = archive_entry_pathname_utf8(entry);
    const std::string quoted = quotable(raw_name ? raw_name : "");
    if (archive_entry_hardlink(entry) || (type != AE_IFREG && type != AE_IFDIR))
      throw integrity(
          fmt::format("the image layer's entry '{}' is {}; a checkpoint holds only folders and regular "
                      "files; refused",
                      quoted, archive_entry_hardlink(entry) ? "a hard link" : type_name(type)));
    if (archive_entry_sparse_count(entry) > 0)
      throw integrity(fmt::format("the image layer's entry '{}' is sparse; refused", quoted));
    const std::vector<std::string> names = entry_names(raw_name, type == AE_IFDIR);
    if (names.empty()) continue;  // the layer's root: the staging folder itself
    const std::int64_t size = archive_entry_size_is_set(entry) ? archive_entry_size(entry) : -1;
    if (size < 0 || (type == AE_IFDIR && size != 0))
      throw integrity(fmt::format("the image layer's entry '{}' has no valid size; refused", quoted));
    if (static_cast<std::uint64_t>(size) > max_bytes - bytes)
      throw integrity(
          fmt::format("the image layer's files add up to more than {} bytes, the limit on one checkpoint "
                      "(at '{}', of {} bytes); refused. If it is genuine, raise the limit: set "
                      "NUCLEUS_CHECKPOINT_MAX_BYTES",
                      max_bytes, quoted, size));
    bytes += static_cast<std::uint64_t>(size);

    // Folders above it are created as needed (a tar need not list them), each opened relative to
    // the one before without following a link: the staging folder holds only what is made here.
    std::vector<UniqueFd> opened;
    int parent = staging_fd;
    for (std::size_t i = 0; i + 1 < names.size(); ++i) {
      opened.push_back(open_or_create_dir_at(parent, names[i], 0700, "checkpoint folder"));
      parent = opened.back().get();
    }
    if (type == AE_IFDIR) {
      open_or_create_dir_at(parent, names.back(), 0700, "checkpoint folder");
      continue;
    }
    const UniqueFd fd(
        ::openat(parent, names.back().c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd && errno == EEXIST) throw integrity(fmt::format("the image layer lists '{}' twice; refused", quoted));
    if (!fd)
      throw system_error(status_of_errno(errno), errno, fmt::format("cannot create checkpoint file '{}'", quoted));
    extract_data(a.get(), fd.get(), static_cast<std::uint64_t>(size), quoted);
  }
}

}  // namespace nucleus::checkpoint::registry
