// CRIU's options for a dump or a restore: those a container runtime reaches for (CRIU's, runc's
// and libcriu's names), with the library's defaults. Each says whether it applies to the dump, the
// restore or both; the options a dump used that restore must repeat are recorded in the signed
// metadata and applied by a plain restore.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <sys/types.h>
#include <string>
#include <utility>
#include <vector>

#include <nucleus/checkpoint/ed25519.hpp>

namespace nucleus::checkpoint {

enum class CgroupMode : int { criu_default = 0, soft = 1, full = 2, strict = 3, ignore = 4 };
enum class RestoreMode : int {
  detached = 0,  // reparented to the nearest subreaper or PID 1 (--restore-detached)
  child = 1,     // the caller's child, which it can wait for (--restore-sibling)
};
// How CRIU keeps the network of a tree in its own network namespace quiet while it works.
enum class NetworkLock : int { criu_default = 0, iptables = 1, nftables = 2, skip = 3 };

// Restore: the caller's descriptor `fd` stands for what the dump recorded as `key`: CRIU's own
// form ("pipe:[12345]", "socket:[678]", the key of an external namespace), or "stdin", "stdout",
// "stderr" for what the tree's root held at those numbers when it was dumped. Only these
// descriptors reach CRIU, each under a number of its own.
struct InheritedFd {
  int fd = -1;
  std::string key;
};

// CRIU's notifications, as its action scripts name them (pre-dump, post-dump, ...).
enum class CriuNotification : int {
  pre_dump = 1,
  post_dump = 2,               // the images are written; the tree is still frozen
  pre_restore = 3,
  post_restore = 4,            // the tree is restored, not yet running
  network_lock = 5,
  network_unlock = 6,
  setup_namespaces = 7,        // the namespaces exist: configure them (a veth into the new netns)
  post_setup_namespaces = 8,
  pre_resume = 9,              // the last moment before the restored tree runs
  post_resume = 10,
  status_ready = 11,
};

struct NotifyEvent {
  CriuNotification what;
  pid_t pid = 0;  // the tree's root as the host sees it, once CRIU knows it (0 before)
};

// Called on the caller's thread while CRIU waits. Returning false (or throwing) stops CRIU: a
// dump fails and the tree runs on, a restore fails and what CRIU made is killed before it runs.
using NotifyCallback = std::function<bool(const NotifyEvent&)>;

struct CriuOptions {
  bool leave_running = false;    // dump: the tree keeps running afterwards
  // restore: every restored task is left stopped (SIGSTOP), for the caller to resume (SIGCONT to
  // each, through RestoredTree's pidfd and its children) or kill
  bool leave_stopped = false;
  bool shell_job = true;         // both: the tree may belong to an outside session or terminal (seed default)
  bool tcp_established = false;  // both: established TCP connections
  bool tcp_close = false;        // both: do not dump (dump) or restore closed (restore) established connections
  bool ext_unix_sk = false;      // both: allow UNIX sockets connected outside the tree
  bool file_locks = false;       // both: file locks
  CgroupMode manage_cgroups = CgroupMode::criu_default;  // both
  // --external values, as CRIU takes them. Dump: "mnt[MOUNTPOINT]:KEY", "net[INODE]:KEY",
  // "pid[INODE]:KEY", "dev[MAJOR/MINOR]:KEY". Restore: "mnt[KEY]:HOST_PATH", "dev[KEY]:HOST_PATH".
  std::vector<std::string> external;
  std::filesystem::path work_dir;        // both: CRIU's logs (and pidfile) here instead of the default
  int log_level = 4;                     // both: CRIU's -v, 0 to 4
  std::chrono::milliseconds timeout{0};  // both: 0: none; past it CRIU is stopped and the call fails
  RestoreMode restore_mode = RestoreMode::detached;

