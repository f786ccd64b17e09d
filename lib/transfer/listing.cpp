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
#include "signature/hmac_sha256.hpp"

namespace nucleus::checkpoint::transfer {

namespace {

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

// The spool is written and read back this much at a time.
constexpr std::size_t spool_buffer_size = 64 << 10;
// The most of a signature taken for its three lines (the manifest follows them).
constexpr std::size_t max_head_size = ChunkedSignature::max_text_size_without_manifest;

// The spool, in errors.
std::string spool_name(std::string_view source) {
  return fmt::format("the unnamed file in the staging folder in which {}'s signature and listing wait to be "
                     "authenticated",
                     source);
}

// The next line of a manifest already checked for its form, its digests handed to `each` as they
// are decoded.
void read_manifest_line(SpoolReader& in, const std::function<void(const Sha256::Digest&)>& each) {
  constexpr std::size_t digits = 2 * std::tuple_size_v<Sha256::Digest>;
  char hex[digits];
  for (;;) {
    in.read(hex, 1);
    if (hex[0] == '\n') return;
    in.read(hex + 1, digits - 1);
    const auto digest = HmacSha256::from_hex({hex, digits});
    if (!digest) throw Error(Status::internal, "the spooled manifest changed after it was checked");
    each(*digest);
  }
}

// Plain names joined by '/': what a walk's relative paths are.
bool is_plain_path(std::string_view rel) {
  for (;;) {
    const auto slash = rel.find('/');
    if (!is_plain_name(rel.substr(0, slash))) return false;
    if (slash == std::string_view::npos) return true;
    rel.remove_prefix(slash + 1);
  }
}

// Whether the walk meets relative path a before b: folder by folder, the names in byte order, a
// folder before its contents.
bool walks_before(std::string_view a, std::string_view b) {
  for (;;) {
    const auto a_end = a.find('/'), b_end = b.find('/');
    const std::string_view a_name = a.substr(0, a_end), b_name = b.substr(0, b_end);
    if (a_name != b_name) return a_name < b_name;
    if (a_end == std::string_view::npos) return b_end != std::string_view::npos;
    if (b_end == std::string_view::npos) return false;
    a.remove_prefix(a_end + 1);
    b.remove_prefix(b_end + 1);
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

SpoolReader::SpoolReader(int fd, std::uint64_t from, std::uint64_t to)
    : fd_(fd), at_(from), end_(to), buffer_(spool_buffer_size) {}

bool SpoolReader::get(char& c) {
  if (pos_ == len_) {
    if (at_ == end_) return false;
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buffer_.size(), end_ - at_));
    if (pread_full(fd_, buffer_.data(), want, at_, "the spooled listing") != want)
      throw Error(Status::io, "the spooled listing is shorter than what was written to it");
    at_ += want;
    pos_ = 0;
    len_ = want;
  }
  c = buffer_[pos_++];
  return true;
}

void SpoolReader::read(char* data, std::size_t size) {
  for (std::size_t i = 0; i < size; ++i)
    if (!get(data[i])) throw Error(Status::io, "the spooled listing is shorter than what was written to it");
}

ListingReceiver::ListingReceiver(std::string_view source, int spool_dir_fd, const VerifyingKeys& keys)
    : source_(source), keys_(keys),
      spool_(unnamed_file_at(spool_dir_fd, spool_name(source))) {
  out_.reserve(spool_buffer_size);
}

void ListingReceiver::receive_signature(std::uint64_t size, const ReadBytes& read, std::string_view before) {
  if (const std::uint64_t max_size = ChunkedSignature::max_manifest_text_size(); size > max_size)
    throw integrity(fmt::format("{}'s signature is {} bytes, more than the {} a signature may be", source_, size,
                                max_size));
  // Its three lines are parsed once they are in, the manifest after them checked as it comes.
  std::string head;
  int head_lines = 0;
  std::optional<ChunkedSignature> signature;
  ManifestForm form;
  std::vector<char> piece(static_cast<std::size_t>(std::min<std::uint64_t>(size, spool_buffer_size)));
  for (std::uint64_t left = size; left > 0;) {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left, piece.size()));
    read(piece.data(), n);
    left -= n;
    spool(piece.data(), n);
    std::string_view text(piece.data(), n);
    while (!signature && !text.empty()) {
      head += text.front();
      text.remove_prefix(1);
      head_lines += head.back() == '\n';
      if (head_lines == 3 || head.size() == max_head_size || (text.empty() && left == 0))
        signature = parse_manifest_signature(head, source_, before);
    }
    form.feed(text);
  }
  if (!signature) signature = parse_manifest_signature(head, source_, before);  // an empty one
  flush();
  head_size_ = head.size();
  signature_size_ = size;
  const std::size_t lines = form.finish();
  check_.emplace(keys_.key_for(*signature), std::move(*signature), lines);  // the key, only now
  lines_.emplace(spool_.get(), head_size_, signature_size_);
}

