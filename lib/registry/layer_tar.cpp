#include "registry/layer_tar.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>

#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"
#include "registry/image_reference.hpp"
#include "signature/hex.hpp"
#include "signature/sha256.hpp"
#include "signature/signed_manifest.hpp"
#include "transfer/listing.hpp"

namespace nucleus::checkpoint::registry {

namespace {

constexpr std::size_t io_size = 1 << 20;
constexpr std::uint64_t tar_block = 512;

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

constexpr std::uint64_t in_blocks(std::uint64_t bytes) { return (bytes + tar_block - 1) / tar_block * tar_block; }

// The most a tar entry's headers take: its header, and a pax header whose records (the path
// above all) take a few blocks.
constexpr std::uint64_t headers_of(std::size_t path_size) { return 2 * tar_block + in_blocks(path_size + 256); }

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

struct ListedPath {
  bool folder = false;
  std::string path;
  std::uint64_t size = 0;
};

}  // namespace

LayerBlob write_layer(int root_fd, std::string_view signature_text, int out_fd) {
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
  const auto header = [&](const std::string& rel, bool folder, std::uint64_t size) {
    archive_entry_clear(entry.get());
    archive_entry_set_pathname_utf8(entry.get(), rel.c_str());
    archive_entry_set_filetype(entry.get(), folder ? AE_IFDIR : AE_IFREG);
    archive_entry_set_perm(entry.get(), folder ? 0700 : 0600);
    archive_entry_set_size(entry.get(), static_cast<la_int64_t>(size));
    archive_entry_set_uid(entry.get(), 0);
    archive_entry_set_gid(entry.get(), 0);
    archive_entry_set_mtime(entry.get(), 0, 0);
    check(archive_write_header(a.get(), entry.get()), rel);
  };
  const auto data = [&](const void* bytes, std::size_t size, const std::string& rel) {
    if (archive_write_data(a.get(), bytes, size) != static_cast<la_ssize_t>(size)) check(ARCHIVE_FATAL, rel);
  };

  // The listing, from the walk, as a transfer stream's listing frames; the files are read after it.
  std::vector<ListedPath> listed;
  std::string listing;
  walk_checkpoint_files(
      root_fd,
      [&](int, const struct stat& st, const std::string& rel) {
        if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
          throw Error(Status::invalid, fmt::format("'{}' is a link to a parent checkpoint: a layer of a pre-dump chain "
                                                   "cannot be published on its own, only a checkpoint without a parent",
                                                   rel));
        const bool folder = S_ISDIR(st.st_mode);
        const auto size = folder ? 0 : static_cast<std::uint64_t>(st.st_size);
        char frame[transfer::frame_header_size + 8];
        frame[0] = static_cast<char>(folder ? transfer::Frame::folder : transfer::Frame::file);
        transfer::put_u64le(frame + 1, rel.size() + (folder ? 0 : 8));
        transfer::put_u64le(frame + transfer::frame_header_size, size);
        listing.append(frame, folder ? transfer::frame_header_size : sizeof frame);
        listing += rel;
        listed.push_back({folder, rel, size});
      },
      HmacTree::signature_file, HmacTree::max_total_bytes());

  const std::string signature_name = HmacTree::signature_file, listing_name(listing_entry);
  header(signature_name, false, signature_text.size());
  data(signature_text.data(), signature_text.size(), signature_name);
  header(listing_name, false, listing.size());
  data(listing.data(), listing.size(), listing_name);
  std::vector<char> buffer(io_size);
  for (const ListedPath& item : listed) {
    header(item.path, item.folder, item.size);
    if (item.folder) continue;
    const UniqueFd fd = open_beneath(root_fd, item.path, "checkpoint file");
    const struct stat st = stat_fd(fd.get(), item.path);
    if (!S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_size) != item.size)
      throw Error(Status::integrity, fmt::format("checkpoint file '{}' changed while it was published", item.path));
    for (std::uint64_t at = 0; at < item.size;) {
      const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), item.size - at));
      if (pread_full(fd.get(), buffer.data(), want, at, item.path) != want)
        throw Error(Status::integrity,
                    fmt::format("checkpoint file '{}' shrank while it was being published", item.path));
      data(buffer.data(), want, item.path);
      at += want;
    }
  }
  check(archive_write_close(a.get()), "close");
  const Sha256::Digest digest = sink.sha.final();
  return {"sha256:" + to_lower_hex(digest), sink.size};
}

