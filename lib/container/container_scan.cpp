#include "container/container_scan.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <optional>
#include <set>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "checkpoint/utf8.hpp"
#include "container/mount_table.hpp"
#include "fs/fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

// File systems CRIU mounts afresh in the restored namespace (their contents are the kernel's, or,
// for tmpfs, dumped by CRIU): mounted whole, they need no declaration even when the host has the
// same one.
bool mounted_afresh(const MountEntry& m) {
  static const std::set<std::string, std::less<>> kinds{"proc", "sysfs", "devpts", "mqueue", "tmpfs", "cgroup",
                                                        "cgroup2", "devtmpfs", "binfmt_misc", "securityfs",
                                                        "debugfs", "tracefs", "pstore", "bpf", "fusectl",
                                                        "configfs", "hugetlbfs"};
  return m.root == "/" && kinds.contains(m.fstype);
}

std::optional<struct stat> stat_path(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return st;
}

bool same_file(const std::optional<struct stat>& a, const std::optional<struct stat>& b) {
  return a && b && a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

// Where the host sees the folder `root` of file system `dev`: below a host mount of the same file
// system whose own root contains it, checked to be the very same inode as `expected`.
std::optional<std::string> host_path_of(const std::vector<MountEntry>& host, dev_t dev, const std::string& root,
                                        const std::optional<struct stat>& expected) {
  for (const auto& h : host) {
    if (h.dev != dev || !path_is_within(root, h.root)) continue;
    std::string candidate = rebase_path(root, h.root, h.mountpoint);
    if (same_file(stat_path(candidate), expected)) return candidate;
  }
  return std::nullopt;
}

// CRIU's mount key for a mountpoint: the mountpoint itself, as runc keys them, unless it holds
// a character CRIU's "mnt[KEY]:VALUE" syntax cannot carry.
std::string mount_key(const std::string& mountpoint, std::size_t index) {
  if (mountpoint.find_first_of("[]:, \t\n") == std::string::npos) return mountpoint;
  return fmt::format("mnt{}", index);
}

std::string declared_mountpoint(const std::string& external) {
  if (!external.starts_with("mnt[")) return {};
  const auto end = external.find(']');
  return end == std::string::npos ? std::string() : external.substr(4, end - 4);
}

std::uint64_t ns_inode(const std::string& pid, const std::string& type) {
  struct stat st {};
  if (::stat(fmt::format("/proc/{}/ns/{}", pid, type).c_str(), &st) != 0) return 0;
  return st.st_ino;
}

// A namespace of the tree's that some process outside the tree is in too, or that is bound in the
// host's file system (`ip netns add` binds /run/netns/NAME): its path there, or "" if only shared.
std::optional<std::string> shared_namespace(const std::string& type, std::uint64_t inode, const std::set<pid_t>& tree,
                                            const std::vector<MountEntry>& host) {
  const std::string bound = fmt::format("{}:[{}]", type, inode);
  for (const auto& h : host)
    if (h.fstype == "nsfs" && h.root == bound) return h.mountpoint;
  const UniqueFd proc = open_dir("/proc", "/proc");
  for (const auto& name : list_dir(proc.get(), "/proc")) {
    pid_t other = 0;
    const auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), other);
    if (ec != std::errc() || end != name.data() + name.size() || tree.contains(other)) continue;
    if (ns_inode(name, type) == inode) return std::string();
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

std::string link_target(const std::string& path) {
  char buf[4096];
  const ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

// Files the tree holds open on mounts outside its mount namespace (a log on the host as stdout, a
// host's /dev/null kept across unshare): CRIU cannot find their mount ("Can't lookup mount=N
// for fd=M"), so each is declared an external file, and recorded with its host path and flags
// for restore to reopen.
void scan_outside_files(pid_t root, const std::vector<pid_t>& tree, const std::set<int>& mount_ids, ContainerScan& scan) {
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
      const std::string target = link_target(link);
      if (!target.starts_with('/')) continue;  // pipes, sockets, anonymous inodes
      std::string info;
      try {
        info = read_file_at(open_dir(fmt::format("/proc/{}/fdinfo", p), "descriptor information").get(), fd, 1 << 16,
                            "descriptor information");
      } catch (const Error&) {
        continue;
      }
      const auto mnt_id = fdinfo_field(info, "mnt_id:", 10);
      const auto flags = fdinfo_field(info, "flags:", 8);
      const auto st = stat_path(link);
      if (!mnt_id || !flags || !st || mount_ids.contains(static_cast<int>(*mnt_id))) continue;
      if (!is_valid_utf8(target))
        throw Error(Status::invalid, fmt::format("descriptor {} of PID {} is open on {}, outside the container, and its "
                                                 "path is not UTF-8: open it inside the container instead",
                                                 fd, p, to_valid_utf8(target)));
      const std::string key = fmt::format("file[{:x}:{:x}]", *mnt_id, st->st_ino);
      if (!declared.insert(key).second) continue;
      const int number = p == root ? std::stoi(fd) : -1;
      scan.found.descriptors.push_back({number, key, target, static_cast<int>(*flags)});
      scan.externals.push_back(key);
    }
  }
}

