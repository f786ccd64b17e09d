#include "signature/chunked_digest.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

constexpr std::uint64_t window_chunks = 64;  // hashed in parallel between progress reports
constexpr std::size_t read_size = 256 << 10;  // stays in cache while it is hashed

Error changed_size(std::string_view rel) {
  return Error(Status::integrity, fmt::format("checkpoint file '{}' changed size during the integrity scan", rel));
}

// Reads exactly size bytes at offset (fewer only at the end of the file: then a size error).
void read_exactly(int fd, unsigned char* buffer, std::size_t size, std::uint64_t offset, std::string_view rel) {
  if (pread_full(fd, buffer, size, offset, fmt::format("checkpoint file '{}'", rel)) != size) throw changed_size(rel);
}

}  // namespace

unsigned hash_threads() {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const int count = ::sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
  return static_cast<unsigned>(std::clamp(count, 1, 8));
}

Sha256::Digest file_digest_of(std::span<const Sha256::Digest> chunk_digests) {
  Sha256 outer;
  for (const auto& d : chunk_digests) outer.update(d.data(), d.size());
  return outer.final();
}

ChunkedFileDigest::ChunkedFileDigest(std::uint64_t chunk_size) : chunk_size_(chunk_size) {}

void ChunkedFileDigest::advance(int fd, std::uint64_t end, unsigned threads, std::string_view rel,
                                const BytesHashed& done, TwinChunks* twins) {
  hash_chunks(fd, end - end % chunk_size_, threads, rel, done, twins);
}

Sha256::Digest ChunkedFileDigest::finish(int fd, std::uint64_t size, unsigned threads, std::string_view rel,
                                         const BytesHashed& done, TwinChunks* twins) {
  if (hashed_ > size) throw changed_size(rel);
  hash_chunks(fd, size, threads, rel, done, twins);
  unsigned char past_end = 0;
  ssize_t n;
  while ((n = ::pread(fd, &past_end, 1, static_cast<off_t>(size))) < 0 && errno == EINTR) {
  }
  if (n != 0) throw changed_size(rel);
  return file_digest_of(chunks_);
}

// Hashes chunks from hashed_ to end, a window at a time: each window's chunks on up to `threads`
// threads, then their digests appended to chunks_ in order.
void ChunkedFileDigest::hash_chunks(int fd, std::uint64_t end, unsigned threads, std::string_view rel,
                                    const BytesHashed& done, TwinChunks* twins) {
  TwinChunks::FileId file{};
  if (twins && hashed_ < end) {
    const struct stat st = stat_fd(fd, rel);
    file = {st.st_dev, st.st_ino};
  }
  while (hashed_ < end) {
    const std::uint64_t left = (end - hashed_ + chunk_size_ - 1) / chunk_size_;
    const std::uint64_t count = std::min(left, window_chunks);
    std::vector<Sha256::Digest> digests(count);
    std::atomic<std::uint64_t> next{0};
    std::mutex failure_mutex;
    std::exception_ptr failure;
    const std::uint64_t base = hashed_;
    auto worker = [&] {
      try {
        Sha256 sha;
        std::vector<unsigned char> buffer(read_size), twin_buffer(twins ? read_size : 0);
        for (std::uint64_t i; (i = next++) < count;) {
          const std::uint64_t from = base + i * chunk_size_, to = std::min(from + chunk_size_, end);
          const TwinChunks::Chunk chunk{file, from / chunk_size_, from, to - from};
          // Only whole chunks are twinned: a small file's only chunk must not take an index.
          const bool twinned = twins && to - from == chunk_size_;
          if (twinned) {
            if (const auto digest = twins->find(fd, chunk, buffer, twin_buffer)) {
              digests[i] = *digest;
              continue;
            }
          }
          for (std::uint64_t at = from; at < to;) {
            const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(read_size, to - at));
            read_exactly(fd, buffer.data(), n, at, rel);
            sha.update(buffer.data(), n);
            at += n;
          }
          digests[i] = sha.final();
          if (twinned) twins->remember(fd, chunk, digests[i]);
        }
      } catch (...) {
        next = count;  // the others stop too
        const std::lock_guard lock(failure_mutex);
        if (!failure) failure = std::current_exception();
      }
    };
    {
      std::vector<std::jthread> helpers;
      try {
        for (unsigned t = 1; t < std::min<std::uint64_t>(threads, count); ++t) helpers.emplace_back(worker);
      } catch (const std::system_error&) {
        // No more threads to be had (a pids limit): the ones there are, this one included, do it all.
      }
      worker();
    }
    if (failure) std::rethrow_exception(failure);
    chunks_.insert(chunks_.end(), digests.begin(), digests.end());
    hashed_ = std::min(base + count * chunk_size_, end);
    if (done) done(hashed_ - base);
  }
}

}  // namespace nucleus::checkpoint
