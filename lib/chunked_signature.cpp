#include "chunked_signature.hpp"

#include <sodium.h>

#include <array>
#include <bit>
#include <charconv>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs_util.hpp"
#include "tree_walk.hpp"

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

void put_u64(HmacSha256& mac, std::uint64_t value) {
  std::array<unsigned char, 8> le{};
  for (std::size_t i = 0; i < le.size(); ++i) le[i] = static_cast<unsigned char>(value >> (8 * i));
  mac.update(le.data(), le.size());
}

}  // namespace

std::string ChunkedSignature::to_text() const {
  std::array<char, 2 * sizeof mac + 1> hex{};
  sodium_bin2hex(hex.data(), hex.size(), mac.data(), mac.size());
  return fmt::format("{}\nchunk-size {}\nhmac-sha256 {}\n", header, chunk_size, hex.data());
}

ChunkedSignature ChunkedSignature::parse(std::string_view text) {
  const auto first_end = text.find('\n');
  const std::string_view first = text.substr(0, first_end);
  if (first != header)
    throw Error(Status::integrity,
                fmt::format("checkpoint is signed in the format '{}', which this library does not know (it knows "
                            "'{}' and nucleus-container's): verify it with the version that wrote it, or upgrade",
                            first.substr(0, 64), header));
  if (first_end == std::string_view::npos) throw malformed("the header line is unterminated");
  text.remove_prefix(first_end + 1);
  ChunkedSignature s;
  const std::string_view size = take_line(text, "chunk-size");
  const auto [end, ec] = std::from_chars(size.data(), size.data() + size.size(), s.chunk_size);
  if (ec != std::errc() || end != size.data() + size.size() || size.front() == '0' || !std::has_single_bit(s.chunk_size) ||
      s.chunk_size < min_chunk_size || s.chunk_size > max_chunk_size)
    throw malformed(fmt::format("chunk-size must be a power of two from {} to {}", min_chunk_size, max_chunk_size));
  const std::string_view hex = take_line(text, "hmac-sha256");
  const bool lower_hex = std::all_of(hex.begin(), hex.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
  std::size_t len = 0;
  if (hex.size() != 2 * s.mac.size() || !lower_hex ||
      sodium_hex2bin(s.mac.data(), s.mac.size(), hex.data(), hex.size(), nullptr, &len, nullptr) != 0 || len != s.mac.size())
    throw malformed(fmt::format("hmac-sha256 must be {} lowercase hex digits", 2 * s.mac.size()));
  if (!text.empty()) throw malformed("unexpected text after the hmac-sha256 line");
  return s;
}

HmacSha256::Mac chunked_tree_mac(int root_fd, const HmacKey& key, std::uint64_t chunk_size,
                                 const HmacTree::Progress& progress, StartedDigests* started, TwinChunks* twins) {
  HmacSha256 mac(key.bytes());
  mac.update(ChunkedSignature::header.data(), ChunkedSignature::header.size());
  mac.update("", 1);
  put_u64(mac, chunk_size);
  const unsigned threads = hash_threads();
  std::uint64_t hashed = 0;
  const ChunkedFileDigest::BytesHashed done = [&](std::uint64_t bytes) {
    hashed += bytes;
    if (progress) progress(hashed);
  };
  walk_checkpoint_tree(root_fd, [&](int fd, const struct stat& st, const std::string& rel) {
    const bool folder = S_ISDIR(st.st_mode);
    mac.update(folder ? "D" : "F", 1);
    put_u64(mac, rel.size());
    mac.update(rel.data(), rel.size());
    if (folder) return;
    const auto size = static_cast<std::uint64_t>(st.st_size);
    ChunkedFileDigest digest(chunk_size);
    if (started) {
      // Begun while the file was written; unusable in another chunk size, or if the file is now
      // shorter than what was hashed.
      if (const auto it = started->find({st.st_dev, st.st_ino});
          it != started->end() && it->second.chunk_size() == chunk_size && it->second.hashed() <= size)
        digest = std::move(it->second);
    }
    const Sha256::Digest d = digest.finish(fd, size, threads, rel, done, twins);
    put_u64(mac, size);
    mac.update(d.data(), d.size());
  }, HmacTree::signature_file);
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
