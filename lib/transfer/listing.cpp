#include "transfer/listing.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>

#include "checkpoint/utf8.hpp"
#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"

namespace nucleus::checkpoint::transfer {

namespace {

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

// Plain names joined by '/': what a walk's relative paths are.
bool is_plain_path(std::string_view rel) {
  for (;;) {
    const auto slash = rel.find('/');
    if (!is_plain_name(rel.substr(0, slash))) return false;
    if (slash == std::string_view::npos) return true;
    rel.remove_prefix(slash + 1);
  }
}

}  // namespace

std::string manifest_signature_text(int dir_fd, const std::filesystem::path& dir) {
  std::string text = read_signature_text(dir_fd);
  const SignatureFormat format = text.starts_with(ChunkedSignature::manifest_header) ? SignatureFormat::manifest
                                 : text.starts_with(ChunkedSignature::header)       ? SignatureFormat::chunked
                                                                                     : SignatureFormat::seed;
  if (format != SignatureFormat::manifest)
    throw Error(Status::invalid,
                fmt::format("checkpoint {} is signed in format {}, which a transfer cannot check as it arrives (only "
                            "format 3 lists every chunk's digest): sign it in format 3: nucleus-checkpoint sign "
                            "--format manifest --dir {}",
                            dir.native(), static_cast<int>(format), dir.native()));
  return text;
}

ChunkedSignature parse_manifest_signature(std::string_view text, std::string_view source, std::string_view before) {
  if (!text.starts_with(ChunkedSignature::family))
    throw integrity(fmt::format("{} carries a checkpoint signed in format 1 (the seed's), which cannot be checked as "
                                "it arrives: sign it in format 3 before {} it (nucleus-checkpoint sign --format "
                                "manifest --dir DIR)",
                                source, before));
  ChunkedSignature signature = ChunkedSignature::parse(text);
  if (signature.format != SignatureFormat::manifest)
    throw integrity(fmt::format("{} carries a checkpoint signed in format 2, which cannot be checked as it arrives: "
                                "sign it in format 3 before {} it (nucleus-checkpoint sign --format manifest --dir "
                                "DIR)",
                                source, before));
  return signature;
}

ListingReceiver::ListingReceiver(std::string_view source, TreeKey key, ChunkedSignature signature)
    : source_(source), listing_(key, std::move(signature)) {}

bool ListingReceiver::is_record(const FrameHeader& frame) {
  const auto type = static_cast<Frame>(frame.type);
  const std::uint64_t head = type == Frame::file ? 8 : 0;
  return (type == Frame::folder || type == Frame::file) && frame.length > head &&
         frame.length - head <= HmacTree::max_path_length;
}

void ListingReceiver::add(const FrameHeader& frame, std::string_view payload) {
  const bool folder = static_cast<Frame>(frame.type) == Frame::folder;
  const std::string_view path = payload.substr(folder ? 0 : 8);
  const std::uint64_t size = folder ? 0 : get_u64le(payload.data());
  check(folder, path, size);
  if (folder) listing_.folder(path);
  else listing_.file(path, size);
  entries_.push_back(folder ? ListedEntry{true, std::string(path)} : ListedEntry{});
}

void ListingReceiver::check(bool folder, std::string_view rel, std::uint64_t size) {
  if (entries_.size() == HmacTree::max_entries)
    throw integrity(fmt::format("{} lists more than {} entries, the limit on a checkpoint tree", source_,
                                HmacTree::max_entries));
  path_bytes_ += rel.size();
  if (path_bytes_ > max_listing_path_bytes)
    throw integrity(fmt::format("{} lists paths adding up to more than {} bytes, more than an importer holds before "
                                "the listing is authenticated; refused",
                                source_, max_listing_path_bytes));
  std::string shown = to_valid_utf8(rel.substr(0, 256));  // quoted for the operator: no controls
  std::replace_if(shown.begin(), shown.end(), [](char c) { return c >= 0 && c < 0x20; }, '?');
  if (!is_plain_path(rel))
    throw integrity(fmt::format("{} lists '{}', which is not a plain relative path in a checkpoint (no '..', '.', "
                                "empty or absolute names, no NUL, UTF-8 names of at most 255 bytes); refused",
                                source_, shown));
  const auto slash = rel.rfind('/');
  const std::string_view parent = slash == std::string_view::npos ? std::string_view() : rel.substr(0, slash);
  const std::string_view name = rel.substr(slash == std::string_view::npos ? 0 : slash + 1);
  if (parent.empty() && name == HmacTree::signature_file)
    throw integrity(fmt::format("{} lists '{}' among the signed files", source_, HmacTree::signature_file));
  while (levels_.size() > 1 && levels_.back().path != parent) levels_.pop_back();
  Level& level = levels_.back();
  if (level.path != parent)
    throw integrity(
        fmt::format("{} lists '{}' where its folder is not open: the listing is out of walk order", source_, shown));
  if (name <= level.last_name)
    throw integrity(fmt::format("{} lists '{}' out of walk order (each folder's names in byte order, each once)",
                                source_, shown));
  level.last_name = name;
  if (folder) {
    if (levels_.size() > static_cast<std::size_t>(HmacTree::max_depth))
      throw integrity(fmt::format("{} lists '{}', nested deeper than {} levels", source_, shown, HmacTree::max_depth));
    levels_.push_back({std::string(rel), {}});
  } else if (size > max_bytes_ - bytes_) {
    throw integrity(fmt::format("{} lists files adding up to more than {} bytes, the limit on one checkpoint (at "
                                "'{}', of {} bytes); if it is genuine, raise the limit: set "
                                "NUCLEUS_CHECKPOINT_MAX_BYTES",
                                source_, max_bytes_, shown, size));
  } else {
    bytes_ += size;
  }
}

SignedManifest ListingReceiver::authenticate() {
  try {
    return std::move(listing_).authenticate();
  } catch (const Error& e) {
    throw integrity(fmt::format("{}'s listing does not match its signature (it was changed, or comes from another "
                                "checkpoint, or was signed with another key): {}",
                                source_, e.what()));
  }
}

void make_listed_tree(int staging_fd, const std::vector<ListedEntry>& entries, const SignedManifest& manifest,
                      const FillListed& fill) {
  struct Open {
    std::string path;
    UniqueFd fd;
  };
  std::vector<Open> folders;  // the open folder and those above it, as in the walk
  std::size_t next_file = 0;
  for (const ListedEntry& entry : entries) {
    const ManifestFile* file = entry.folder ? nullptr : &manifest.files()[next_file++];
    const std::string& path = file ? file->path : entry.path;
    const auto slash = path.rfind('/');
    const std::string parent = slash == std::string::npos ? std::string() : path.substr(0, slash);
    const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    while (!folders.empty() && folders.back().path != parent) folders.pop_back();
    const int parent_fd = folders.empty() ? staging_fd : folders.back().fd.get();
    if (!file) {
      if (::mkdirat(parent_fd, name.c_str(), 0700) != 0)
        throw system_error(status_of_errno(errno), errno, fmt::format("cannot create checkpoint folder '{}'", path));
      folders.push_back({path, open_dir_at(parent_fd, name, "checkpoint folder")});
      fill(path, nullptr, -1);
      continue;
    }
    const UniqueFd file_fd(
        ::openat(parent_fd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!file_fd)
      throw system_error(status_of_errno(errno), errno, fmt::format("cannot create checkpoint file '{}'", path));
    fill(path, file, file_fd.get());
  }
}

void receive_chunks(const ManifestFile& file, std::uint64_t chunk_size, int fd, std::vector<char>& chunk,
                    const ReadChunk& read) {
  for (std::uint64_t index = 0; index < file.chunks.size(); ++index) {
    const auto length = static_cast<std::size_t>(std::min(chunk_size, file.size - index * chunk_size));
    chunk.resize(length);
    read(index, chunk.data(), length);
    check_chunk(file, chunk_size, index, chunk.data(), length);
    write_all(fd, chunk.data(), length, fmt::format("checkpoint file '{}'", file.path));
  }
}

void write_signature(int staging_fd, std::string_view text) {
  const UniqueFd fd(
      ::openat(staging_fd, HmacTree::signature_file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) throw system_error(status_of_errno(errno), errno, "cannot write the checkpoint's signature");
  write_all(fd.get(), text.data(), text.size(), "the checkpoint's signature");
}

}  // namespace nucleus::checkpoint::transfer
