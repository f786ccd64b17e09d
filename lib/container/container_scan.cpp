#include "container/container_scan.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <optional>
#include <set>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "checkpoint/utf8.hpp"
#include "container/mount_table.hpp"
#include "criu/proc.hpp"
#include "fs/fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

// File systems CRIU mounts afresh in the restored namespace (their contents are the kernel's, or,
// for tmpfs, dumped by CRIU): mounted whole they need no declaration, unless, for tmpfs and
// devtmpfs, the host has that very instance (a host /dev/shm or /run bound whole): its contents
// are the host's, shared, not the container's to copy.
bool mounted_afresh(const MountEntry& m, const std::set<dev_t>& host_devs) {
  static const std::set<std::string, std::less<>> kinds{"proc", "sysfs", "devpts", "mqueue", "tmpfs", "cgroup",
                                                        "cgroup2", "devtmpfs", "binfmt_misc", "securityfs",
                                                        "debugfs", "tracefs", "pstore", "bpf", "fusectl",
                                                        "configfs", "hugetlbfs"};
  if (m.root != "/" || !kinds.contains(m.fstype)) return false;
  return !((m.fstype == "tmpfs" || m.fstype == "devtmpfs") && host_devs.contains(m.dev));
}

std::optional<struct stat> stat_path(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return st;
}

// Where the host sees the folder `root` of file system `dev`: below a host mount of the same file
// system whose own root contains it, checked to be the very same inode as `expected`.
std::optional<std::string> host_path_of(const std::vector<MountEntry>& host, dev_t dev, const std::string& root,
                                        const std::optional<struct stat>& expected) {
  if (!expected) return std::nullopt;
  for (const auto& h : host) {
    if (h.dev != dev || !path_is_within(root, h.root)) continue;
    std::string candidate = rebase_path(root, h.root, h.mountpoint);
    const auto found = stat_path(candidate);
    if (found && identity_of(*found) == identity_of(*expected)) return candidate;
  }
  return std::nullopt;
}

// CRIU's mount key for a mountpoint: the mountpoint itself, as runc keys them, unless it holds
// a character CRIU's "mnt[KEY]:VALUE" syntax cannot carry.
std::string mount_key(const std::string& mountpoint, std::size_t index) {
  if (mountpoint.find_first_of("[]:, \t\n") == std::string::npos) return mountpoint;
  return fmt::format("mnt{}", index);
}

// The mountpoint of a caller's "mnt[MOUNTPOINT]:KEY" (up to the last ']' before the key).
std::string declared_mountpoint(const std::string& external) {
  if (!external.starts_with("mnt[")) return {};
  const auto end = external.rfind("]:");
  return end == std::string::npos ? std::string() : external.substr(4, end - 4);
}

std::uint64_t ns_inode(pid_t pid, const std::string& type) {
  const auto st = stat_path(fmt::format("/proc/{}/ns/{}", pid, type));
  return st ? st->st_ino : 0;
}

// A namespace of the tree's that a process outside the tree is in too, or that is bound in the
// host's file system (`ip netns add` binds /run/netns/NAME): its path there, or "" if only shared.
// A process forked inside the tree after it was listed is no outsider, nor is an ancestor that
// made the namespace and waits for the tree (`unshare --net --fork` stays in it).
std::optional<std::string> shared_namespace(const std::string& type, std::uint64_t inode, pid_t root,
                                            const std::set<pid_t>& tree, const std::vector<MountEntry>& host) {
  const std::string bound = fmt::format("{}:[{}]", type, inode);
  for (const auto& h : host)
    if (h.fstype == "nsfs" && h.root == bound) return h.mountpoint;
  const UniqueFd proc = open_dir("/proc", "/proc");
  for (const auto& name : list_dir(proc.get(), "/proc")) {
    pid_t other = 0;
    const auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), other);
    if (ec != std::errc() || end != name.data() + name.size() || tree.contains(other)) continue;
    if (ns_inode(other, type) == inode && !descends_from(other, root) && !descends_from(root, other))
      return std::string();
  }
  return std::nullopt;
}

// A number from /proc/PID/fdinfo/FD ("mnt_id:", "flags:" in octal).
std::optional<long> fdinfo_field(const std::string& info, std::string_view name, int base) {
  const auto at = info.find(name);
  if (at == std::string::npos) return std::nullopt;
  std::size_t p = at + name.size();
  while (p < info.size() && (info[p] == ' ' || info[p] == '\t')) ++p;
  long value = 0;
  const auto [end, ec] = std::from_chars(info.data() + p, info.data() + info.size(), value, base);
  if (ec != std::errc()) return std::nullopt;
  return value;
}

std::string read_fdinfo(pid_t pid, const std::string& fd) {
  try {
    const UniqueFd dir = open_dir(fmt::format("/proc/{}/fdinfo", pid), "descriptor information");
    return read_file_at(dir.get(), fd, 1 << 16, "descriptor information");
  } catch (const Error&) {
    return {};  // closed meanwhile
  }
}

