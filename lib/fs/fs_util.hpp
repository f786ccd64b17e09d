// File system access relative to directory descriptors, never following a symlink in the last
// component and never re-resolving a path once it is open.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/unique_fd.hpp"

namespace nucleus::checkpoint {

// An Error whose message ends with strerror(err).
Error system_error(Status status, int err, std::string_view what);
// The status an errno stands for: ENOENT -> not_found, EACCES/EPERM -> permission, else io.
Status status_of_errno(int err) noexcept;

// Whether two descriptors are open on the same file (false if either cannot be examined).
bool same_file(int a, int b) noexcept;

// The first folder above `real_path` (an absolute path without symlinks) that someone other than
// root or the effective uid could change: owned by another user, writable by group or others
// without the sticky bit, or owned by another user inside a sticky one. Such a folder lets its
// owner put anything under the path's name later.
std::optional<std::filesystem::path> folder_others_can_change(const std::filesystem::path& real_path);

// Opens an absolute path as root may act on it for someone else: no symlink in any component
// (openat2's RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), and no folder above it that another user
// could change (so what was opened stays what the name means). `what` names it in errors.
UniqueFd open_trusted_path(const std::string& path, int flags, std::string_view what);

// Opens the regular file `rel` (a relative '/'-joined path) below the folder open at dir_fd
// read-only, with no symlink anywhere and never leaving that folder (openat2 RESOLVE_BENEATH).
// Anything else there is refused with Status::integrity, without blocking: a FIFO swapped in by
// whoever can write the folder would otherwise hold the open forever. `what` names it in errors.
UniqueFd open_beneath(int dir_fd, const std::string& rel, std::string_view what);

// Opens an existing folder; the last component must not be a symlink. `what` names it in errors.
UniqueFd open_dir(const std::filesystem::path& path, std::string_view what);
UniqueFd open_dir_at(int parent_fd, const std::string& name, std::string_view what);
// As open_dir, creating it (and missing parents) with `mode` if absent.
UniqueFd open_or_create_dir(const std::filesystem::path& path, mode_t mode, std::string_view what);
UniqueFd open_or_create_dir_at(int parent_fd, const std::string& name, mode_t mode,
                               std::string_view what);

struct stat stat_fd(int fd, std::string_view what);

// Calls fn with each name in the folder open at dir_fd, without "." and "..", in the order
// readdir gives, as it reads them (fn may throw to stop). It reads from the start through a
// description of its own, whatever the caller's descriptor offset.
void for_each_name(int dir_fd, std::string_view what, const std::function<void(std::string_view)>& fn);
// The names of for_each_name, collected.
std::vector<std::string> list_dir(int dir_fd, std::string_view what);

// Removes everything below the folder open at dir_fd (not the folder itself), never following a
// symlink, never onto another file system, iteratively and bounded. Best effort: used to clean
// up, it reports nothing.
void remove_contents(int dir_fd) noexcept;

// Reads a regular file of at most max_size bytes.
std::string read_file_at(int dir_fd, const std::string& name, std::size_t max_size,
                         std::string_view what);
// Removes name.tmp, left behind by an interrupted write_file_atomic_at.
void remove_stale_temp_at(int dir_fd, const std::string& name);
// Writes name atomically: name.tmp created O_EXCL|O_NOFOLLOW with `mode`, written, fsynced,
// renamed over name, then the folder fsynced. A stale name.tmp is removed first.
void write_file_atomic_at(int dir_fd, const std::string& name, std::string_view data, mode_t mode);
void write_all(int fd, const void* data, std::size_t size, std::string_view what);
// An unnamed file (O_TMPFILE, 0600, read-write) in the folder open at dir_fd: it never shows there,
// and is gone however the caller ends. `what` names it in errors.
UniqueFd unnamed_file_at(int dir_fd, std::string_view what);
// Reads size bytes at offset, fewer only at the end of the file; returns how many it read.
std::size_t pread_full(int fd, void* data, std::size_t size, std::uint64_t offset, std::string_view what);
void fsync_fd(int fd, std::string_view what);

}  // namespace nucleus::checkpoint
