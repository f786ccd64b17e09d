#include "fs/fs_util.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

namespace nucleus::checkpoint {

Status status_of_errno(int err) noexcept {
  switch (err) {
    case ENOENT: return Status::not_found;
    case EACCES:
    case EPERM: return Status::permission;
    case ENOMEM: return Status::no_memory;
    default: return Status::io;
  }
}

Error system_error(Status status, int err, std::string_view what) {
  return Error(status, fmt::format("{}: {}", what, std::strerror(err)));
}

namespace {

// Why opening dir_fd/name failed. O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR, not
// ELOOP, so a symlink is told apart by looking at the entry itself.
Error open_error(int err, std::string_view what, int dir_fd, const char* name, std::string_view path) {
  struct stat st {};
  if (err == ENOTDIR && ::fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) err = ELOOP;
  switch (err) {
    case ELOOP:
      return Error(Status::permission,
                   fmt::format("{} {} is a symlink; refusing to follow it (give the real path)", what, path));
    case ENOTDIR:
      return Error(Status::invalid, fmt::format("{} {} is not a directory", what, path));
    case ENOENT:
      return Error(Status::not_found, fmt::format("{} {} does not exist", what, path));
    default:
      return system_error(status_of_errno(err), err, fmt::format("cannot open {} {}", what, path));
  }
}

constexpr int dir_flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;

}  // namespace

bool same_file(int a, int b) noexcept {
  struct stat sa {}, sb {};
  return ::fstat(a, &sa) == 0 && ::fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

std::optional<std::filesystem::path> folder_others_can_change(const std::filesystem::path& real_path) {
  const auto trusted_owner = [](const struct stat& st) { return st.st_uid == 0 || st.st_uid == ::geteuid(); };
  std::filesystem::path child = real_path;
  for (std::filesystem::path dir = real_path.parent_path(); !dir.empty(); dir = dir.parent_path()) {
    struct stat ds {};
    if (::lstat(dir.c_str(), &ds) != 0 || !trusted_owner(ds)) return dir;
    if ((ds.st_mode & 022) != 0) {
      // In a sticky folder such as /tmp others cannot rename or remove what they do not own; but
      // what they do own there (the next component of the path) they can.
      struct stat cs {};
      if ((ds.st_mode & S_ISVTX) == 0) return dir;
      if (::lstat(child.c_str(), &cs) == 0 && !trusted_owner(cs)) return child;
    }
    if (dir == dir.root_path()) break;
    child = dir;
  }
  return std::nullopt;
}

UniqueFd open_trusted_path(const std::string& path, int flags, std::string_view what) {
  if (path.empty() || path.front() != '/')
    throw Error(Status::invalid, fmt::format("{} '{}' is not an absolute path", what, path));
  open_how how{};
  // openat2 refuses O_PATH with any flag O_PATH ignores.
  how.flags = static_cast<std::uint64_t>(flags | O_CLOEXEC | ((flags & O_PATH) ? 0 : O_NOCTTY));
  how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  UniqueFd fd(static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, path.c_str(), &how, sizeof how)));
  if (!fd && errno == ELOOP)
    throw Error(Status::permission, fmt::format("{} {} has a symlink in its path: give the real path (realpath {})",
                                                what, path, path));
  if (!fd) throw system_error(status_of_errno(errno), errno, fmt::format("cannot open {} {}", what, path));
  if (const auto dir = folder_others_can_change(path))
    throw Error(Status::permission, fmt::format("{} {} is below {}, which someone other than root can change (and so "
                                                "put something else under that name); move it to a folder only root "
                                                "can change", what, path, dir->native()));
  return fd;
}

