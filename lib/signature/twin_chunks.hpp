// Chunks that are byte for byte the same as one already hashed: the pages a forked child still
// shares with its parent, which CRIU writes once for each process. Their digest is taken over
// after a comparison, at memory speed, instead of being computed again. Used only to sign a dump
// CRIU has just written into a private folder; verification always hashes every byte, so a wrong
// match could only make a checkpoint fail to verify, never make changed bytes verify.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <unordered_map>
#include <utility>

#include "signature/sha256.hpp"
#include "fs/unique_fd.hpp"

namespace nucleus::checkpoint {

class TwinChunks {
 public:
  using FileId = std::pair<dev_t, ino_t>;
  struct Chunk {
    FileId file;
    std::uint64_t index = 0, offset = 0, length = 0;  // index: the chunk's number in its file
  };

  // The digest of a chunk remembered at the same index in another file whose bytes equal this
  // one's (read from fd, compared through the two scratch buffers of equal size).
  std::optional<Sha256::Digest> find(int fd, const Chunk& chunk, std::span<unsigned char> ours,
                                     std::span<unsigned char> theirs);
  // Offers a hashed chunk to later find()s; the first at each index is kept.
  void remember(int fd, const Chunk& chunk, const Sha256::Digest& digest);
  // Drops everything remembered: its digests may no longer be those of the files' bytes.
  void forget_all();

 private:
  struct Known {
    Chunk chunk;
    int fd;  // one of files_
    Sha256::Digest digest;
  };
  std::mutex mutex_;
  std::map<FileId, UniqueFd> files_;  // copies of the descriptors: candidates outlive the caller's
  std::unordered_map<std::uint64_t, Known> by_index_;
};

}  // namespace nucleus::checkpoint
