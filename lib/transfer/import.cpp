// import_checkpoint: authenticates the stream's listing against its signature before accepting a
// file byte, then checks every chunk as it arrives, writing it into a private staging folder that
// is renamed into place only once the stream has ended cleanly.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/transfer.hpp>

#include "checkpoint/utf8.hpp"
#include "fs/checkpoint_dir.hpp"
#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"
#include "signature/signed_manifest.hpp"
#include "transfer/transfer_stream.hpp"

namespace nucleus::checkpoint {

namespace {

using transfer::Frame;

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

Error unexpected(const transfer::FrameHeader& frame, std::string_view expected) {
  return integrity(fmt::format("the transfer stream is corrupt or out of order: expected {}, found a frame of type "
                               "0x{:02x} with {} bytes; nothing was imported",
                               expected, static_cast<unsigned char>(frame.type), frame.length));
}

struct Entry {
  bool folder = false;
  std::string path;  // a folder's; a file's is its ManifestFile's
};

// Plain names joined by '/': what a walk's relative paths are.
bool is_plain_path(std::string_view rel) {
  for (;;) {
    const auto slash = rel.find('/');
    if (!is_plain_name(rel.substr(0, slash))) return false;
    if (slash == std::string_view::npos) return true;
    rel.remove_prefix(slash + 1);
  }
}

// The listing's paths are held until it is authenticated: within HmacTree's limits alone they
// could reach 4 GiB (a million 4096-byte paths), sent as a few MiB of zstd. 128 MiB is an average
// of 134 bytes over the most entries a tree may have.
constexpr std::uint64_t max_listing_path_bytes = std::uint64_t{128} << 20;

// The listing as it arrives, held to what the walk of a checkpoint folder could have produced
// before anything is spent on it: plain relative names, each folder listed before its contents,
// the names in each folder in byte order and each once, within HmacTree's limits.
class ListingCheck {
 public:
  void add(bool folder, const std::string& rel, std::uint64_t size) {
    if (entries_ == HmacTree::max_entries)
      throw integrity(fmt::format("the transfer stream lists more than {} entries, the limit on a checkpoint tree",
                                  HmacTree::max_entries));
    ++entries_;
    path_bytes_ += rel.size();
    if (path_bytes_ > max_listing_path_bytes)
      throw integrity(fmt::format("the transfer stream lists paths adding up to more than {} bytes, more than an "
                                  "importer holds before the listing is authenticated; refused",
                                  max_listing_path_bytes));
    std::string shown = to_valid_utf8(rel.substr(0, 256));  // quoted for the operator: no controls
    std::replace_if(shown.begin(), shown.end(), [](char c) { return c >= 0 && c < 0x20; }, '?');
    if (!is_plain_path(rel))
      throw integrity(fmt::format("the transfer stream lists '{}', which is not a plain relative path in a checkpoint "
                                  "(no '..', '.', empty or absolute names, no NUL, UTF-8 names of at most 255 bytes); "
                                  "refused",
                                  shown));
    const auto slash = rel.rfind('/');
    const std::string_view parent = slash == std::string::npos ? std::string_view() : std::string_view(rel).substr(0, slash);
    const std::string_view name = std::string_view(rel).substr(slash == std::string::npos ? 0 : slash + 1);
    if (parent.empty() && name == HmacTree::signature_file)
      throw integrity(fmt::format("the transfer stream lists '{}' among the signed files", HmacTree::signature_file));
    while (levels_.size() > 1 && levels_.back().path != parent) levels_.pop_back();
    Level& level = levels_.back();
    if (level.path != parent)
      throw integrity(fmt::format("the transfer stream lists '{}' where its folder is not open: the listing is out "
                                  "of walk order",
                                  shown));
    if (name <= level.last_name)
      throw integrity(fmt::format("the transfer stream lists '{}' out of walk order (each folder's names in byte "
                                  "order, each once)",
                                  shown));
    level.last_name = name;
    if (folder) {
      if (levels_.size() > static_cast<std::size_t>(HmacTree::max_depth))
        throw integrity(fmt::format("the transfer stream lists '{}', nested deeper than {} levels", shown,
                                    HmacTree::max_depth));
      levels_.push_back({rel, {}});
    } else if (size > max_bytes_ - bytes_) {
      throw integrity(fmt::format("the transfer stream lists files adding up to more than {} bytes, the limit on "
                                  "one checkpoint (at '{}', of {} bytes); if it is genuine, raise the limit: set "
                                  "NUCLEUS_CHECKPOINT_MAX_BYTES",
                                  max_bytes_, shown, size));
    } else {
      bytes_ += size;
    }
  }