namespace {

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

// The layer's tar, decompressed by one libarchive reader (format raw, with the filter the manifest
// names only) that pulls the layer from its source, and read as a tar by another, fed through a
// callback. Both sides are counted and stop at a budget: the bytes taken from the source (so a
// registry sends no more than the reader asks for, however little a compressed stream yields), and
// the bytes decompressed (so whatever libarchive would skip unseen, pax global headers, padding,
// bytes after the end, costs no more than the listing accounts for).
class LayerReader {
 public:
  // `budget` and `why` as allow's: what may be decompressed from the start.
  LayerReader(const LayerSource& source, LayerCompression compression, std::uint64_t budget, std::string why)
      : source_(source), buffer_(io_size) {
    allow(budget, std::move(why));
    if (!raw_ || !tar_) throw Error(Status::no_memory, "cannot read the image layer (libarchive)");
    int filter = ARCHIVE_FILTER_NONE;
    int rc = ARCHIVE_OK;
    if (compression == LayerCompression::gzip)
      rc = archive_read_support_filter_gzip(raw_.get()), filter = ARCHIVE_FILTER_GZIP;
    if (compression == LayerCompression::zstd)
      rc = archive_read_support_filter_zstd(raw_.get()), filter = ARCHIVE_FILTER_ZSTD;
    if (rc != ARCHIVE_OK)  // ARCHIVE_WARN: libarchive would run an external program; not for untrusted bytes
      throw Error(Status::unsupported, fmt::format("this libarchive cannot decompress the image layer in process: {}",
                                                   archive_says(raw_.get())));
    archive_entry* data = nullptr;
    if (archive_read_support_format_raw(raw_.get()) != ARCHIVE_OK ||
        archive_read_open(raw_.get(), this, nullptr, pull, nullptr) != ARCHIVE_OK ||
        archive_read_next_header(raw_.get(), &data) != ARCHIVE_OK)
      fail("it does not start as a layer", raw_.get());
    if (archive_filter_code(raw_.get(), 0) != filter)
      throw integrity(fmt::format("the image layer is compressed as '{}', not as its manifest says; refused",
                                  archive_filter_name(raw_.get(), 0)));
    if (archive_read_support_format_tar(tar_.get()) != ARCHIVE_OK ||
        archive_read_open(tar_.get(), this, nullptr, feed, nullptr) != ARCHIVE_OK)
      fail("it does not start as a tar", tar_.get());
  }

  // What may be decompressed from here on, besides what libarchive reads ahead, and taken from the
  // source: as much, plus what compression's framing adds (stored blocks), 1/64.
  void allow(std::uint64_t bytes, std::string why) {
    budget_ = decompressed_ + bytes + 2 * io_size;
    source_budget_ = taken_ + bytes + bytes / 64 + 2 * io_size;
    over_budget_ = std::move(why);
  }
  std::uint64_t decompressed() const noexcept { return decompressed_; }

  // The next entry's header, nullptr at the tar's end.
  archive_entry* next(std::string_view expected) {
    archive_entry* entry = nullptr;
    const int rc = archive_read_next_header(tar_.get(), &entry);
    if (rc == ARCHIVE_EOF) return nullptr;
    if (rc != ARCHIVE_OK) fail(fmt::format("it is not a well-formed tar where {} should be", expected), tar_.get());
    return entry;
  }

  // At the tar's end: a failure of the source or a budget passed while libarchive read ahead, which
  // it need not report, is one all the same.
  void end() const {
    if (source_failure_ || exceeded_) fail("at its end", tar_.get());
  }

  // Exactly `size` bytes of the current entry's data.
  void read(void* data, std::size_t size, std::string_view what) {
    for (std::size_t got = 0; got < size;) {
      const la_ssize_t n = archive_read_data(tar_.get(), static_cast<char*>(data) + got, size - got);
      if (n <= 0) fail(fmt::format("it ends early or is corrupt in {}", what), tar_.get());
      got += static_cast<std::size_t>(n);
    }
  }