bool ListingReceiver::is_record(const FrameHeader& frame) {
  const auto type = static_cast<Frame>(frame.type);
  const std::uint64_t head = type == Frame::file ? 8 : 0;
  return (type == Frame::folder || type == Frame::file) && frame.length > head &&
         frame.length - head <= HmacTree::max_path_length;
}

void ListingReceiver::expect_link(std::string_view rel, std::string_view target) {
  link_.emplace(rel, target);
}

void ListingReceiver::take_link_before(std::optional<std::string_view> rel) {
  if (!link_ || (rel && !walks_before(link_->first, *rel))) return;
  const auto [path, target] = *std::exchange(link_, std::nullopt);
  check(false, path, 0);  // an entry in its folder's order, as a file of no bytes would be
  check_->link(path, target);
}

ListedRecord ListingReceiver::add(const FrameHeader& frame, std::string_view payload) {
  const bool folder = static_cast<Frame>(frame.type) == Frame::folder;
  const std::string_view path = payload.substr(folder ? 0 : 8);
  const std::uint64_t size = folder ? 0 : get_u64le(payload.data());
  take_link_before(path);
  check(folder, path, size);
  char header[frame_header_size];
  header[0] = frame.type;
  put_u64le(header + 1, payload.size());
  spool(header, sizeof header);
  spool(payload.data(), payload.size());
  if (folder) {
    check_->folder(path);
  } else if (const std::optional<std::size_t> line = check_->next_line()) {
    Sha256 file_digest;  // file_digest_of, a digest at a time
    std::uint64_t chunks = 0;
    read_manifest_line(*lines_, [&](const Sha256::Digest& digest) {
      file_digest.update(digest.data(), digest.size());
      ++chunks;
    });
    check_->file(path, size, *line, chunks, file_digest.final());
  }
  return {folder, path, size};
}

void ListingReceiver::check(bool folder, std::string_view rel, std::uint64_t size) {
  if (entries_++ == HmacTree::max_entries)
    throw integrity(fmt::format("{} lists more than {} entries, the limit on a checkpoint tree", source_,
                                HmacTree::max_entries));
  path_bytes_ += rel.size();
  if (path_bytes_ > max_listing_path_bytes)
    throw integrity(fmt::format("{} lists paths adding up to more than {} bytes, more than an importer holds before "
                                "the listing is authenticated; refused",
                                source_, max_listing_path_bytes));
  const auto shown = [rel] {  // quoted for the operator, no controls; made only for an error
    std::string text = to_valid_utf8(rel.substr(0, 256));
    std::replace_if(text.begin(), text.end(), [](char c) { return c >= 0 && c < 0x20; }, '?');
    return text;
  };
  if (!is_plain_path(rel))
    throw integrity(fmt::format("{} lists '{}', which is not a plain relative path in a checkpoint (no '..', '.', "
                                "empty or absolute names, no NUL, UTF-8 names of at most 255 bytes); refused",
                                source_, shown()));
  const auto slash = rel.rfind('/');
  const std::string_view parent = slash == std::string_view::npos ? std::string_view() : rel.substr(0, slash);
  const std::string_view name = rel.substr(slash == std::string_view::npos ? 0 : slash + 1);
  if (parent.empty() && name == HmacTree::signature_file)
    throw integrity(fmt::format("{} lists '{}' among the signed files", source_, HmacTree::signature_file));
  while (levels_.size() > 1 && levels_.back().path != parent) levels_.pop_back();
  Level& level = levels_.back();
  if (level.path != parent)
    throw integrity(
        fmt::format("{} lists '{}' where its folder is not open: the listing is out of walk order", source_, shown()));
  if (name <= level.last_name)
    throw integrity(fmt::format("{} lists '{}' out of walk order (each folder's names in byte order, each once)",
                                source_, shown()));
  level.last_name = name;
  if (folder) {
    if (levels_.size() > static_cast<std::size_t>(HmacTree::max_depth))
      throw integrity(
          fmt::format("{} lists '{}', nested deeper than {} levels", source_, shown(), HmacTree::max_depth));
    levels_.push_back({std::string(rel), {}});
  } else if (size > max_bytes_ - bytes_) {
    throw integrity(fmt::format("{} lists files adding up to more than {} bytes, the limit on one checkpoint (at "
                                "'{}', of {} bytes); if it is genuine, raise the limit: set "
                                "NUCLEUS_CHECKPOINT_MAX_BYTES",
                                source_, max_bytes_, shown(), size));
  } else {
    bytes_ += size;
  }
}

