// A checkpoint being written. It is built in a private staging folder beside its target and
// renamed into place only once it is complete and signed, so a checkpoint folder is either
// absent or whole; if it is never committed, the staging folder is removed.
#pragma once

#include <filesystem>
#include <string>

#include "unique_fd.hpp"

namespace nucleus::checkpoint {

class CheckpointDir {
 public:
  static constexpr const char* images_name = "images";

  // Creates the target's parent if missing (0700) and a staging folder with images/ in it (both
  // 0700). The target must not exist, or be an empty folder; never a symlink.
  static CheckpointDir prepare(const std::filesystem::path& target);

  CheckpointDir(CheckpointDir&&) noexcept = default;
  CheckpointDir& operator=(CheckpointDir&&) = delete;
  ~CheckpointDir();

  int dir() const noexcept { return dir_.get(); }
  int images() const noexcept { return images_.get(); }
  int parent() const noexcept { return parent_.get(); }
  const std::string& target_name() const noexcept { return target_name_; }
  const std::filesystem::path& target() const noexcept { return target_; }  // normalised

  // Makes everything durable (syncfs), renames the staging folder to the target and fsyncs the
  // parent.
  void commit();

 private:
  CheckpointDir() = default;
  std::filesystem::path target_;
  UniqueFd parent_, dir_, images_;
  std::string target_name_, staging_name_;
  bool target_was_empty_dir_ = false;
  bool committed_ = false;
};

}  // namespace nucleus::checkpoint
