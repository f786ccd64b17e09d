#include "signature/signed_manifest.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <numeric>
#include <utility>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>

#include "fs/fs_util.hpp"
#include "fs/tree_walk.hpp"

namespace nucleus::checkpoint {

namespace {

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

// What every refused chunk says: the file and the bytes, first to last, that are not as signed.
Error differs(const ManifestFile& file, std::uint64_t first, std::uint64_t last, std::string_view why = {}) {
  return integrity(
      fmt::format("checkpoint file '{}' differs from what was signed in bytes {}–{}{}", file.path, first, last, why));
}

// Chunk `index` of a file as signed; index is below file.chunks.size().
Error chunk_differs(const ManifestFile& file, std::uint64_t chunk_size, std::uint64_t index,
                    std::string_view why = {}) {
  const std::uint64_t from = index * chunk_size;
  return differs(file, from, std::min(from + chunk_size, file.size) - 1, why);
}

}  // namespace

std::optional<ChunkedSignature> SignedManifest::read_signature(int dir_fd) {
  const std::string text = read_signature_text(dir_fd);  // up to 126 MiB: gone before the walk
  // Formats 1 and 2, even malformed, are HmacTree::verify's to judge.
  if (!text.starts_with(ChunkedSignature::family)) return std::nullopt;
  ChunkedSignature signature = ChunkedSignature::parse(text);
  if (signature.format != SignatureFormat::manifest) return std::nullopt;
  return signature;
}

std::optional<SignedManifest> SignedManifest::load(int dir_fd, const VerifyingKeys& keys) {
  std::optional<ChunkedSignature> signature = read_signature(dir_fd);
  if (!signature) return std::nullopt;
  return authenticate(dir_fd, keys, std::move(*signature));
}

SignedManifest SignedManifest::authenticate(int dir_fd, const VerifyingKeys& keys, ChunkedSignature signature) {
  const TreeKey key = keys.key_for(signature);  // before the walk: an unknown signer costs nothing
  ManifestListing listing(key, std::move(signature));
  walk_checkpoint_files(dir_fd, [&](int fd, const struct stat& st, const std::string& rel) {
    if (S_ISDIR(st.st_mode)) return listing.folder(rel);
    if (S_ISLNK(st.st_mode)) return listing.link(rel, read_link_fd(fd, rel));
    listing.file(rel, static_cast<std::uint64_t>(st.st_size));
  }, HmacTree::signature_file, HmacTree::max_total_bytes());
  return std::move(listing).authenticate();
}

ManifestCheck::ManifestCheck(TreeKey key, ChunkedSignature signature, std::size_t lines)
    : signature_(std::move(signature)), mac_(key, SignatureFormat::manifest, signature_.chunk_size), lines_(lines) {
  signature_.manifest.clear();
}

std::optional<std::size_t> ManifestCheck::next_line() {
  // The manifest has no paths: its lines are the listing's files in order, so a wrong number of
  // them is told first (it would put the lines after it against the wrong files).
  const std::size_t line = files_++;
  if (line >= lines_ || !wrong_length_.empty()) return std::nullopt;
  return line;
}

bool ManifestCheck::file(std::string_view rel, std::uint64_t size, std::size_t line, std::uint64_t chunks,
                         const Sha256::Digest& file_digest) {
  const std::uint64_t chunk_size = signature_.chunk_size;
  if (const std::uint64_t count = chunk_count(size, chunk_size); chunks != count) {
    wrong_length_ = fmt::format(
        "Checkpoint integrity verification failed: {} lists {} chunk digests for '{}' (manifest line {}), but its "
        "{} bytes make {} chunks of {}: it changed size since it was signed, or the signature is damaged",
        HmacTree::signature_file, chunks, rel, line + 1, size, count, chunk_size);
    return false;
  }
  mac_.file(rel, size, file_digest);
  return true;
}

void ManifestCheck::authenticate() {
  if (files_ != lines_)
    throw integrity(fmt::format(
        "Checkpoint integrity verification failed: {} lists the chunks of {} files, but the folder holds {}: files "
        "were added or removed since it was signed, or the signature is damaged",
        HmacTree::signature_file, lines_, files_));
  if (!wrong_length_.empty()) throw integrity(std::move(wrong_length_));
  mac_.check(signature_);
}

ManifestListing::ManifestListing(TreeKey key, ChunkedSignature signature)
    : lines_(std::move(signature.manifest)), check_(key, std::move(signature), lines_.size()) {
  manifest_.chunk_size_ = check_.chunk_size();
}

void ManifestListing::file(std::string_view rel, std::uint64_t size) {
  const std::optional<std::size_t> line = check_.next_line();
  if (!line) return;
  std::vector<Sha256::Digest>& chunks = lines_[*line];
  if (check_.file(rel, size, *line, chunks.size(), file_digest_of(chunks)))
    manifest_.files_.push_back({std::string(rel), size, std::move(chunks)});
}

SignedManifest ManifestListing::authenticate() && {
  check_.authenticate();
  SignedManifest& m = manifest_;
  m.by_path_.resize(m.files_.size());
  std::iota(m.by_path_.begin(), m.by_path_.end(), std::size_t{0});
  std::sort(m.by_path_.begin(), m.by_path_.end(),
            [&m](std::size_t a, std::size_t b) { return m.files_[a].path < m.files_[b].path; });
  return std::move(m);
}

const ManifestFile* SignedManifest::find(std::string_view path) const {
  const auto it = std::lower_bound(by_path_.begin(), by_path_.end(), path,
                                   [this](std::size_t i, std::string_view p) { return files_[i].path < p; });
  return it != by_path_.end() && files_[*it].path == path ? &files_[*it] : nullptr;
}

void check_chunk(const ManifestFile& file, std::uint64_t chunk_size, std::uint64_t index, const void* data,
                 std::size_t size) {
  if (index >= file.chunks.size())
    throw integrity(fmt::format("checkpoint file '{}' differs from what was signed: it has no chunk {}, as its {} "
                                "bytes signed make {} chunks of {}",
                                file.path, index, file.size, file.chunks.size(), chunk_size));
  const std::uint64_t from = index * chunk_size, length = std::min(chunk_size, file.size - from);
  if (size != length) throw chunk_differs(file, chunk_size, index, fmt::format(" ({} bytes given for them)", size));
  Sha256 sha;
  sha.update(data, size);
  if (sha.final() != file.chunks[index]) throw chunk_differs(file, chunk_size, index);
}

ChunkedFileDigest::BytesHashed checking_chunks(const ManifestFile& file, std::uint64_t chunk_size,
                                               const ChunkedFileDigest& digest, ChunkedFileDigest::BytesHashed then) {
  return [&file, chunk_size, &digest, then = std::move(then), checked = std::size_t{0}](std::uint64_t bytes) mutable {
    const std::vector<Sha256::Digest>& hashed = digest.chunk_digests();
    for (; checked < hashed.size(); ++checked) {
      if (checked >= file.chunks.size())
        throw integrity(fmt::format("checkpoint file '{}' has more chunks than were signed", file.path));
      if (hashed[checked] != file.chunks[checked]) throw chunk_differs(file, chunk_size, checked);
    }
    if (then) then(bytes);
  };
}

void verify_file(int fd, const ManifestFile& file, std::uint64_t chunk_size, unsigned threads) {
  const auto size = static_cast<std::uint64_t>(stat_fd(fd, fmt::format("checkpoint file '{}'", file.path)).st_size);
  if (size != file.size)
    throw integrity(fmt::format("checkpoint file '{}' is {} bytes, but was signed with {}", file.path, size, file.size));
  ChunkedFileDigest digest(chunk_size);
  (void)digest.finish(fd, file.size, threads, file.path, checking_chunks(file, chunk_size, digest));
}

void verify_with_manifest(int dir_fd, const VerifyingKeys& keys, ChunkedSignature signature,
                          const HmacTree::Progress& progress) {
  // The signature line alone, for the second check: the manifest's lines go into the manifest.
  std::vector<std::vector<Sha256::Digest>> lines = std::move(signature.manifest);
  const ChunkedSignature signature_line = signature;
  signature.manifest = std::move(lines);
  const TreeKey key = keys.key_for(signature_line);
  const SignedManifest manifest = SignedManifest::authenticate(dir_fd, keys, std::move(signature));
  // Every chunk is checked as it is hashed; the signature, checked again over the bytes, then
  // fails only if the tree changed between the walks (a folder added, a file removed).
  verify_chunked(dir_fd, key, signature_line, progress, &manifest);
}

}  // namespace nucleus::checkpoint
