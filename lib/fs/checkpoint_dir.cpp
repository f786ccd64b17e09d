#include "fs/checkpoint_dir.hpp"

#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"
#include "signature/sodium.hpp"
#include "fs/tree_walk.hpp"

namespace nucleus::checkpoint {

namespace fs = std::filesystem;

namespace {

bool is_empty_dir(int parent_fd, const std::string& name) {
  return list_dir(open_dir_at(parent_fd, name, "checkpoint directory").get(), fmt::format("checkpoint directory {}", name))
      .empty();
}

}  // namespace

CheckpointDir CheckpointDir::prepare(const fs::path& target_path, Start start) {
  fs::path target = target_path.lexically_normal();
  if (!target.has_filename()) target = target.parent_path();  // "dir/" names "dir"
  const std::string name = target.filename();
  if (name.empty() || name == "." || name == "..")
    throw Error(Status::invalid, fmt::format("checkpoint directory {} names no folder", target_path.native()));

  CheckpointDir cd;
  cd.target_ = target;
  cd.target_name_ = name;
  cd.parent_ = target.has_parent_path() ? open_or_create_dir(target.parent_path(), 0700, "checkpoint parent directory")
                                        : open_dir(".", "current directory");
  // Its folder, and every folder above, only root (or the caller) can change: otherwise their owner
  // could swap the staging folder or the finished checkpoint for another (a replay, or a folder
  // root then removes).
  const fs::path real_parent = fs::read_symlink(fmt::format("/proc/self/fd/{}", cd.parent_.get()));
  if (const auto dir = folder_others_can_change(real_parent / name))
    throw Error(Status::permission, fmt::format("the checkpoint would be made in {}, and {} can be changed by someone "
                                                "other than root (who could swap the checkpoint for another); "
                                                "checkpoint into a folder only root can change", real_parent.native(),
                                                dir->native()));
  struct stat st {};
  if (::fstatat(cd.parent_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (S_ISLNK(st.st_mode))
      throw Error(Status::permission,
                  fmt::format("checkpoint directory {} is a symlink; refusing to follow it (give the real path)", target.native()));
    if (!S_ISDIR(st.st_mode))
      throw Error(Status::invalid, fmt::format("checkpoint directory {} is not a directory", target.native()));
    if (!is_empty_dir(cd.parent_.get(), name))
      throw Error(Status::invalid, fmt::format("{} already holds files (a dump?); checkpoint into a new folder or "
                                               "remove it first", target.native()));
    cd.target_was_empty_dir_ = true;
  } else if (errno != ENOENT) {
    throw system_error(status_of_errno(errno), errno, fmt::format("cannot examine {}", target.native()));
  }

  init_sodium();
  cd.staging_name_ = fmt::format(".{}.staging-{:08x}", name, randombytes_random());
  cd.dir_ = open_or_create_dir_at(cd.parent_.get(), cd.staging_name_, 0700, "checkpoint staging directory");
  if (start == Start::with_images)
    cd.images_ = open_or_create_dir_at(cd.dir_.get(), images_name, 0700, "checkpoint images directory");
  return cd;
}

// Whether parent_fd/name is still the folder open at dir_fd (the one this library created).
bool same_folder(int parent_fd, const std::string& name, int dir_fd) {
  struct stat named {}, held {};
  return ::fstatat(parent_fd, name.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 && ::fstat(dir_fd, &held) == 0 &&
         named.st_dev == held.st_dev && named.st_ino == held.st_ino;
}

CheckpointDir::~CheckpointDir() {
  if (!committed_) discard();
}

void CheckpointDir::discard() const noexcept {
  // Only while it is still the staging folder: once renamed into place it is the checkpoint (a
  // guardian acting for a caller that died right after commit must leave it).
  if (!staging_name_.empty()) remove_if_named(staging_name_);
}

void CheckpointDir::withdraw() const noexcept {
  if (committed_) remove_if_named(target_name_);
}

void CheckpointDir::remove_if_named(const std::string& name) const noexcept {
  if (!parent_ || !same_folder(parent_.get(), name, dir_.get())) return;
  remove_contents(dir_.get());
  ::unlinkat(parent_.get(), name.c_str(), AT_REMOVEDIR);
}

void CheckpointDir::commit() {
  // CRIU does not fsync its images; one syncfs makes the whole staging folder durable.
  if (::syncfs(dir_.get()) != 0) throw system_error(Status::io, errno, "cannot sync the checkpoint to disk");
  if (!same_folder(parent_.get(), staging_name_, dir_.get()))
    throw Error(Status::permission, fmt::format("the staging folder {} beside {} was replaced while the checkpoint was "
                                                "written; it is not moved into place", staging_name_, target_.native()));
  // An empty target folder is replaced; an absent one must stay absent until now.
  const int rc = target_was_empty_dir_
                     ? ::renameat(parent_.get(), staging_name_.c_str(), parent_.get(), target_name_.c_str())
                     : ::renameat2(parent_.get(), staging_name_.c_str(), parent_.get(), target_name_.c_str(), RENAME_NOREPLACE);
  if (rc != 0)
    throw system_error(status_of_errno(errno), errno,
                       fmt::format("cannot move the finished checkpoint into place at {}", target_.native()));
  committed_ = true;
  fsync_fd(parent_.get(), fmt::format("the folder of {}", target_.native()));
}

namespace {

void check_private(const struct stat& st, std::string_view what) {
  if (st.st_uid != ::geteuid() || (st.st_mode & 022) != 0)
    throw Error(Status::permission,
                fmt::format("{} can be changed by others than uid {} (owner {}, mode {:o}), so it could change between "
                            "verification and restore; if you trust it, copy it into a new folder of your own "
                            "(cp -r as uid {}) and restore the copy", what, ::geteuid(), st.st_uid, st.st_mode & 07777,
                            ::geteuid()));
}

// Nobody may hold a file of the checkpoint open for writing: a descriptor opened while someone
// else owned the file survives any chown or chmod, and could change it after verification. A read
// lease cannot be taken on a file open for writing anywhere (a writable mapping included), and
// once the tree is the caller's alone nobody else can open it for writing, so taking one and
// letting it go proves there is no writer now and can be none later.
void check_no_writer(int fd, std::string_view rel) {
  if (::fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
    ::fcntl(fd, F_SETLEASE, F_UNLCK);
    return;
  }
  if (errno == EAGAIN)
    throw Error(Status::permission, fmt::format("checkpoint file '{}' is open for writing by some process (a descriptor "
                                                "kept from before the checkpoint was made private, or a writable "
                                                "mapping), so it could change after verification; copy the checkpoint "
                                                "into a new folder and restore the copy", rel));
  throw system_error(Status::permission, errno,
                     fmt::format("cannot tell whether checkpoint file '{}' is open for writing elsewhere (no read lease "
                                 "on this file system); restore from a local file system", rel));
}

}  // namespace

void require_private_dir(int dir_fd, const fs::path& path, std::string_view what) {
  check_private(stat_fd(dir_fd, what), fmt::format("{} {}", what, path.native()));
}

void require_private_tree(int dir_fd, OpenWriters open_writers) {
  check_private(stat_fd(dir_fd, "checkpoint directory"), "the checkpoint directory");
  walk_checkpoint_tree(dir_fd, [open_writers](int fd, const struct stat& st, const std::string& rel) {
    // A symlink's target cannot change, and its mode means nothing: the folder holding it must be private.
    if (S_ISLNK(st.st_mode)) return;
    check_private(st, fmt::format("checkpoint entry '{}'", rel));
    if (S_ISREG(st.st_mode) && st.st_nlink != 1)
      throw Error(Status::permission, fmt::format("checkpoint file '{}' has {} hard links: it may be changed through "
                                                  "another name; copy the checkpoint instead of linking it", rel,
                                                  st.st_nlink));
    if (S_ISREG(st.st_mode) && open_writers == OpenWriters::refuse) check_no_writer(fd, rel);
  });
}

void make_tree_private(int dir_fd) {
  walk_checkpoint_tree(dir_fd, [](int fd, const struct stat& st, const std::string& rel) {
    if (S_ISLNK(st.st_mode)) return;  // a symlink has no mode of its own
    if (::fchmod(fd, S_ISDIR(st.st_mode) ? 0700 : 0600) != 0)
      throw system_error(status_of_errno(errno), errno, fmt::format("cannot make checkpoint entry '{}' private", rel));
  });
}

}  // namespace nucleus::checkpoint
