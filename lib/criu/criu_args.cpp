#include "criu/criu_args.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string_view>

#include <nucleus/checkpoint/error.hpp>

#include "fs/tree_walk.hpp"

namespace nucleus::checkpoint {

namespace {

// The CRIU actions an option is given to. Where CRIU 4.2.1 reads an option (its source, not its
// help text) decides: --cgroup-props is read by dump alone, and restore takes the network lock
// method the dump recorded in its inventory image (CRIU warns that --network-lock is ignored).
enum Action : unsigned { none = 0, dump = 1, restore = 2, both = dump | restore, lazy_pages = 4,
                       every = both | lazy_pages };

Error refused(std::string_view option, std::string_view value, std::string_view why) {
  return Error(Status::invalid, fmt::format("CRIU's {} {:?} is refused: {}", option, value, why));
}

// Every value becomes one argument of CRIU's. Before parsing, CRIU scans its whole command line
// for "--help", "-h", "--no-default-config", "--config" and anything containing "--config=", so
// such an argument would change what CRIU does whatever option it belongs to; and CRIU's logs and
// errors are lines. Only --cgroup-props (YAML) spans lines.
void check_value(std::string_view option, std::string_view value, bool multiline = false) {
  if (value.empty()) throw refused(option, value, "it is empty");
  if (value.front() == '-') throw refused(option, value, "a value cannot start with '-'");
  if (value.find('\0') != std::string_view::npos) throw refused(option, value, "it holds a NUL byte");
  if (!multiline && value.find('\n') != std::string_view::npos) throw refused(option, value, "it holds a newline");
  if (value.find("--config=") != std::string_view::npos)
    throw refused(option, value, "CRIU would read the file named after \"--config=\" as its configuration");
}

// CRIU's working directory is the work dir: a relative path would be resolved there.
void check_path(std::string_view option, std::string_view value) {
  check_value(option, value);
  if (value.front() != '/') throw refused(option, value, "it must be an absolute path");
}

template <std::size_t N>
bool one_of(std::string_view value, const std::array<std::string_view, N>& accepted) {
  return std::find(accepted.begin(), accepted.end(), value) != accepted.end();
}

// "NS:PID" or "NS:FILE", and for user namespaces ",UID,GID" after it; CRIU cannot join a PID
// namespace.
void check_join_ns(std::string_view value) {
  static constexpr std::array<std::string_view, 6> types{"net", "uts", "time", "ipc", "user", "mnt"};
  check_value("--join-ns", value);
  const auto colon = value.find(':');
  const std::string_view ns = value.substr(0, colon);
  if (colon == std::string_view::npos || !one_of(ns, types))
    throw refused("--join-ns", value, "it must be NS:PID or NS:FILE with NS one of net, uts, time, ipc, user, mnt");
  const auto comma = value.find(',', colon);
  const std::string_view target = value.substr(colon + 1, comma == std::string_view::npos ? comma : comma - colon - 1);
  const bool pid = !target.empty() && std::all_of(target.begin(), target.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!pid && (target.empty() || target.front() != '/'))
    throw refused("--join-ns", value, "the namespace must be given as a PID or an absolute path: NS:PID or NS:FILE");
  if (comma != std::string_view::npos && ns != "user")
    throw refused("--join-ns", value, "only a user namespace takes options (user:PID,UID,GID)");
}

// "[CONTROLLER:]/PATH": CRIU splits at the first ':'; an empty CONTROLLER (":/PATH") is the cgroup
// v2 hierarchy alone, where no prefix at all moves every hierarchy, v1 ones included.
void check_cgroup_root(std::string_view value) {
  check_value("--cgroup-root", value);
  const auto colon = value.find(':');
  const std::string_view controller = colon == std::string_view::npos ? std::string_view() : value.substr(0, colon);
  const std::string_view path = colon == std::string_view::npos ? value : value.substr(colon + 1);
  if (controller.find('/') != std::string_view::npos || path.empty() || path.front() != '/')
    throw refused("--cgroup-root", value, "it must be /PATH, CONTROLLER:/PATH or :/PATH (cgroup v2 alone)");
}

// "TYPE:NAME" with TYPE apparmor or selinux, or "none:" for no profile.
void check_lsm_profile(std::string_view value) {
  static constexpr std::array<std::string_view, 3> types{"apparmor", "selinux", "none"};
  check_value("--lsm-profile", value);
  const auto colon = value.find(':');
  const std::string_view type = value.substr(0, colon);
  if (colon == std::string_view::npos || !one_of(type, types) || (type != "none" && colon + 1 == value.size()))
    throw refused("--lsm-profile", value, "it must be apparmor:NAME, selinux:NAME or none:");
}

void check_inherited(const InheritedFd& inherited) {
  if (inherited.fd < 0)
    throw refused("--inherit-fd", fmt::format("fd[{}]:{}", inherited.fd, inherited.key), "the descriptor is negative");
  check_value("--inherit-fd", inherited.key);
}

// The arguments for one action: an option is checked whatever the action, and added only if it
// applies to it.
class Args {
 public:
  explicit Args(Action action) : action_(action) {
    if (action_ == dump) args_.emplace_back("dump");
    if (action_ == restore) args_.emplace_back("restore");
    if (action_ == lazy_pages) args_.emplace_back("lazy-pages");
  }
  void flag(Action applies, const char* option, bool on) {
    if (on && (applies & action_)) args_.emplace_back(option);
  }
  void value(Action applies, const char* option, std::string value) {
    if (!(applies & action_)) return;
    args_.emplace_back(option);
    args_.push_back(std::move(value));
  }
  // The folders (as CRIU can open them) and the log, named after the action.
  void folders(const std::string& images_dir, const std::string& work_dir) {
    for (const auto* dir : {&images_dir, &work_dir})
      if (dir->empty()) throw Error(Status::invalid, "CRIU's images and work folders must be given");
    args_.insert(args_.end(), {"--images-dir", images_dir, "--work-dir", work_dir, "--log-file",
                               action_ == dump ? "dump.log" : action_ == restore ? "restore.log" : "lazy-pages.log"});
  }
  std::vector<std::string> take() { return std::move(args_); }