 private:
  // The raw reader's input: the source's next bytes, within the budget.
  static la_ssize_t pull(archive*, void* user, const void** block) {
    auto& self = *static_cast<LayerReader*>(user);
    try {
      const std::span<const char> bytes = self.source_();
      if (bytes.size() > self.source_budget_ - self.taken_) {
        self.exceeded_ = "more of the image layer arrives than";
        return ARCHIVE_FATAL;
      }
      self.taken_ += bytes.size();
      *block = bytes.data();
      return static_cast<la_ssize_t>(bytes.size());
    } catch (...) {
      self.source_failure_ = std::current_exception();
      return ARCHIVE_FATAL;
    }
  }

  // The tar reader's input: the raw reader's decompressed bytes, within the budget.
  static la_ssize_t feed(archive*, void* user, const void** block) {
    auto& self = *static_cast<LayerReader*>(user);
    const la_ssize_t n = archive_read_data(self.raw_.get(), self.buffer_.data(), self.buffer_.size());
    if (n < 0) {
      self.decompressor_says_ = archive_says(self.raw_.get());
      return ARCHIVE_FATAL;
    }
    if (static_cast<std::uint64_t>(n) > self.budget_ - self.decompressed_) {
      self.exceeded_ = "the image layer decompresses to more than";
      return ARCHIVE_FATAL;
    }
    self.decompressed_ += static_cast<std::uint64_t>(n);
    *block = self.buffer_.data();
    return n;
  }

  // Throws why reading `a` failed: the source's own error (a download's) as it was thrown, a
  // budget passed, or libarchive's words.
  [[noreturn]] void fail(std::string_view what, archive* a) const {
    if (source_failure_) std::rethrow_exception(source_failure_);
    if (exceeded_)
      throw integrity(fmt::format("{} {}; refused", exceeded_, over_budget_));
    throw integrity(fmt::format("the image layer cannot be read: {}: {}; refused", what,
                                decompressor_says_.empty() ? archive_says(a) : decompressor_says_));
  }

  const LayerSource& source_;
  Archive raw_{archive_read_new()}, tar_{archive_read_new()};
  std::vector<char> buffer_;
  std::uint64_t taken_ = 0, source_budget_ = 0, decompressed_ = 0, budget_ = 0;
  std::string over_budget_;
  const char* exceeded_ = nullptr;  // which budget was passed, if one was
  std::exception_ptr source_failure_;
  std::string decompressor_says_;  // why decompressing failed, if it did
};

// The next entry, required to be `path` (a folder or a regular file of `size` bytes).
void require_entry(LayerReader& reader, const std::string& path, bool folder, std::uint64_t size) {
  archive_entry* entry = reader.next(fmt::format("'{}'", quotable(path)));
  if (!entry)
    throw integrity(fmt::format("the image layer ends where '{}' should be; refused", quotable(path)));
  const char* raw_name = archive_entry_pathname_utf8(entry);
  std::string_view name = raw_name ? raw_name : "";
  if (folder && name.ends_with('/')) name.remove_suffix(1);
  const std::string quoted = quotable(name);
  const mode_t type = archive_entry_filetype(entry);
  if (archive_entry_hardlink(entry) || (type != AE_IFREG && type != AE_IFDIR))
    throw integrity(fmt::format("the image layer's entry '{}' is {}; a checkpoint holds only folders and regular "
                                "files; refused",
                                quoted, archive_entry_hardlink(entry) ? "a hard link" : type_name(type)));
  if (name != path || (type == AE_IFDIR) != folder)
    throw integrity(fmt::format("the image layer's entry '{}' is not the {} '{}' its signed listing names next; "
                                "refused",
                                quoted, folder ? "folder" : "file", quotable(path)));
  if (archive_entry_sparse_count(entry) > 0)
    throw integrity(fmt::format("the image layer's entry '{}' is sparse; refused", quoted));
  const std::int64_t entry_size = archive_entry_size_is_set(entry) ? archive_entry_size(entry) : -1;
  if (entry_size < 0 || static_cast<std::uint64_t>(entry_size) != size)
    throw integrity(fmt::format("the image layer's entry '{}' is {} bytes, but its signed listing says {}; refused",
                                quoted, entry_size, size));
}

// The entry named `name`, a regular file of at most `max_size` bytes, and its size.
std::uint64_t require_file(LayerReader& reader, std::string_view name, std::uint64_t max_size,
                           std::string_view place) {
  archive_entry* entry = reader.next(name);
  const char* raw_name = entry ? archive_entry_pathname_utf8(entry) : nullptr;
  const std::string found = quotable(raw_name ? raw_name : "");
  if (!entry || found != name || archive_entry_filetype(entry) != AE_IFREG || archive_entry_hardlink(entry) ||
      archive_entry_sparse_count(entry) > 0 || !archive_entry_size_is_set(entry))
    throw integrity(fmt::format("the image layer's {} entry is not the file {} ({}): it was not pushed by "
                                "nucleus-checkpoint 0.3 or later, or was changed; refused",
                                place, name, entry ? "'" + found + "'" : "it ends"));
  const auto size = static_cast<std::uint64_t>(std::max<la_int64_t>(archive_entry_size(entry), 0));
  if (size > max_size)
    throw integrity(fmt::format("the image layer's {} is {} bytes, more than the {} it may be; refused", name, size,
                                max_size));
  return size;
}

}  // namespace

