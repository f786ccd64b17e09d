// A process's mount table, as /proc/PID/mountinfo describes it.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include <nucleus/checkpoint/metadata.hpp>

namespace nucleus::checkpoint {

struct MountEntry {
  int id = 0;
  int parent = 0;
  dev_t dev = 0;           // the file system (major:minor)
  std::string root;        // the folder of that file system mounted here ("/" for all of it)
  std::string mountpoint;  // as the process sees it, relative to its root
  std::string fstype;
  std::string source;
};

// Parses mountinfo text; octal escapes (\040 for a space) are decoded. Throws
// Error(Status::invalid) naming the line if one is malformed.
std::vector<MountEntry> parse_mount_table(std::string_view mountinfo);
// /proc/PID/mountinfo.
std::vector<MountEntry> read_mount_table(pid_t pid);

// Which file a stat describes, as a checkpoint records it: a character device by its device number
// (the same /dev/null on any boot and host), anything else by st_dev and st_ino.
FileIdentity identity_of(const struct stat& st);
// Whether two identities name the same file. A file system on an anonymous device (tmpfs, overlayfs,
// btrfs subvolumes: major 0) gets a new device number each time it is mounted, so there the inode
// alone is compared.
bool same_identity(const FileIdentity& recorded, const FileIdentity& found);

// Whether `path` is `prefix` or lies below it, by whole components ("/a/b" is below "/a", not "/ab").
bool path_is_within(std::string_view path, std::string_view prefix);
// `path` with `from` (a component prefix of it) replaced by `to`.
std::string rebase_path(std::string_view path, std::string_view from, std::string_view to);

}  // namespace nucleus::checkpoint