std::optional<std::string> link_target(const std::string& path) {
  char buf[4097];
  const ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
  if (n <= 0 || static_cast<std::size_t>(n) == sizeof buf) return std::nullopt;
  return std::string(buf, static_cast<std::size_t>(n));
}

// Devices a container may hold open from the host and get again at restore: /dev/null, zero,
// full, random, urandom (mem's major). Terminals are CRIU's (shell-job), others are refused.
bool memory_device(const struct stat& st) { return S_ISCHR(st.st_mode) && major(st.st_rdev) == 1; }

// Files the tree holds open on mounts outside its mount namespaces (a log on the host as stdout, a
// host's /dev/null kept across unshare): CRIU cannot find their mount ("Can't lookup mount=N
// for fd=M"), so each is declared an external file, and recorded with its host path, flags and
// identity for restore to reopen. The host must see that very file at that path (a process in a
// mount namespace of its own could name a host file it does not have); memfds, deleted files and
// anything CRIU dumps itself are left to CRIU.
void scan_outside_files(pid_t root, const std::vector<pid_t>& tree, const std::set<int>& container_mounts,
                        const std::set<int>& host_mounts, ContainerScan& scan) {
  std::set<std::string> declared;
  for (const pid_t p : tree) {
    std::vector<std::string> fds;
    try {
      fds = list_dir(open_dir(fmt::format("/proc/{}/fd", p), "descriptor folder").get(), "descriptor folder");
    } catch (const Error&) {
      continue;  // exited meanwhile
    }
    for (const auto& fd : fds) {
      const std::string link = fmt::format("/proc/{}/fd/{}", p, fd);
      const auto target = link_target(link);
      if (!target || !target->starts_with('/') || target->ends_with(" (deleted)")) continue;
      const std::string info = read_fdinfo(p, fd);
      const auto mnt_id = fdinfo_field(info, "mnt_id:", 10);
      const auto flags = fdinfo_field(info, "flags:", 8);
      const auto held = stat_path(link);
      if (!mnt_id || !flags || !held || container_mounts.contains(static_cast<int>(*mnt_id))) continue;
      if (!S_ISREG(held->st_mode) && !memory_device(*held)) continue;  // CRIU's to dump, or to refuse
      const auto at_path = stat_path(*target);
      if (!host_mounts.contains(static_cast<int>(*mnt_id)) || !at_path || identity_of(*at_path) != identity_of(*held) ||
          !is_valid_utf8(*target))
        throw Error(Status::invalid, fmt::format("descriptor {} of PID {} is open on {}, on a mount outside the "
                                                 "container that the host does not see at that path, so it can be "
                                                 "neither dumped nor opened again: open it inside the container",
                                                 fd, p, to_valid_utf8(*target)));
      const std::string key = fmt::format("file[{:x}:{:x}]", *mnt_id, held->st_ino);
      if (!declared.insert(key).second) continue;
      const int number = p == root ? std::stoi(fd) : -1;
      scan.found.descriptors.push_back({number, key, *target, static_cast<int>(*flags), identity_of(*held)});
      scan.externals.push_back(key);
    }
  }
}

std::vector<RecordedFd> stdio_of(pid_t pid) {
  std::vector<RecordedFd> out;
  for (int fd = 0; fd <= 2; ++fd) {
    const auto target = link_target(fmt::format("/proc/{}/fd/{}", pid, fd));
    if (target && (target->starts_with("pipe:[") || target->starts_with("socket:[")))
      out.push_back(RecordedFd{fd, *target, "", 0, {}});
  }
  return out;
}

std::vector<std::string> cgroups_of(pid_t pid) {
  std::vector<std::string> lines;
  try {
    const UniqueFd dir = open_dir(fmt::format("/proc/{}", pid), "process folder");
    const std::string text = read_file_at(dir.get(), "cgroup", 1 << 16, "cgroup membership");
    for (std::size_t at = 0; at < text.size();) {
      const auto nl = text.find('\n', at);
      std::string line = text.substr(at, nl - at);
      if (!line.empty()) lines.push_back(to_valid_utf8(line));
      if (nl == std::string::npos) break;
      at = nl + 1;
    }
  } catch (const Error&) {
  }
  return lines;
}

// The mount the process's root is on, by the mnt_id of a descriptor of /proc/PID/root.
int root_mount_id(pid_t pid) {
  const UniqueFd root(::open(fmt::format("/proc/{}/root", pid).c_str(), O_PATH | O_CLOEXEC));
  if (!root) throw system_error(status_of_errno(errno), errno, fmt::format("cannot open the root of PID {}", pid));
  const auto id = fdinfo_field(read_fdinfo(::getpid(), std::to_string(root.get())), "mnt_id:", 10);
  if (!id) throw Error(Status::internal, fmt::format("no mount id for the root of PID {}", pid));
  return static_cast<int>(*id);
}