UniqueFd open_beneath(int dir_fd, const std::string& rel, std::string_view what) {
  open_how how{};
  how.flags = static_cast<std::uint64_t>(O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  UniqueFd fd(static_cast<int>(::syscall(SYS_openat2, dir_fd, rel.c_str(), &how, sizeof how)));
  if (!fd) throw system_error(status_of_errno(errno), errno, fmt::format("cannot open {} '{}'", what, rel));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw system_error(Status::io, errno, fmt::format("cannot stat {} '{}'", what, rel));
  if (!S_ISREG(st.st_mode))
    throw Error(Status::integrity, fmt::format("{} '{}' is not a regular file: refusing it", what, rel));
  return fd;
}

UniqueFd open_dir(const std::filesystem::path& path, std::string_view what) {
  UniqueFd fd(::open(path.c_str(), dir_flags));
  if (!fd) throw open_error(errno, what, AT_FDCWD, path.c_str(), path.native());
  return fd;
}

UniqueFd open_dir_at(int parent_fd, const std::string& name, std::string_view what) {
  UniqueFd fd(::openat(parent_fd, name.c_str(), dir_flags));
  if (!fd) throw open_error(errno, what, parent_fd, name.c_str(), name);
  return fd;
}

UniqueFd open_or_create_dir_at(int parent_fd, const std::string& name, mode_t mode,
                               std::string_view what) {
  if (::mkdirat(parent_fd, name.c_str(), mode) != 0 && errno != EEXIST)
    throw system_error(status_of_errno(errno), errno, fmt::format("cannot create {} {}", what, name));
  return open_dir_at(parent_fd, name, what);
}

UniqueFd open_or_create_dir(const std::filesystem::path& path, mode_t mode, std::string_view what) {
  UniqueFd fd(::open(path.c_str(), dir_flags));
  if (fd) return fd;
  if (errno != ENOENT) throw open_error(errno, what, AT_FDCWD, path.c_str(), path.native());
  // Create what is missing from the nearest existing ancestor down, each step relative to the
  // descriptor of the one before.
  const auto parent = path.parent_path();
  const auto leaf = path.filename();
  if (leaf.empty() || leaf == "." || leaf == "..")
    throw Error(Status::invalid, fmt::format("{} {} has no usable last component", what, path.native()));
  UniqueFd parent_fd = parent.empty() ? UniqueFd(::open(".", dir_flags))
                                      : open_or_create_dir(parent, mode, "parent folder");
  if (!parent_fd) throw system_error(status_of_errno(errno), errno, "cannot open the current folder");
  try {
    return open_or_create_dir_at(parent_fd.get(), leaf.native(), mode, what);
  } catch (const Error& e) {
    throw Error(e.status(), fmt::format("{} (in {})", e.what(), parent.native()));
  }
}

void for_each_name(int dir_fd, std::string_view what, const std::function<void(std::string_view)>& fn) {
  // A description of its own, read from the start, whatever the offset of dir_fd's.
  const int own = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* d = own >= 0 ? ::fdopendir(own) : nullptr;
  if (!d) {
    const int err = errno;
    if (own >= 0) ::close(own);
    throw system_error(status_of_errno(err), err, fmt::format("cannot read {}", what));
  }
  const std::unique_ptr<DIR, int (*)(DIR*)> closer(d, ::closedir);
  errno = 0;
  while (const dirent* e = ::readdir(d)) {
    const std::string_view n = e->d_name;
    if (n != "." && n != "..") fn(n);
    errno = 0;
  }
  if (errno != 0) throw system_error(status_of_errno(errno), errno, fmt::format("cannot read {}", what));
}

std::vector<std::string> list_dir(int dir_fd, std::string_view what) {
  std::vector<std::string> names;
  for_each_name(dir_fd, what, [&](std::string_view n) { names.emplace_back(n); });
  return names;
}

void remove_contents(int dir_fd) noexcept {
  constexpr std::size_t max_entries = 2'000'000, max_depth = 128;
  struct stat top {};
  if (::fstat(dir_fd, &top) != 0) return;
  // Iterative and depth first: a folder goes once it is empty, on the way back up. Never onto
  // another file system, never through a symlink, never deeper than max_depth or past max_entries.
  struct Level {
    UniqueFd fd;
    std::vector<std::string> names;
    std::string name;  // in its parent
  };
  std::vector<Level> stack;
  const auto enter = [&](UniqueFd fd, std::string name) {
    try {
      auto names = list_dir(fd.get(), "folder to remove");
      stack.push_back({std::move(fd), std::move(names), std::move(name)});
    } catch (...) {
      // unreadable: left as it is
    }
  };
  enter(UniqueFd(::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0)), {});
  for (std::size_t seen = 0; !stack.empty() && seen < max_entries;) {
    Level& level = stack.back();
    if (level.names.empty()) {
      const std::string name = std::move(level.name);
      stack.pop_back();
      if (!stack.empty()) ::unlinkat(stack.back().fd.get(), name.c_str(), AT_REMOVEDIR);
      continue;
    }
    std::string name = std::move(level.names.back());
    level.names.pop_back();
    ++seen;
    if (::unlinkat(level.fd.get(), name.c_str(), 0) == 0 || errno != EISDIR || stack.size() > max_depth) continue;
    UniqueFd sub(::openat(level.fd.get(), name.c_str(), dir_flags));
    struct stat st {};
    if (sub && ::fstat(sub.get(), &st) == 0 && st.st_dev == top.st_dev) enter(std::move(sub), std::move(name));
  }
}