std::vector<RecordedFd> stdio_of(pid_t pid) {
  std::vector<RecordedFd> out;
  for (int fd = 0; fd <= 2; ++fd) {
    const std::string target = link_target(fmt::format("/proc/{}/fd/{}", pid, fd));
    if (target.starts_with("pipe:[") || target.starts_with("socket:[")) out.push_back(RecordedFd{fd, target, "", 0});
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

void scan_mounts(pid_t pid, const std::vector<pid_t>& tree, const std::vector<std::string>& declared_externals,
                 ContainerScan& scan) {
  const auto table = read_mount_table(pid);
  const auto host = read_mount_table(::getpid());
  // The container's root: the last mount on "/" in its table (the top one, if several).
  const auto root_it = std::find_if(table.rbegin(), table.rend(), [](const MountEntry& m) { return m.mountpoint == "/"; });
  if (root_it == table.rend())
    throw Error(Status::invalid, fmt::format("PID {} has no root mount in its mount table", pid));
  const MountEntry& root = *root_it;
  const auto root_stat = stat_path(fmt::format("/proc/{}/root", pid));
  scan.found.root = host_path_of(host, root.dev, root.root, root_stat).value_or("");

  std::set<std::string> declared;
  for (const auto& e : declared_externals) declared.insert(declared_mountpoint(e));
  std::set<int> mount_ids;
  for (std::size_t i = 0; i < table.size(); ++i) {
    const MountEntry& m = table[i];
    mount_ids.insert(m.id);
    if (&m == &root || declared.contains(m.mountpoint) || mounted_afresh(m)) continue;
    // A bind of something already mounted in the container (the rootfs, an earlier mount) is
    // CRIU's to handle.
    const bool bound_from_inside = &m != &root && (root.dev == m.dev && path_is_within(m.root, root.root));
    const bool bound_from_earlier = std::any_of(table.begin(), table.begin() + static_cast<std::ptrdiff_t>(i),
                                                [&](const MountEntry& e) { return e.dev == m.dev && path_is_within(m.root, e.root); });
    if (bound_from_inside || bound_from_earlier) continue;
    const auto source = host_path_of(host, m.dev, m.root, stat_path(fmt::format("/proc/{}/root{}", pid, m.mountpoint)));
    if (!source) continue;  // not from the host's mount table: CRIU says whether it can dump it
    if (!is_valid_utf8(m.mountpoint) || !is_valid_utf8(*source))
      throw Error(Status::invalid, fmt::format("the container's mount {} from {} has a path that is not UTF-8; declare "
                                               "it yourself with external mnt[MOUNTPOINT]:KEY",
                                               to_valid_utf8(m.mountpoint), to_valid_utf8(*source)));
    const std::string key = mount_key(m.mountpoint, scan.found.mounts.size());
    scan.found.mounts.push_back({m.mountpoint, key, *source, m.fstype});
    scan.externals.push_back(fmt::format("mnt[{}]:{}", m.mountpoint, key));
  }
  scan_outside_files(pid, tree, mount_ids, scan);
}

}  // namespace

ContainerScan scan_container(pid_t pid, const std::vector<pid_t>& tree, const std::vector<std::string>& declared) {
  ContainerScan scan;
  const std::string pid_text = std::to_string(pid);
  scan.found.descriptors = stdio_of(pid);  // files outside the container are added by scan_mounts
  scan.found.cgroups = cgroups_of(pid);
  const auto host_mounts = read_mount_table(::getpid());
  if (ns_inode(pid_text, "mnt") != ns_inode("self", "mnt")) {
    scan.found.own_mount_namespace = true;
    scan_mounts(pid, tree, declared, scan);
  }
  const std::set<pid_t> members(tree.begin(), tree.end());
  for (const char* type : {"net", "pid"}) {
    const std::uint64_t inode = ns_inode(pid_text, type);
    if (inode == 0 || inode == ns_inode("self", type)) continue;
    const auto shared = shared_namespace(type, inode, members, host_mounts);
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