 private:
  Action action_;
  std::vector<std::string> args_;
};

const char* cgroup_mode_arg(CgroupMode mode) {
  switch (mode) {
    case CgroupMode::criu_default: return nullptr;
    case CgroupMode::soft: return "--manage-cgroups=soft";
    case CgroupMode::full: return "--manage-cgroups=full";
    case CgroupMode::strict: return "--manage-cgroups=strict";
    case CgroupMode::ignore: return "--manage-cgroups=ignore";
  }
  throw Error(Status::invalid, fmt::format("unknown cgroup mode {}", static_cast<int>(mode)));
}

const char* network_lock_name(NetworkLock lock) {
  switch (lock) {
    case NetworkLock::criu_default: return nullptr;
    case NetworkLock::iptables: return "iptables";
    case NetworkLock::nftables: return "nftables";
    case NetworkLock::skip: return "skip";
  }
  throw Error(Status::invalid, fmt::format("unknown network lock method {}", static_cast<int>(lock)));
}

// Every field of CriuOptions that CRIU is given (work_dir and timeout are the library's; the
// inherited descriptors come resolved, as criu_restore_args's argument).
void add_options(const CriuOptions& o, Args& a) {
  // CRIU finds it wherever it stands in argv (it scans argv before parsing); first, to be seen.
  a.flag(every, "--no-default-config", !o.use_default_config);
  if (o.log_level < 0 || o.log_level > 4)
    throw Error(Status::invalid, fmt::format("CRIU log level {} is out of range 0 to 4", o.log_level));
  a.flag(every, fmt::format("-v{}", o.log_level).c_str(), true);

  // Without leave_running the tree is left stopped, not killed: the library kills it only once
  // the checkpoint is signed and in place, and resumes it if anything fails before that.
  a.flag(dump, o.leave_running ? "--leave-running" : "--leave-stopped", true);
  switch (o.restore_mode) {
    case RestoreMode::detached: break;
    case RestoreMode::child: a.flag(restore, "--restore-sibling", true); break;
    default: throw Error(Status::invalid, fmt::format("unknown restore mode {}", static_cast<int>(o.restore_mode)));
  }

  a.flag(both, "--shell-job", o.shell_job);
  a.flag(both, "--tcp-established", o.tcp_established);
  a.flag(both, "--tcp-close", o.tcp_close);  // a dump with it must be restored with it
  a.flag(dump, "--skip-in-flight", o.skip_in_flight);
  a.flag(both, "--ext-unix-sk", o.ext_unix_sk);
  a.flag(both, "--file-locks", o.file_locks);
  if (const char* mode = cgroup_mode_arg(o.manage_cgroups)) a.flag(both, mode, true);
  for (const auto& e : o.external) {
    check_value("--external", e);
    a.value(both, "--external", e);
  }

  if (!o.root.empty()) {
    check_path("--root", o.root.native());
    a.value(restore, "--root", o.root.native());
  }
  for (const auto& fd : o.inherit_fds) check_inherited(fd);  // resolved by the caller
  for (const auto& ns : o.join_ns) {
    check_join_ns(ns);
    a.value(restore, "--join-ns", ns);
  }
  for (const auto& ns : o.empty_ns) {
    if (ns != "net") throw refused("--empty-ns", ns, "CRIU accepts only net");
    a.value(restore, "--empty-ns", ns);
  }
  if (const char* lock = network_lock_name(o.network_lock)) a.value(dump, "--network-lock", lock);

  for (const auto& root : o.cgroup_root) {
    check_cgroup_root(root);
    a.value(both, "--cgroup-root", root);
  }
  if (!o.cgroup_yard.empty()) {
    check_path("--cgroup-yard", o.cgroup_yard);
    a.value(both, "--cgroup-yard", o.cgroup_yard);
  }
  if (!o.cgroup_props.empty()) {
    check_value("--cgroup-props", o.cgroup_props, true);
    a.value(dump, "--cgroup-props", o.cgroup_props);
  }
  if (!o.freeze_cgroup.empty()) {
    check_path("--freeze-cgroup", o.freeze_cgroup);
    a.value(dump, "--freeze-cgroup", o.freeze_cgroup);
  }

  if (!o.lsm_profile.empty()) {
    check_lsm_profile(o.lsm_profile);
    a.value(restore, "--lsm-profile", o.lsm_profile);
  }
  if (!o.lsm_mount_context.empty()) {
    check_value("--lsm-mount-context", o.lsm_mount_context);
    a.value(restore, "--lsm-mount-context", o.lsm_mount_context);
  }

  // A layer of a pre-dump chain: CRIU links images/parent to the parent's images, a sibling
  // checkpoint (checked by the caller), and writes only the memory changed since it.
  if (!o.parent.empty()) {
    a.flag(dump, "--track-mem", true);
    a.value(dump, "--prev-images-dir", parent_link_target(o.parent.filename().native()));
  }
  a.flag(dump, "--auto-dedup", o.auto_dedup);  // never at restore: CRIU would punch holes in the images it reads
  a.flag(dump, "--link-remap", o.link_remap);
  if (o.ghost_limit != 0) {
    // CRIU reads it with atol.
    if (o.ghost_limit > static_cast<std::uint64_t>(std::numeric_limits<long>::max()))
      throw refused("--ghost-limit", std::to_string(o.ghost_limit), "it exceeds CRIU's largest size (2^63 - 1 bytes)");
    a.value(dump, "--ghost-limit", std::to_string(o.ghost_limit));
  }
  a.flag(dump, "--ghost-fiemap", o.ghost_fiemap);
  a.flag(both, "--evasive-devices", o.evasive_devices);
  if (!o.file_validation.empty()) {
    if (o.file_validation != "filesize" && o.file_validation != "buildid")
      throw refused("--file-validation", o.file_validation, "CRIU accepts filesize or buildid");
    a.value(both, "--file-validation", o.file_validation);
  }
}

}  // namespace

std::vector<std::string> criu_dump_args(pid_t pid, const std::string& images_dir, const std::string& work_dir,
                                        const CriuOptions& o) {
  if (pid <= 0) throw Error(Status::invalid, fmt::format("PID {} is not a process", pid));
  Args a(dump);
  add_options(o, a);
  a.value(dump, "--tree", std::to_string(pid));
  a.folders(images_dir, work_dir);
  return a.take();
}

std::vector<std::string> criu_predump_args(pid_t pid, const std::string& images_dir, const std::string& work_dir,
                                           const CriuOptions& o) {
  CriuOptions running = o;
  running.leave_running = true;  // CRIU's pre-dump lets the tree run on
  std::vector<std::string> args = criu_dump_args(pid, images_dir, work_dir, running);
  args.front() = "pre-dump";  // it tracks memory itself
  return args;
}

std::vector<std::string> criu_restore_args(const std::string& images_dir, const std::string& work_dir,
                                           const CriuOptions& o, const std::vector<InheritedFd>& inherited) {
  Args a(restore);
  add_options(o, a);
  for (const auto& fd : inherited) {
    check_inherited(fd);
    a.value(restore, "--inherit-fd", fmt::format("fd[{}]:{}", fd.fd, fd.key));
  }
  // CRIU writes the root's PID there once the tree runs; detached, CRIU returns then.
  a.value(restore, "--pidfile", "restore.pid");
  a.flag(restore, "--restore-detached", true);
  a.flag(restore, "--leave-stopped", o.leave_stopped);
  a.folders(images_dir, work_dir);
  return a.take();
}

std::vector<std::string> criu_lazy_pages_args(const std::string& images_dir, const std::string& work_dir,
                                              int page_socket, int status_fd, const CriuOptions& o) {
  Args a(lazy_pages);
  add_options(o, a);
  a.value(lazy_pages, "--ps-socket", std::to_string(page_socket));
  a.flag(lazy_pages, "--page-server", true);
  a.value(lazy_pages, "--status-fd", std::to_string(status_fd));
  a.folders(images_dir, work_dir);
  return a.take();
}

void validate_criu_options(const CriuOptions& o) {
  Args checked_only(none);
  add_options(o, checked_only);
}

}  // namespace nucleus::checkpoint