struct stat stat_fd(int fd, std::string_view what) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw system_error(Status::io, errno, fmt::format("cannot stat {}", what));
  return st;
}

std::string read_file_at(int dir_fd, const std::string& name, std::size_t max_size,
                         std::string_view what) {
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd) throw open_error(errno, what, dir_fd, name.c_str(), name);
  const struct stat st = stat_fd(fd.get(), what);
  if (!S_ISREG(st.st_mode)) throw Error(Status::invalid, fmt::format("{} {} is not a regular file", what, name));
  if (static_cast<std::uint64_t>(st.st_size) > max_size)
    throw Error(Status::invalid,
                fmt::format("{} {} is {} bytes, more than the {} allowed", what, name, st.st_size, max_size));
  std::string data(static_cast<std::size_t>(st.st_size) + 1, '\0');
  std::size_t got = 0;
  for (;;) {
    const ssize_t n = ::read(fd.get(), data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::io, errno, fmt::format("cannot read {} {}", what, name));
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
    if (got == data.size()) {  // grew while read: allow up to max_size
      if (data.size() > max_size)
        throw Error(Status::invalid, fmt::format("{} {} is larger than the {} bytes allowed", what, name, max_size));
      data.resize(std::min(data.size() * 2, max_size + 1));
    }
  }
  data.resize(got);
  return data;
}

std::size_t pread_full(int fd, void* data, std::size_t size, std::uint64_t offset, std::string_view what) {
  auto* bytes = static_cast<unsigned char*>(data);
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, bytes + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::io, errno, fmt::format("cannot read {}", what));
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

void write_all(int fd, const void* data, std::size_t size, std::string_view what) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(status_of_errno(errno), errno, fmt::format("cannot write {}", what));
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

UniqueFd unnamed_file_at(int dir_fd, std::string_view what) {
  UniqueFd fd(::openat(dir_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (const int err = errno; !fd)
    throw system_error(status_of_errno(err), err,
                       fmt::format("cannot create {}{}", what,
                                   err == EOPNOTSUPP ? " (its file system has no unnamed files, O_TMPFILE, which local "
                                                       "ones such as ext4, xfs, btrfs and tmpfs have)"
                                                     : ""));
  return fd;
}

void fsync_fd(int fd, std::string_view what) {
  if (::fsync(fd) != 0) throw system_error(Status::io, errno, fmt::format("cannot fsync {}", what));
}

void remove_stale_temp_at(int dir_fd, const std::string& name) {
  const std::string tmp = name + ".tmp";
  if (::unlinkat(dir_fd, tmp.c_str(), 0) != 0 && errno != ENOENT)
    throw system_error(status_of_errno(errno), errno, fmt::format("cannot remove stale {}", tmp));
}

void write_file_atomic_at(int dir_fd, const std::string& name, std::string_view data, mode_t mode) {
  remove_stale_temp_at(dir_fd, name);
  const std::string tmp = name + ".tmp";
  UniqueFd fd(::openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (!fd) throw system_error(status_of_errno(errno), errno, fmt::format("cannot create {}", tmp));
  try {
    write_all(fd.get(), data.data(), data.size(), tmp);
    fsync_fd(fd.get(), tmp);
    fd.reset();
    if (::renameat(dir_fd, tmp.c_str(), dir_fd, name.c_str()) != 0)
      throw system_error(status_of_errno(errno), errno, fmt::format("cannot rename {} to {}", tmp, name));
  } catch (...) {
    ::unlinkat(dir_fd, tmp.c_str(), 0);  // nothing half-written stays behind
    throw;
  }
  fsync_fd(dir_fd, fmt::format("the folder of {}", name));
}

}  // namespace nucleus::checkpoint