void ListingReceiver::authenticate() {
  take_link_before(std::nullopt);
  flush();
  try {
    check_->authenticate();
  } catch (const Error& e) {
    throw integrity(fmt::format("{}'s listing does not match its signature (it was changed, or comes from another "
                                "checkpoint, or was signed with another key): {}",
                                source_, e.what()));
  }
  authenticated_ = true;
}

std::uint64_t ListingReceiver::chunk_size() const {
  require_authenticated();
  return check_->chunk_size();
}

std::string ListingReceiver::signature_text() const {
  require_authenticated();
  std::string text(signature_size_, '\0');
  if (pread_full(spool_.get(), text.data(), text.size(), 0, "the spooled signature") != text.size())
    throw Error(Status::io, "the spooled signature is shorter than what was written to it");
  return text;
}

void ListingReceiver::for_each_listed(const EachListed& each) const {
  require_authenticated();
  SpoolReader records(spool_.get(), signature_size_, spooled_), lines(spool_.get(), head_size_, signature_size_);
  std::string folder;
  ManifestFile file;
  for (char header[frame_header_size]; records.get(header[0]);) {
    records.read(header + 1, frame_header_size - 1);
    const std::uint64_t length = get_u64le(header + 1);
    if (static_cast<Frame>(header[0]) == Frame::folder) {
      folder.resize(length);
      records.read(folder.data(), folder.size());
      each(folder, nullptr);
      continue;
    }
    char size[8];
    records.read(size, sizeof size);
    file.size = get_u64le(size);
    file.path.resize(length - sizeof size);
    records.read(file.path.data(), file.path.size());
    file.chunks.clear();
    read_manifest_line(lines, [&](const Sha256::Digest& digest) { file.chunks.push_back(digest); });
    each(file.path, &file);
  }
}

void ListingReceiver::require_authenticated() const {
  if (!authenticated_) throw Error(Status::internal, "a listing was read back before it was authenticated");
}

void ListingReceiver::spool(const void* data, std::size_t size) {
  const auto* bytes = static_cast<const char*>(data);
  out_.insert(out_.end(), bytes, bytes + size);
  spooled_ += size;
  if (out_.size() >= spool_buffer_size) flush();
}

void ListingReceiver::flush() {
  write_all(spool_.get(), out_.data(), out_.size(), spool_name(source_));
  out_.clear();
}

void make_listed_tree(int staging_fd, const ListingReceiver& listing, const FillListed& fill) {
  struct Open {
    std::string path;
    UniqueFd fd;
  };
  std::vector<Open> folders;  // the open folder and those above it, as in the walk
  listing.for_each_listed([&](const std::string& path, const ManifestFile* file) {
    const auto slash = path.rfind('/');
    const std::string parent = slash == std::string::npos ? std::string() : path.substr(0, slash);
    const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    while (!folders.empty() && folders.back().path != parent) folders.pop_back();
    const int parent_fd = folders.empty() ? staging_fd : folders.back().fd.get();
    if (!file) {
      if (::mkdirat(parent_fd, name.c_str(), 0700) != 0)
        throw system_error(status_of_errno(errno), errno, fmt::format("cannot create checkpoint folder '{}'", path));
      folders.push_back({path, open_dir_at(parent_fd, name, "checkpoint folder")});
      return fill(path, nullptr, -1);
    }
    const UniqueFd file_fd(
        ::openat(parent_fd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!file_fd)
      throw system_error(status_of_errno(errno), errno, fmt::format("cannot create checkpoint file '{}'", path));
    fill(path, file, file_fd.get());
  });
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
