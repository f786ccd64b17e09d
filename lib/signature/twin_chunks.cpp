#include "signature/twin_chunks.hpp"

#include <unistd.h>
#include <fcntl.h>

#include <algorithm>
#include <cstring>

#include "fs/fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

constexpr std::size_t max_files = 64;           // descriptors kept for comparisons
constexpr std::size_t max_indexes = 1 << 16;    // chunk numbers remembered (256 GiB at 4 MiB chunks)
constexpr std::size_t probe_size = 4096;        // compared first, so a chunk that differs costs little

// Whether length bytes at the two offsets are equal, piece by piece through the two buffers.
bool same_bytes(int fd_a, std::uint64_t at_a, int fd_b, std::uint64_t at_b, std::uint64_t length,
                std::span<unsigned char> a, std::span<unsigned char> b) {
  for (std::uint64_t done = 0; done < length;) {
    const std::size_t piece = static_cast<std::size_t>(
        std::min<std::uint64_t>({length - done, a.size(), done == 0 ? probe_size : a.size()}));
    if (pread_full(fd_a, a.data(), piece, at_a + done, "a checkpoint image") != piece ||
        pread_full(fd_b, b.data(), piece, at_b + done, "a checkpoint image") != piece ||
        std::memcmp(a.data(), b.data(), piece) != 0)
      return false;
    done += piece;
  }
  return true;
}

}  // namespace

std::optional<Sha256::Digest> TwinChunks::find(int fd, const Chunk& chunk, std::span<unsigned char> ours,
                                               std::span<unsigned char> theirs) {
  Known twin{};
  {
    const std::lock_guard lock(mutex_);
    const auto it = by_index_.find(chunk.index);
    if (it == by_index_.end() || it->second.chunk.file == chunk.file || it->second.chunk.length != chunk.length)
      return std::nullopt;
    twin = it->second;
  }
  if (!same_bytes(fd, chunk.offset, twin.fd, twin.chunk.offset, chunk.length, ours, theirs)) return std::nullopt;
  return twin.digest;
}

void TwinChunks::remember(int fd, const Chunk& chunk, const Sha256::Digest& digest) {
  const std::lock_guard lock(mutex_);
  if (by_index_.contains(chunk.index) || by_index_.size() >= max_indexes) return;
  auto file = files_.find(chunk.file);
  if (file == files_.end()) {
    if (files_.size() >= max_files) return;
    UniqueFd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!copy) return;  // only a missed shortcut
    file = files_.emplace(chunk.file, std::move(copy)).first;
  }
  by_index_.emplace(chunk.index, Known{chunk, file->second.get(), digest});
}

void TwinChunks::forget_all() {
  const std::lock_guard lock(mutex_);
  by_index_.clear();
  files_.clear();
}

}  // namespace nucleus::checkpoint