void scan_mounts(pid_t pid, const std::vector<pid_t>& tree, const std::vector<std::string>& declared_externals,
                 const std::vector<MountEntry>& host, ContainerScan& scan) {
  const auto table = read_mount_table(pid);
  const int root_id = root_mount_id(pid);
  const auto root_it = std::find_if(table.begin(), table.end(), [&](const MountEntry& m) { return m.id == root_id; });
  if (root_it == table.end())
    throw Error(Status::invalid, fmt::format("the root of PID {} is on mount {}, which is not in its mount table",
                                             pid, root_id));
  const MountEntry& root = *root_it;
  const auto root_stat = stat_path(fmt::format("/proc/{}/root", pid));
  scan.found.root = host_path_of(host, root.dev, root.root, root_stat).value_or("");
  if (!scan.found.root.empty()) scan.found.root_identity = identity_of(*root_stat);

  std::set<dev_t> host_devs;
  std::set<int> host_ids;
  for (const auto& h : host) {
    host_devs.insert(h.dev);
    host_ids.insert(h.id);
  }
  std::set<std::string> declared;
  for (const auto& e : declared_externals) declared.insert(declared_mountpoint(e));
  for (std::size_t i = 0; i < table.size(); ++i) {
    const MountEntry& m = table[i];
    if (&m == &root || declared.contains(m.mountpoint) || mounted_afresh(m, host_devs)) continue;
    // A bind of something already mounted in the container (the rootfs, an earlier mount) is
    // CRIU's to handle.
    const auto bound_from = [&](const MountEntry& e) { return &e != &m && e.dev == m.dev && path_is_within(m.root, e.root); };
    if (bound_from(root) || std::any_of(table.begin(), table.begin() + static_cast<std::ptrdiff_t>(i), bound_from))
      continue;
    const auto mounted = stat_path(fmt::format("/proc/{}/root{}", pid, m.mountpoint));
    const auto source = host_path_of(host, m.dev, m.root, mounted);
    if (!source) continue;  // not from the host's mount table: CRIU says whether it can dump it
    if (!is_valid_utf8(m.mountpoint) || !is_valid_utf8(*source))
      throw Error(Status::invalid, fmt::format("the container's mount {} from {} has a path that is not UTF-8; declare "
                                               "it yourself with external mnt[MOUNTPOINT]:KEY",
                                               to_valid_utf8(m.mountpoint), to_valid_utf8(*source)));
    const std::string key = mount_key(m.mountpoint, scan.found.mounts.size());
    scan.found.mounts.push_back({m.mountpoint, key, *source, m.fstype, identity_of(*mounted)});
    scan.externals.push_back(fmt::format("mnt[{}]:{}", m.mountpoint, key));
  }
  // Every mount of every mount namespace in the tree is the container's (a process may have one
  // of its own below the root's, as systemd's PrivateTmp does).
  std::set<int> container_mounts;
  std::set<std::uint64_t> namespaces_read;
  for (const pid_t p : tree) {
    if (!namespaces_read.insert(ns_inode(p, "mnt")).second) continue;
    try {
      for (const auto& e : read_mount_table(p)) container_mounts.insert(e.id);
    } catch (const Error&) {
      // exited meanwhile
    }
  }
  scan_outside_files(pid, tree, container_mounts, host_ids, scan);
}

}  // namespace

ContainerScan scan_container(pid_t pid, const std::vector<pid_t>& tree, const std::vector<std::string>& declared) {
  ContainerScan scan;
  scan.found.descriptors = stdio_of(pid);  // files outside the container are added by scan_mounts
  scan.found.cgroups = cgroups_of(pid);
  const pid_t self = ::getpid();
  const auto host = read_mount_table(self);
  if (ns_inode(pid, "mnt") != ns_inode(self, "mnt")) {
    scan.found.own_mount_namespace = true;
    scan_mounts(pid, tree, declared, host, scan);
  }
  const std::set<pid_t> members(tree.begin(), tree.end());
  for (const char* type : {"net", "pid"}) {
    const std::uint64_t inode = ns_inode(pid, type);
    if (inode == 0 || inode == ns_inode(self, type)) continue;
    const auto shared = shared_namespace(type, inode, pid, members, host);
    if (std::string_view(type) == "net") scan.found.own_network_namespace = !shared;
    if (!shared) continue;
    const std::string key = fmt::format("{}-{}", type, inode);
    if (std::any_of(declared.begin(), declared.end(),
                    [&](const std::string& e) { return e.starts_with(fmt::format("{}[{}]", type, inode)); }))
      continue;
    scan.found.namespaces.push_back({type, inode, key, *shared});
    scan.externals.push_back(fmt::format("{}[{}]:{}", type, inode, key));
  }
  return scan;
}

}  // namespace nucleus::checkpoint
