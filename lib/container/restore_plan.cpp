#include "container/restore_plan.hpp"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "container/mount_table.hpp"
#include "fs/fs_util.hpp"

namespace nucleus::checkpoint {

namespace {

template <typename Enum>
Enum recorded_enum(const std::string& name, std::initializer_list<std::pair<const char*, Enum>> names, Enum fallback) {
  for (const auto& [n, e] : names)
    if (name == n) return e;
  if (!name.empty()) throw Error(Status::invalid, fmt::format("metadata.json records an unknown CRIU setting '{}'", name));
  return fallback;
}

// The options the dump used that CRIU needs again to restore what it dumped: without them a
// restore succeeds with file locks, connections or sockets silently gone.
void apply_dump_options(const DumpRecord& r, CriuOptions& o) {
  o.shell_job = o.shell_job || r.shell_job;
  o.tcp_established = o.tcp_established || r.tcp_established;
  o.tcp_close = o.tcp_close || r.tcp_close;
  o.ext_unix_sk = o.ext_unix_sk || r.ext_unix_sk;
  o.file_locks = o.file_locks || r.file_locks;
  o.evasive_devices = o.evasive_devices || r.evasive_devices;
  if (o.manage_cgroups == CgroupMode::criu_default)
    o.manage_cgroups = recorded_enum<CgroupMode>(r.manage_cgroups, {{"soft", CgroupMode::soft}, {"full", CgroupMode::full},
                                                                    {"strict", CgroupMode::strict}, {"ignore", CgroupMode::ignore}},
                                                 CgroupMode::criu_default);
  if (o.network_lock == NetworkLock::criu_default)
    o.network_lock = recorded_enum<NetworkLock>(r.network_lock, {{"iptables", NetworkLock::iptables},
                                                                 {"nftables", NetworkLock::nftables}, {"skip", NetworkLock::skip}},
                                                NetworkLock::criu_default);
  if (o.file_validation.empty()) o.file_validation = r.file_validation;
}

// A path the dump recorded, opened the way root may act on it for others (no symlink anywhere,
// nothing above it that another user could change) and checked to lead to the file it led to then:
// the signature covers the name, not what it leads to.
UniqueFd open_recorded(const std::string& path, int flags, const FileIdentity& recorded, std::string_view what,
                       std::string_view instead) {
  UniqueFd fd;
  try {
    fd = open_trusted_path(path, flags, what);
  } catch (const Error& e) {
    throw Error(e.status(), fmt::format("{}; {}", e.what(), instead));
  }
  if (!same_identity(recorded, identity_of(stat_fd(fd.get(), what))))
    throw Error(Status::integrity, fmt::format("{} {} is not the one the checkpoint was made with (it was replaced "
                                               "since); {}", what, path, instead));
  return fd;
}

bool caller_maps(const CriuOptions& o, const std::string& prefix) {
  return std::any_of(o.external.begin(), o.external.end(), [&](const std::string& e) { return e.starts_with(prefix); });
}

void apply_root(const DumpRecord& r, CriuOptions& o) {
  if (!o.root.empty()) {  // the caller's: still no name another user could redirect
    open_trusted_path(o.root.native(), O_PATH | O_DIRECTORY, "the rootfs");
    return;
  }
  if (!r.own_mount_namespace) return;
  if (r.root.empty())
    throw Error(Status::invalid, "the checkpoint is of a container with a mount namespace of its own whose rootfs was "
                                 "not found from the host at dump time: give its rootfs (root, CLI --root PATH)");
  open_recorded(r.root, O_PATH | O_DIRECTORY, r.root_identity, "the container's rootfs",
                "recreate it, or give the rootfs to use (root, CLI --root PATH)");
  o.root = r.root;
}

void apply_mounts(const DumpRecord& r, CriuOptions& o) {
  for (const auto& m : r.mounts) {
    if (caller_maps(o, fmt::format("mnt[{}]:", m.key))) continue;
    // A cgroup folder is CRIU's to recreate (it restores cgroups before it mounts).
    if (m.fstype != "cgroup" && m.fstype != "cgroup2")
      open_recorded(m.source, O_PATH, m.identity, fmt::format("the source of the container's mount {}", m.mountpoint),
                    fmt::format("recreate it, or give the source to use (external mnt[{}]:NEW_PATH)", m.key));
    o.external.push_back(fmt::format("mnt[{}]:{}", m.key, m.source));
  }
}

int ns_type_flag(const std::string& type) { return type == "net" ? CLONE_NEWNET : CLONE_NEWPID; }

// A descriptor of the namespace to restore into: the caller's, or the one bound where the dump
// found it, checked to be a namespace of that kind.
void apply_namespaces(const DumpRecord& r, RestorePlan& plan) {
  for (const auto& ns : r.namespaces) {
    const auto given = std::find_if(plan.options.inherit_fds.begin(), plan.options.inherit_fds.end(),
                                    [&](const InheritedFd& f) { return f.key == ns.key; });
    if (given != plan.options.inherit_fds.end()) continue;  // the caller's, passed on with the others
    if (ns.path.empty())
      throw Error(Status::invalid, fmt::format("the tree shared its {} namespace (inode {}) with processes outside it, "
                                               "and it was not bound in the file system: give a descriptor of the "
                                               "namespace to restore into (inherit-fd fd[N]:{})", ns.type, ns.inode, ns.key));
    UniqueFd fd;
    try {
      fd = open_trusted_path(ns.path, O_RDONLY, fmt::format("the tree's {} namespace", ns.type));
    } catch (const Error& e) {
      throw Error(e.status(), fmt::format("{} (recreate it, e.g. ip netns add, or give one: inherit-fd fd[N]:{})",
                                          e.what(), ns.key));
    }
    if (::ioctl(fd.get(), NS_GET_NSTYPE) != ns_type_flag(ns.type))
      throw Error(Status::invalid, fmt::format("{} is not a {} namespace; give the namespace to restore into with "
                                               "inherit-fd fd[N]:{}", ns.path, ns.type, ns.key));
    plan.inherited.push_back({-1, ns.key});
    plan.fds.push_back(fd.get());
    plan.opened.push_back(std::move(fd));
  }
}

// The key a caller's inherit-fd stands for: "stdin", "stdout" and "stderr" name what the root held
// there.
std::string resolved_key(const DumpRecord& r, const std::string& key) {
  static constexpr const char* stdio[] = {"stdin", "stdout", "stderr"};
  for (int n = 0; n < 3; ++n) {
    if (key != stdio[n]) continue;
    const auto held = std::find_if(r.descriptors.begin(), r.descriptors.end(), [&](const RecordedFd& d) { return d.fd == n; });
    if (held == r.descriptors.end())
      throw Error(Status::invalid, fmt::format("inherit-fd for '{}': the tree's root held no pipe, socket or outside "
                                               "file as {} when it was dumped, so there is nothing to replace", key, key));
    return held->key;
  }
  return key;
}

// Files outside the container that the tree held, reopened where the dump found them unless the
// caller hands in its own: never through a symlink, never created or truncated, never blocking
// (a FIFO put in its place), and only the very file the tree held.
void reopen_outside_files(const DumpRecord& r, RestorePlan& plan) {
  for (const auto& d : r.descriptors) {
    if (d.path.empty()) continue;
    const bool given = std::any_of(plan.options.inherit_fds.begin(), plan.options.inherit_fds.end(),
                                   [&](const InheritedFd& f) { return resolved_key(r, f.key) == d.key; });
    if (given) continue;
    const int access = d.flags & (O_ACCMODE | O_APPEND);
    UniqueFd fd = open_recorded(d.path, access | O_NONBLOCK, d.identity,
                                fmt::format("the file the tree held open{} outside its container",
                                            d.fd >= 0 ? fmt::format(" as descriptor {}", d.fd) : ""),
                                fmt::format("give a descriptor for it (inherit-fd fd[N]:{})", d.key));
    if (::fcntl(fd.get(), F_SETFL, access) != 0)  // O_NONBLOCK only guarded the open
      throw system_error(Status::io, errno, fmt::format("cannot set the flags of {}", d.path));
    plan.inherited.push_back({-1, d.key});
    plan.fds.push_back(fd.get());
    plan.opened.push_back(std::move(fd));
  }
}

// The caller's descriptors, each checked to be open.
void apply_inherited(const DumpRecord& r, RestorePlan& plan) {
  for (const auto& given : plan.options.inherit_fds) {
    if (given.fd < 0 || ::fcntl(given.fd, F_GETFD) < 0)
      throw Error(Status::invalid, fmt::format("inherit-fd for '{}': descriptor {} is not open in this process",
                                               given.key, given.fd));
    if (given.key.empty()) throw Error(Status::invalid, fmt::format("inherit-fd for descriptor {} has no key", given.fd));
    plan.inherited.push_back({-1, resolved_key(r, given.key)});
    plan.fds.push_back(given.fd);
  }
}

}  // namespace

RestorePlan plan_restore(const CheckpointMetadata& metadata, const CriuOptions& caller, int first_fd) {
  RestorePlan plan;
  plan.options = caller;
  if (metadata.has_record) apply_dump_options(metadata.record, plan.options);
  if (metadata.has_record && caller.detect_container) {
    const DumpRecord& r = metadata.record;
    apply_root(r, plan.options);
    apply_mounts(r, plan.options);
    apply_namespaces(r, plan);
    reopen_outside_files(r, plan);
  }
  apply_inherited(metadata.record, plan);
  for (std::size_t i = 0; i < plan.inherited.size(); ++i) plan.inherited[i].fd = first_fd + static_cast<int>(i);
  return plan;
}

}  // namespace nucleus::checkpoint
