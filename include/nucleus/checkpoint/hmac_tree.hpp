// HMAC-SHA256 over a whole checkpoint folder, in nucleus-container's format.
//
// The MAC covers a depth-first walk in byte order of names: for a folder "D\0" + relative path
// + "\0", then its contents; for a file "F\0" + relative path + "\0" + its size as u64
// little-endian + its bytes. Only the top-level checkpoint.hmac is left out. The MAC is stored
// there as 64 lowercase hex digits. Symlinks, FIFOs, sockets, devices and names that are not
// UTF-8 are integrity failures; everything is opened relative to its parent's descriptor with
// O_NOFOLLOW, so a walk never leaves the tree.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include <nucleus/checkpoint/key_store.hpp>

namespace nucleus::checkpoint {

class NC_EXPORT HmacTree {
 public:
  static constexpr const char* signature_file = "checkpoint.hmac";
  // Limits on what a walk accepts; beyond them a tree is an integrity failure, not a resource sink.
  static constexpr int max_depth = 64;                   // folders nested below the checkpoint folder
  static constexpr std::size_t max_entries = 1000000;    // files and folders in the whole tree
  static constexpr std::size_t max_path_length = 4096;   // bytes of a relative path
  // Called as file bytes are hashed, with the running total, about once a MiB.
  using Progress = std::function<void(std::uint64_t bytes_hashed)>;

  // Lowercase hex HMAC of the folder at dir. Throws Error(Status::integrity) for a tree it
  // refuses, Error(Status::not_found/io) when dir cannot be read.
  static std::string compute(const std::filesystem::path& dir, const HmacKey& key,
                     const Progress& progress = {});
  static std::string compute(int dir_fd, const HmacKey& key,
                     const Progress& progress = {});

  // Writes dir/checkpoint.hmac atomically (temp file 0600, fsync, rename, fsync the folder).
  static void sign(const std::filesystem::path& dir, const HmacKey& key,
                     const Progress& progress = {});
  static void sign(int dir_fd, const HmacKey& key,
                     const Progress& progress = {});

  // Throws Error(Status::integrity) unless dir/checkpoint.hmac holds the folder's MAC; compared
  // in constant time.
  static void verify(const std::filesystem::path& dir, const HmacKey& key,
                     const Progress& progress = {});
  static void verify(int dir_fd, const HmacKey& key,
                     const Progress& progress = {});
  // As above with the store's key, loaded only once the folder is known to carry a signature:
  // an unsigned folder is an integrity failure even where there is no key.
  static void verify(const std::filesystem::path& dir, const KeyStore& store,
                     const Progress& progress = {});
  static void verify(int dir_fd, const KeyStore& store,
                     const Progress& progress = {});
};

}  // namespace nucleus::checkpoint
