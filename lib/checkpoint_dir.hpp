// The folders of a checkpoint: the checkpoint folder and its images/ folder, both 0700.
#pragma once

#include <filesystem>

#include "unique_fd.hpp"

namespace nucleus::checkpoint {

struct CheckpointDir {
  static constexpr const char* images_name = "images";

  UniqueFd dir;
  UniqueFd images;

  // Creates dir and dir/images if missing (never through a symlink), sets both to 0700 and
  // refuses an images/ folder that already holds a dump.
  static CheckpointDir prepare(const std::filesystem::path& dir);
  // Opens an existing checkpoint for reading.
  static CheckpointDir open(const std::filesystem::path& dir);
};

}  // namespace nucleus::checkpoint
