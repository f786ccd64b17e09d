// A checkpoint being written. It is built in a private staging folder beside its target and
// renamed into place only once it is complete and signed, so a checkpoint folder is either
// absent or whole; if it is never committed, the staging folder is removed.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "fs/unique_fd.hpp"

namespace nucleus::checkpoint {

class CheckpointDir {
 public:
  static constexpr const char* images_name = "images";

  // What the staging folder starts with: images/ for a dump; nothing for an import, which creates
  // exactly the entries its stream lists.
  enum class Start { with_images, empty };

  // Creates the target's parent if missing (0700) and a staging folder (0700; with images/ in it,
  // 0700, unless `start` is empty, when images() is -1). The target must not exist, or be an empty
  // folder; never a symlink.
  static CheckpointDir prepare(const std::filesystem::path& target, Start start = Start::with_images);

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
  // Removes the staging folder (as the destructor does unless committed) if its name still holds
  // the folder created, iteratively and never onto another file system; never the committed one.
  void discard() const noexcept;
  // Removes the committed checkpoint again (a chain import that failed after it), likewise only
  // if its name still holds the folder created.
  void withdraw() const noexcept;

 private:
  void remove_if_named(const std::string& name) const noexcept;
  CheckpointDir() = default;
  std::filesystem::path target_;
  UniqueFd parent_, dir_, images_;
  std::string target_name_, staging_name_;
  bool target_was_empty_dir_ = false;
  bool committed_ = false;
};

// Whether a file some process holds open for writing is refused. A restore that verifies the
// folder before CRIU reads it must refuse them (the bytes could change in between); one that
// streams the images through its own checks need not: a change can only fail it.
enum class OpenWriters { refuse, allow };

// Refuses (Status::permission) a checkpoint tree that anyone but the effective uid could change:
// a folder or file not owned by it, writable by group or others, a file with other hard links,
// or (unless allowed) one that some process holds open for writing.
void require_private_tree(int dir_fd, OpenWriters open_writers);
// Folders 0700 and files 0600 below dir_fd: images hold process memory.
void make_tree_private(int dir_fd);
// A folder given to CRIU to write in (a work dir) must be the caller's alone.
void require_private_dir(int dir_fd, const std::filesystem::path& path, std::string_view what);

}  // namespace nucleus::checkpoint
