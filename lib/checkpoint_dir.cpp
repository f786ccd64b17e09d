#include "checkpoint_dir.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

void make_private(int fd, std::string_view what, const std::filesystem::path& path) {
  if (::fchmod(fd, 0700) != 0)
    throw system_error(status_of_errno(errno), errno, fmt::format("cannot set {} {} to mode 0700", what, path.native()));
}

bool is_empty_dir(int fd) {
  const int dup_fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  DIR* d = dup_fd >= 0 ? ::fdopendir(dup_fd) : nullptr;
  if (!d) {
    if (dup_fd >= 0) ::close(dup_fd);
    throw system_error(Status::io, errno, "cannot read the checkpoint images directory");
  }
  bool empty = true;
  while (const dirent* e = ::readdir(d)) {
    const std::string_view name = e->d_name;
    if (name != "." && name != "..") { empty = false; break; }
  }
  ::closedir(d);
  return empty;
}

}  // namespace

CheckpointDir CheckpointDir::prepare(const std::filesystem::path& path) {
  CheckpointDir cd;
  cd.dir = open_or_create_dir(path, 0700, "checkpoint directory");
  make_private(cd.dir.get(), "checkpoint directory", path);
  cd.images = open_or_create_dir_at(cd.dir.get(), images_name, 0700, "checkpoint images directory");
  make_private(cd.images.get(), "checkpoint images directory", path / images_name);
  if (!is_empty_dir(cd.images.get()))
    throw Error(Status::invalid, fmt::format("{} already holds a dump; checkpoint into a new folder or remove it first",
                                             (path / images_name).native()));
  return cd;
}

CheckpointDir CheckpointDir::open(const std::filesystem::path& path) {
  CheckpointDir cd;
  cd.dir = open_dir(path, "checkpoint directory");
  cd.images = open_dir_at(cd.dir.get(), images_name, "checkpoint images directory");
  return cd;
}

}  // namespace nucleus::checkpoint