void extract_layer(const LayerSource& source, LayerCompression compression, std::uint64_t compressed_size,
                   int staging_fd, const VerifyingKeys& keys) {
  // Before the listing is authenticated: a signature and a listing, as large as they may be.
  const std::uint64_t max_signature = ChunkedSignature::max_manifest_text_size();
  LayerReader reader(source, compression,
                     headers_of(0) * 2 + in_blocks(max_signature) + in_blocks(transfer::max_listing_bytes),
                     "a signature and a listing may take before they are authenticated");
  transfer::ListingReceiver listing("the image layer", staging_fd, keys);
  listing.receive_signature(
      require_file(reader, HmacTree::signature_file, max_signature, "first"),
      [&](char* data, std::size_t size) { reader.read(data, size, HmacTree::signature_file); }, "pushing");

  // The rest of the layer is the listed tree, no larger as a tar than its entries' headers and
  // data, and the end (two blocks, the record padded to 10 KiB); compressed, only a little larger
  // than that (stored blocks).
  std::uint64_t tar_bytes = 2 * tar_block + 10240;
  std::uint64_t left = require_file(reader, listing_entry, transfer::max_listing_bytes, "second");
  std::string record;
  while (left > 0) {
    char head[transfer::frame_header_size];
    if (left < sizeof head) throw integrity("the image layer's listing ends within a record; refused");
    reader.read(head, sizeof head, listing_entry);
    const transfer::FrameHeader frame{head[0], transfer::get_u64le(head + 1)};
    left -= sizeof head;
    if (!transfer::ListingReceiver::is_record(frame) || frame.length > left)
      throw integrity(fmt::format("the image layer's listing has a record of type 0x{:02x} with {} bytes where a "
                                  "folder or file (a path of 1 to {} bytes) should be; refused",
                                  static_cast<unsigned char>(frame.type), frame.length, HmacTree::max_path_length));
    record.resize(frame.length);
    reader.read(record.data(), record.size(), listing_entry);
    left -= frame.length;
    const transfer::ListedRecord listed = listing.add(frame, record);
    tar_bytes += headers_of(listed.path.size()) + (listed.folder ? 0 : in_blocks(listed.size));
  }
  listing.authenticate();

  const std::uint64_t whole_tar = reader.decompressed() + tar_bytes;
  if (compressed_size > whole_tar + whole_tar / 64 + io_size)
    throw integrity(fmt::format("the image layer is {} bytes, more than the {} its signed listing takes even "
                                "uncompressed; refused",
                                compressed_size, whole_tar));
  reader.allow(tar_bytes, "its signed listing takes as a tar");

  std::vector<char> chunk;
  transfer::make_listed_tree(staging_fd, listing, [&](const std::string& path, const ManifestFile* file, int fd) {
    require_entry(reader, path, !file, file ? file->size : 0);
    if (!file) return;
    transfer::receive_chunks(*file, listing.chunk_size(), fd, chunk,
                             [&](std::uint64_t, char* data, std::size_t length) {
                               reader.read(data, length, fmt::format("'{}'", file->path));
                             });
  });
  if (archive_entry* extra = reader.next("the end of the layer")) {
    const char* name = archive_entry_pathname_utf8(extra);
    throw integrity(fmt::format("the image layer has an entry '{}' after those its signed listing names; refused",
                                quotable(name ? name : "")));
  }
  reader.end();
  transfer::write_signature(staging_fd, listing.signature_text());
}

}  // namespace nucleus::checkpoint::registry