  // --- Containers ---
  // Dump: read the tree's mount table and namespaces, declare external what lies outside the
  // container (bind mounts from the host, a pod's network namespace), and record the rootfs, the
  // mount map, the namespaces and the descriptors in the signed metadata. Restore: apply what was
  // recorded, with anything given here taking precedence.
  bool detect_container = true;
  // Restore: CRIU reads its images through a stream the library serves, which checks every chunk
  // against the signature before CRIU reads it; false restores from the folder after verifying it
  // whole (slower: verification then CRIU, not both at once).
  // (Here, in what was padding after detect_container: no member of 0.1 moves, and the struct's
  // size stays, so C++ programs built against 0.1 keep working.)
  bool stream_images = true;
  std::filesystem::path root;             // restore: the container's rootfs (CRIU's --root); default: recorded
  std::vector<InheritedFd> inherit_fds;   // restore: --inherit-fd
  std::vector<std::string> join_ns;       // restore: --join-ns "NS:PATH[,EXTRA]"
  std::vector<std::string> empty_ns;      // restore: --empty-ns (CRIU accepts "net")
  // Dump: CRIU writes the method into its images and a restore unlocks with the same one.
  NetworkLock network_lock = NetworkLock::criu_default;
  std::vector<std::string> cgroup_root;   // restore (and dump): --cgroup-root "[CONTROLLER:]/PATH"
  std::string cgroup_yard;                // both: --cgroup-yard PATH
  std::string cgroup_props;               // dump: --cgroup-props (YAML text): which properties to save
  std::string freeze_cgroup;              // dump: --freeze-cgroup PATH
  std::string lsm_profile;                // restore: --lsm-profile TYPE:NAME
  std::string lsm_mount_context;          // restore: --lsm-mount-context CONTEXT
  bool skip_in_flight = false;            // dump: --skip-in-flight
  bool link_remap = false;                // dump: --link-remap
  std::uint64_t ghost_limit = 0;          // dump: --ghost-limit in bytes (0: CRIU's default)
  bool ghost_fiemap = false;              // dump: --ghost-fiemap
  bool evasive_devices = false;           // dump: --evasive-devices (passed at restore too, harmless)
  std::string file_validation;            // both: --file-validation "filesize" or "buildid"
  // CRIU reads /etc/criu/default.conf (and ~/.criu/default.conf) only if this is set: a config
  // file nobody sees must not change a dump.
  bool use_default_config = false;
  NotifyCallback notify;  // both: CRIU's notifications (see NotifyCallback)

  // --- What a restore requires of the checkpoint, checked once it verifies ---
  // The container it was signed for: another one's checkpoint (a folder swapped with a
  // neighbour's) is refused with Status::integrity. Empty: not checked.
  std::string expected_container_id;
  // Annotations it must carry with exactly these values, e.g. a generation counter the runtime
  // bumps with every dump, so that an older signed checkpoint cannot be replayed in its place.
  std::vector<std::pair<std::string, std::string>> expected_annotations;

  // --- Pre-dump chains (dump and pre-dump only) ---
  // A pre-dump to dump on: the new checkpoint holds only the memory changed since it (CRIU's
  // --track-mem and --prev-images-dir), and its signature binds the parent's. The parent must be a
  // folder beside the new one (CRIU links to it as ../../NAME/images), and the whole chain
  // verifies before CRIU reads it.
  std::filesystem::path parent;
  // CRIU's --auto-dedup: CRIU punches the pages the new layer holds out of its parents' images, so
  // the chain takes less disk. That changes the parents: the library re-signs each, oldest first,
  // each rebound to its parent, once CRIU is done (they were verified before it ran).
  bool auto_dedup = false;

  // --- Signing (dump and pre-dump) ---
  // The key a dump is signed with: the key store's HMAC key, or its Ed25519 key (created, and
  // trusted on this host, if there is none; see CriuRuntime::set_ed25519_key), whose checkpoints
  // verify on hosts that hold only its public key. Ed25519 needs the chunked or manifest format.
  SignatureKind signing = SignatureKind::hmac_sha256;
};

}  // namespace nucleus::checkpoint
