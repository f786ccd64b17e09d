// A file's digest in the chunked signature format: SHA-256 over the SHA-256 digests of its
// consecutive chunk_size-byte chunks (the last may be shorter; an empty file has none). Chunks
// are independent, so a file is hashed on several cores at once, and in steps: whole chunks
// while the file is still being written, the rest once it is complete.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "signature/sha256.hpp"
#include "signature/twin_chunks.hpp"

namespace nucleus::checkpoint {

// Threads worth hashing on: the CPUs this process may run on, at most 8.
unsigned hash_threads();

// A file's digest from its chunk digests, in order: SHA-256 of their concatenation.
Sha256::Digest file_digest_of(std::span<const Sha256::Digest> chunk_digests);

class ChunkedFileDigest {
 public:
  // After each window of chunks, the bytes it hashed; their digests are in chunk_digests() by then.
  using BytesHashed = std::function<void(std::uint64_t bytes)>;

  explicit ChunkedFileDigest(std::uint64_t chunk_size);

  std::uint64_t hashed() const noexcept { return hashed_; }  // a multiple of the chunk size until finish
  std::uint64_t chunk_size() const noexcept { return chunk_size_; }
  // The digests of the chunks hashed so far, in order: what format 3's manifest lists.
  const std::vector<Sha256::Digest>& chunk_digests() const noexcept { return chunks_; }

  // Hashes the whole chunks from hashed() up to `end`, rounded down to a chunk. `rel` names the
  // file in errors.
  // With twins, chunks equal to one remembered there are taken over, and hashed ones remembered.
  void advance(int fd, std::uint64_t end, unsigned threads, std::string_view rel, const BytesHashed& done = {},
               TwinChunks* twins = nullptr);
  // Hashes the rest of a file of `size` bytes and returns its digest. Integrity failure if the
  // file turns out shorter or longer than `size`.
  Sha256::Digest finish(int fd, std::uint64_t size, unsigned threads, std::string_view rel,
                        const BytesHashed& done = {}, TwinChunks* twins = nullptr);

 private:
  void hash_chunks(int fd, std::uint64_t end, unsigned threads, std::string_view rel, const BytesHashed& done,
                   TwinChunks* twins);

  std::uint64_t chunk_size_;
  std::uint64_t hashed_ = 0;
  std::vector<Sha256::Digest> chunks_;
};

}  // namespace nucleus::checkpoint
