#include "signature/chunked_signature.hpp"

#include <algorithm>
#include <bit>
#include <charconv>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"

namespace nucleus::checkpoint {

namespace {

Error malformed(std::string_view what) {
  return Error(Status::integrity, fmt::format("Checkpoint signature {} is malformed: {}", HmacTree::signature_file, what));
}

// Takes "KEY VALUE\n" off the front of text and returns VALUE.
std::string_view take_line(std::string_view& text, std::string_view key) {
  const auto end = text.find('\n');
  if (end == std::string_view::npos) throw malformed(fmt::format("the '{}' line is missing or unterminated", key));
  std::string_view line = text.substr(0, end);
  text.remove_prefix(end + 1);
  if (!line.starts_with(key) || line.size() <= key.size() || line[key.size()] != ' ')
    throw malformed(fmt::format("expected a '{}' line", key));
  return line.substr(key.size() + 1);
}

}  // namespace

std::string ChunkedSignature::to_text() const {
  return fmt::format("{}\nchunk-size {}\nhmac-sha256 {}\n", header, chunk_size, HmacSha256::to_hex(mac));
}

ChunkedSignature ChunkedSignature::parse(std::string_view text) {
  const auto first_end = text.find('\n');
  const std::string_view first = text.substr(0, first_end);
  if (first != header) {
    // Quoted for the operator, but only as printable ASCII: the text is the checkpoint's, not ours.
    std::string shown(first.substr(0, 64));
    std::replace_if(shown.begin(), shown.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
    throw Error(Status::integrity,
                fmt::format("checkpoint is signed in the format '{}', which this library does not know (it knows "
                            "'{}' and nucleus-container's): verify it with the version that wrote it, or upgrade",
                            shown, header));
  }
  if (first_end == std::string_view::npos) throw malformed("the header line is unterminated");
  text.remove_prefix(first_end + 1);
  ChunkedSignature s;
  const std::string_view size = take_line(text, "chunk-size");
  const auto [end, ec] = std::from_chars(size.data(), size.data() + size.size(), s.chunk_size);
  if (ec != std::errc() || end != size.data() + size.size() || size.front() == '0' || !std::has_single_bit(s.chunk_size) ||
      s.chunk_size < min_chunk_size || s.chunk_size > max_chunk_size)
    throw malformed(fmt::format("chunk-size must be a power of two from {} to {}", min_chunk_size, max_chunk_size));
  const auto mac = HmacSha256::from_hex(take_line(text, "hmac-sha256"));
  if (!mac) throw malformed(fmt::format("hmac-sha256 must be {} lowercase hex digits", 2 * s.mac.size()));
  s.mac = *mac;
  if (!text.empty()) throw malformed("unexpected text after the hmac-sha256 line");
  return s;
}

HmacSha256::Mac chunked_tree_mac(int root_fd, const HmacKey& key, std::uint64_t chunk_size,
                                 const HmacTree::Progress& progress, StartedDigests* started, TwinChunks* twins) {
  HmacSha256 mac(key.bytes());
  mac.update(ChunkedSignature::header.data(), ChunkedSignature::header.size());
  mac.update("", 1);
  mac.update_u64le(chunk_size);
  const unsigned threads = hash_threads();
  std::uint64_t hashed = 0;
  const ChunkedFileDigest::BytesHashed done = [&](std::uint64_t bytes) {
    hashed += bytes;
    if (progress) progress(hashed);
  };
  walk_checkpoint_files(root_fd, [&](int fd, const struct stat& st, const std::string& rel) {
    const bool folder = S_ISDIR(st.st_mode);
    mac.update(folder ? "D" : "F", 1);
    mac.update_u64le(rel.size());
    mac.update(rel.data(), rel.size());
    if (folder) return;
    const auto size = static_cast<std::uint64_t>(st.st_size);
    ChunkedFileDigest digest(chunk_size);
    if (started) {
      // Begun while the file was written; unusable in another chunk size, or if the file is now
      // shorter than what was hashed.
      // Taken out, so that a second name for the same file (a hard link) starts afresh.
      if (auto node = started->extract({st.st_dev, st.st_ino});
          !node.empty() && node.mapped().chunk_size() == chunk_size && node.mapped().hashed() <= size)
        digest = std::move(node.mapped());
    }
    const Sha256::Digest d = digest.finish(fd, size, threads, rel, done, twins);
    mac.update_u64le(size);
    mac.update(d.data(), d.size());
  }, HmacTree::signature_file, HmacTree::max_total_bytes());
  return mac.final();
}

void sign_chunked(int root_fd, const HmacKey& key, const HmacTree::Progress& progress, StartedDigests* started,
                  TwinChunks* twins) {
  // A stale temp file from an interrupted sign must not become part of what is signed.
  remove_stale_temp_at(root_fd, HmacTree::signature_file);
  ChunkedSignature s;
  s.mac = chunked_tree_mac(root_fd, key, s.chunk_size, progress, started, twins);
  write_file_atomic_at(root_fd, HmacTree::signature_file, s.to_text(), 0600);
}

}  // namespace nucleus::checkpoint
