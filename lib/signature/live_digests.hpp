// Hashes the files of a folder while another process (CRIU) writes them, so that signing after
// a dump has little left to do. inotify says when files appear and grow; only whole chunks are
// hashed. The digests are handed over only if every file was written once, front to back, as CRIU
// writes images: a file written through a second open, renamed, deleted, recreated or shortened,
// or any lost event, and nothing is handed over (and the twins are forgotten), so signing hashes
// everything from scratch. It never fails a dump: without inotify or a thread it follows nothing. What it cannot see is a write behind what it has hashed through
// the same open (a pwrite, or a truncate and regrow between two looks): it relies on the writer
// appending, as CRIU does, so it is used only where a wrong digest would cost a checkpoint (it
// fails to verify), never a process.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <thread>

#include "signature/chunked_signature.hpp"
#include "fs/unique_fd.hpp"

namespace nucleus::checkpoint {

class LiveDigests {
 public:
  // Follows the files that appear in the folder open at dir_fd from now on; with twins, chunks
  // equal to one hashed before are taken over (see TwinChunks).
  LiveDigests(int dir_fd, std::uint64_t chunk_size, TwinChunks* twins = nullptr);
  ~LiveDigests();
  LiveDigests(const LiveDigests&) = delete;
  LiveDigests& operator=(const LiveDigests&) = delete;

  // Stops following (the writer must have finished) and hands over the digests begun.
  StartedDigests stop();

 private:
  struct File {
    UniqueFd fd;
    dev_t dev = 0;
    ino_t ino = 0;
    ChunkedFileDigest digest;
    int write_closes = 0;
  };

  void halt() noexcept;  // stops and joins the follower thread
  void follow(const std::stop_token& stop);
  void drain_events();
  bool hash_some();     // at most a step of each file's new whole chunks; false if none

  int dir_fd_;
  std::uint64_t chunk_size_;
  TwinChunks* twins_;
  unsigned threads_;  // hashing threads while following
  UniqueFd inotify_, wake_;
  std::map<std::string, File> files_;  // by name; only the follower thread touches it until stop
  bool trusted_ = true;  // false once anything was not written the way CRIU writes
  std::jthread follower_;
};

}  // namespace nucleus::checkpoint