 private:
  struct Level {
    std::string path;       // "" for the checkpoint folder itself
    std::string last_name;  // the last name listed in it
  };
  std::vector<Level> levels_{Level{}};
  std::size_t entries_ = 0;
  std::uint64_t path_bytes_ = 0;
  std::uint64_t bytes_ = 0;
  const std::uint64_t max_bytes_ = HmacTree::max_total_bytes();
};

// The signature frame's text, parsed, if it is format 3; formats 1 and 2 cannot be checked as
// they arrive, and no byte that cannot be checked is written.
std::pair<std::string, ChunkedSignature> read_signature(transfer::StreamReader& in) {
  const transfer::FrameHeader frame = in.next("the signature frame");
  if (frame.type != static_cast<char>(Frame::signature)) throw unexpected(frame, "the signature frame");
  if (frame.length > ChunkedSignature::max_manifest_text_size())
    throw integrity(fmt::format("the transfer stream's signature is {} bytes, more than the {} a signature may be",
                                frame.length, ChunkedSignature::max_manifest_text_size()));
  std::string text(frame.length, '\0');
  in.read(text.data(), text.size(), "the signature");
  if (!text.starts_with(ChunkedSignature::family))
    throw integrity("the transfer stream carries a checkpoint signed in format 1 (the seed's), which cannot be "
                    "checked as it arrives: sign it in format 3 before exporting it (nucleus-checkpoint sign "
                    "--format manifest --dir DIR)");
  ChunkedSignature signature = ChunkedSignature::parse(text);
  if (signature.format != SignatureFormat::manifest)
    throw integrity("the transfer stream carries a checkpoint signed in format 2, which cannot be checked as it "
                    "arrives: sign it in format 3 before exporting it (nucleus-checkpoint sign --format manifest "
                    "--dir DIR)");
  return {std::move(text), std::move(signature)};
}

// Reads the listing up to its end frame into `entries`, authenticating it as it comes.
SignedManifest read_listing(transfer::StreamReader& in, ManifestListing& listing, std::vector<Entry>& entries) {
  ListingCheck check;
  std::string record;
  for (;;) {
    const transfer::FrameHeader frame = in.next("the listing");
    const auto type = static_cast<Frame>(frame.type);
    if (type == Frame::listing_end && frame.length == 0) break;
    const std::uint64_t head = type == Frame::file ? 8 : 0;
    if ((type != Frame::folder && type != Frame::file) || frame.length <= head ||
        frame.length - head > HmacTree::max_path_length)
      throw unexpected(frame, fmt::format("a folder or file of the listing (a path of 1 to {} bytes)",
                                          HmacTree::max_path_length));
    record.resize(frame.length);
    in.read(record.data(), record.size(), "the listing");
    std::string path = record.substr(head);
    const std::uint64_t size = head ? transfer::get_u64le(record.data()) : 0;
    check.add(type == Frame::folder, path, size);
    if (type == Frame::folder) listing.folder(path);
    else listing.file(path, size);
    entries.push_back(type == Frame::folder ? Entry{true, std::move(path)} : Entry{});
  }
  try {
    return std::move(listing).authenticate();
  } catch (const Error& e) {
    throw integrity(fmt::format("the transfer stream's listing does not match its signature (it was changed, or "
                                "comes from another checkpoint, or was signed with another key): {}",
                                e.what()));
  }
}

// Receives one file's chunks into fd, checking each before it is written.
void receive_file(transfer::StreamReader& in, int fd, const ManifestFile& file, std::uint64_t chunk_size,
                  std::vector<char>& chunk) {
  for (std::uint64_t index = 0; index < file.chunks.size(); ++index) {
    const std::uint64_t length = std::min(chunk_size, file.size - index * chunk_size);
    const std::string expected = fmt::format("chunk {} of '{}' ({} bytes)", index, file.path, length);
    const transfer::FrameHeader frame = in.next(expected);
    if (frame.type != static_cast<char>(Frame::chunk) || frame.length != length) throw unexpected(frame, expected);
    chunk.resize(length);
    in.read(chunk.data(), length, expected);
    check_chunk(file, chunk_size, index, chunk.data(), length);
    write_all(fd, chunk.data(), length, fmt::format("checkpoint file '{}'", file.path));
  }
}

void import_with(int fd, const std::filesystem::path& dir, const VerifyingKeys& keys) {
  CheckpointDir staging = CheckpointDir::prepare(dir, CheckpointDir::Start::empty);
  transfer::StreamReader in(fd);
  auto [signature_text, signature] = read_signature(in);
  const TreeKey key = keys.key_for(signature);  // loaded only now that the stream is known to be signed
  ManifestListing listing(key, std::move(signature));
  std::vector<Entry> entries;
  const SignedManifest manifest = read_listing(in, listing, entries);

  // Authenticated: the importer makes each folder and file itself, relative to the staging folder.
  struct Open {
    std::string path;
    UniqueFd fd;
  };
  std::vector<Open> folders;  // the open folder and those above it, as in the walk
  std::vector<char> chunk;
  std::size_t next_file = 0;
  for (const Entry& entry : entries) {
    const ManifestFile* file = entry.folder ? nullptr : &manifest.files()[next_file++];
    const std::string& path = file ? file->path : entry.path;
    const auto slash = path.rfind('/');
    const std::string parent = slash == std::string::npos ? std::string() : path.substr(0, slash);
    const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    while (!folders.empty() && folders.back().path != parent) folders.pop_back();
    const int parent_fd = folders.empty() ? staging.dir() : folders.back().fd.get();
    if (!file) {
      if (::mkdirat(parent_fd, name.c_str(), 0700) != 0)
        throw system_error(status_of_errno(errno), errno, fmt::format("cannot create checkpoint folder '{}'", path));
      folders.push_back({path, open_dir_at(parent_fd, name, "checkpoint folder")});
      continue;
    }
    const UniqueFd file_fd(::openat(parent_fd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!file_fd) throw system_error(status_of_errno(errno), errno, fmt::format("cannot create checkpoint file '{}'", path));
    receive_file(in, file_fd.get(), *file, manifest.chunk_size(), chunk);
  }
  const transfer::FrameHeader end = in.next("the end frame");
  if (end.type != static_cast<char>(Frame::end) || end.length != 0) throw unexpected(end, "the end frame");
  in.require_end();
  const UniqueFd signature_fd(::openat(staging.dir(), HmacTree::signature_file,
                                       O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!signature_fd) throw system_error(status_of_errno(errno), errno, "cannot write the checkpoint's signature");
  write_all(signature_fd.get(), signature_text.data(), signature_text.size(), "the checkpoint's signature");
  staging.commit();
}

}  // namespace

void import_checkpoint(int fd, const std::filesystem::path& dir, const KeyStore& store) {
  import_with(fd, dir, VerifyingKeys(store));
}

void import_checkpoint(int fd, const std::filesystem::path& dir, const HmacKey& key) {
  import_with(fd, dir, VerifyingKeys(key));
}

}  // namespace nucleus::checkpoint
