// metadata.json, the checkpoint's description, in nucleus-container's JSON shape.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nucleus/checkpoint_export.h>

namespace nucleus::checkpoint {

struct NC_EXPORT CheckpointMetadata {
  static constexpr const char* file_name = "metadata.json";
  static constexpr std::size_t max_size = 1 << 20;

  std::string container_id;
  std::string container_name;
  std::uint32_t original_pid = 0;
  std::vector<std::string> command;
  std::uint64_t checkpoint_at = 0;  // seconds since the epoch
  std::string version;              // of the library that wrote it
  bool using_gvisor = false;
  bool rootless = false;

  // Throws Error(Status::invalid) if a string is not UTF-8 or the JSON would exceed max_size.
  std::string to_json() const;
  // Throws Error(Status::invalid) naming the field that is missing or of the wrong type.
  static CheckpointMetadata from_json(std::string_view json);

  // Atomically writes dir_fd/metadata.json (temp file 0600 O_NOFOLLOW, fsync, rename).
  void save(int dir_fd) const;
  static CheckpointMetadata load(int dir_fd);

  bool operator==(const CheckpointMetadata&) const = default;
};

}  // namespace nucleus::checkpoint
