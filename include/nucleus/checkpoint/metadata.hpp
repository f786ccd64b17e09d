// metadata.json, the checkpoint's description, in nucleus-container's JSON shape.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nucleus/checkpoint_export.h>

namespace nucleus::checkpoint {

// Which file a path led to at dump (st_dev, st_ino): a restore that finds something else under
// the recorded name refuses it, since the signature covers the name, not what it leads to.
struct FileIdentity {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  bool operator==(const FileIdentity&) const = default;
};

// A bind mount from outside the container, declared external at dump: CRIU's key, where it is
// mounted inside the container, its source as the host saw it then, and its file system type
// (a cgroup's source is recreated by CRIU at restore).
struct ExternalMount {
  std::string mountpoint;
  std::string key;
  std::string source;
  std::string fstype;
  FileIdentity identity;
  bool operator==(const ExternalMount&) const = default;
};

// A namespace the tree shared with processes outside it (a pod's network namespace): CRIU's key,
// and where it was bound in the file system (e.g. /run/netns/pod), if anywhere.
struct ExternalNamespace {
  std::string type;  // "net" or "pid"
  std::uint64_t inode = 0;
  std::string key;
  std::string path;
  bool operator==(const ExternalNamespace&) const = default;
};

// A descriptor the tree held on something outside it: a pipe or socket of the root's stdio (a
// launcher's), or a file on a mount outside the container (a log on the host). The number it
// had in the root (-1 for another process's), CRIU's key for it ("pipe:[12345]",
// "file[1b:a721d9]"), and for a file its host path and open flags, by which restore reopens it.
struct RecordedFd {
  int fd = 0;
  std::string key;
  std::string path;
  int flags = 0;
  FileIdentity identity;
  bool operator==(const RecordedFd&) const = default;
};

// What restore must know of how the dump was made, in metadata.json's "nucleus" object (the
// seed's fields stay as they are): the options CRIU must be given again, and the container.
struct DumpRecord {
  bool shell_job = true;
  bool tcp_established = false;
  bool tcp_close = false;  // CRIU refuses to restore such a dump without it
  bool ext_unix_sk = false;
  bool file_locks = false;
  bool evasive_devices = false;
  // Post-copy: the memory CRIU left out (--lazy-pages) is not in the folder; it goes to the
  // receiver of a migration, which alone can restore the tree from it, in a page stream keyed with
  // this public key of the source's (hex). Empty: not post-copy.
  std::string post_copy_key;
  std::string manage_cgroups;   // "", "soft", "full", "strict", "ignore"
  std::string network_lock;     // "", "iptables", "nftables", "skip"
  std::string file_validation;  // "", "filesize", "buildid"
  bool own_mount_namespace = false;    // the tree had a mount namespace of its own
  bool own_network_namespace = false;  // and a network namespace nobody outside it shared
  std::string root;             // its rootfs as the host saw it; empty: not found (or the host's)
  FileIdentity root_identity;
  std::vector<ExternalMount> mounts;
  std::vector<ExternalNamespace> namespaces;
  std::vector<RecordedFd> descriptors;
  std::vector<std::string> cgroups;  // /proc/PID/cgroup of the root, one line each
  bool operator==(const DumpRecord&) const = default;
};

// Where a checkpoint stands in a pre-dump chain ("chain" in the "nucleus" object; absent for a
// checkpoint made without a parent that is not a pre-dump). The parent is bound by the SHA-256 of
// its checkpoint.hmac, so a layer cannot be re-parented nor its parent swapped or re-signed.
struct ChainRecord {
  bool predump = false;  // CRIU's pre-dump: memory only, a parent for later layers, never restored alone
  std::string parent;    // the parent checkpoint's folder name, a sibling of this one; empty: none
  std::string parent_signature_sha256;  // lowercase hex; empty when there is no parent
  bool operator==(const ChainRecord&) const = default;
};

struct NC_EXPORT CheckpointMetadata {
  static constexpr const char* file_name = "metadata.json";
  static constexpr std::size_t max_size = 1 << 20;

  std::string container_id;
  std::string container_name;
  std::uint32_t original_pid = 0;
  std::vector<std::string> command;
  std::uint64_t checkpoint_at = 0;  // seconds since the epoch
  std::string version;              // of the library that wrote it
  bool using_gvisor = false;
  bool rootless = false;

  // The library's own fields ("nucleus"); absent in checkpoints of nucleus-container and of
  // earlier versions, which still load.
  bool has_record = false;
  DumpRecord record;
  std::vector<std::pair<std::string, std::string>> annotations;  // sorted by name, unique
  std::vector<std::string> runtime_files;                        // names under runtime/
  std::optional<ChainRecord> chain;  // a pre-dump, or a layer dumped on a parent

  // Throws Error(Status::invalid) if a string is not UTF-8 or the JSON would exceed max_size.
  std::string to_json() const;
  // Throws Error(Status::invalid) naming the field that is missing or of the wrong type.
  static CheckpointMetadata from_json(std::string_view json);

  // Atomically writes dir_fd/metadata.json (temp file 0600 O_NOFOLLOW, fsync, rename).
  void save(int dir_fd) const;
  static CheckpointMetadata load(int dir_fd);

  bool operator==(const CheckpointMetadata&) const = default;
};

}  // namespace nucleus::checkpoint
