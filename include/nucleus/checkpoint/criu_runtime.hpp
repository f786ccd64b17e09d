// Checkpoint and restore of process trees through the criu binary.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <compare>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <nucleus/checkpoint/checkpoint_state.hpp>
#include <nucleus/checkpoint/criu_options.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>

namespace nucleus::checkpoint {

// What is being checkpointed; the seed's ContainerState, reduced to what a checkpoint records.
struct ContainerInfo {
  std::string id;
  std::string name;                  // empty: same as id
  pid_t pid = 0;                     // root of the tree
  std::vector<std::string> command;  // empty: read from /proc/<pid>/cmdline
  // The process's start time (/proc/<pid>/stat field 22) when the caller recorded it; if it
  // differs now, the PID was reused and the dump is refused. 0: not checked.
  std::uint64_t start_ticks = 0;
  bool using_gvisor = false;
  bool rootless = false;
  // The runtime's own description, signed with the checkpoint: string annotations in
  // metadata.json, and files (its config, spec, descriptor list) written under runtime/ before
  // the folder is signed. Names are plain file names (no '/', not "." or "..").
  std::vector<std::pair<std::string, std::string>> annotations;
  std::vector<std::pair<std::string, std::string>> runtime_files;  // name, bytes
};

// A restored tree: its root's PID and a pidfd for it, opened while the root was known to be
// the restored process (it cannot refer to a process that reused the PID later).
struct RestoredTree {
  pid_t pid = 0;
  int pidfd = -1;  // the caller's to close
};

struct CriuVersion {
  int major = 0, minor = 0, patch = 0;
  std::string text;  // as criu printed it
  auto operator<=>(const CriuVersion& o) const {
    return std::tie(major, minor, patch) <=> std::tie(o.major, o.minor, o.patch);
  }
  bool operator==(const CriuVersion& o) const { return (*this <=> o) == 0; }
};

struct MigrateOptions;
struct MigrationReport;
class HeldTree;
struct HandOver;
struct ReceivedMigration;

class NC_EXPORT CriuRuntime {
 public:
  // Folders CRIU is looked for in, in order. PATH is searched only when not root.
  static const std::vector<std::filesystem::path>& trusted_paths();

  // Finds criu (trusted paths, then PATH when not root) and validates it.
  CriuRuntime();
  // Uses this binary; validated the same way.
  explicit CriuRuntime(std::filesystem::path criu_binary);

  ~CriuRuntime();
  CriuRuntime(const CriuRuntime&) = delete;
  CriuRuntime& operator=(const CriuRuntime&) = delete;

  // Refuses a binary that is missing, not a regular file, not executable, writable by group or
  // others, or owned by neither root nor the effective uid.
  static void validate_binary(const std::filesystem::path& path);
  // "Version: 4.1.1" -> {4, 1, 1}; nullopt if criu printed no version.
  static std::optional<CriuVersion> parse_version(std::string_view criu_version_output);
  // A pidfile is exactly one decimal number (surrounding white space allowed), nothing else.
  static std::optional<pid_t> parse_pidfile(std::string_view text);

  const std::filesystem::path& binary() const noexcept { return binary_; }
  const CriuVersion& version() const noexcept { return version_; }
  CheckpointState state() const;

  // Signs with this key instead of the key store's.
  void set_key(HmacKey key);
  // Signs the dumps asked to be signed with Ed25519 (CriuOptions::signing) with this key instead
  // of the key store's.
  void set_ed25519_key(Ed25519SecretKey key);

  // Creates dir and dir/images (0700, never through a symlink), dumps the tree into them with
  // CRIU logging to dir/dump.log, writes metadata.json, then signs the folder: in the manifest
  // format unless another is given, its images hashed while CRIU writes them. On any failure the
  // state returns to None and the message carries CRIU's own errors.
  void checkpoint(const ContainerInfo& container, const std::filesystem::path& dir, bool leave_running);
  void checkpoint(const ContainerInfo& container, const std::filesystem::path& dir, const CriuOptions& options);
  void checkpoint(const ContainerInfo& container, const std::filesystem::path& dir, const CriuOptions& options,
                  SignatureFormat format);
  // CRIU's pre-dump: the tree's memory into a new checkpoint folder while the tree runs on, signed
  // like a dump (chunked or manifest format), its metadata marking it a pre-dump. With
  // options.parent (an earlier pre-dump beside it) only the memory changed since is written. A
  // later pre-dump or the final checkpoint() takes it as options.parent; restoring that final
  // layer verifies the whole chain. Needs a kernel that tracks changed memory (soft-dirty).
  void predump(const ContainerInfo& container, const std::filesystem::path& dir, const CriuOptions& options,
               SignatureFormat format = SignatureFormat::manifest);
  // Restores the tree detached and returns the restored root's PID as soon as it runs; only a
  // checkpoint that verifies ever runs. A manifest-signed checkpoint is streamed to CRIU through
  // the library, every chunk checked before CRIU reads it and the rest verified while the tree is
  // still stopped; other formats (or options.stream_images false) verify whole before CRIU runs.
  pid_t restore(const std::filesystem::path& dir);
  pid_t restore(const std::filesystem::path& dir, const CriuOptions& options);
  // As restore, with a pidfd for the restored root as well.
  RestoredTree restore_tree(const std::filesystem::path& dir, const CriuOptions& options);
  // Runs `criu check`; throws Error(Status::criu) with CRIU's words if it does not look good.
  void check() const;

 private:
  CheckpointState begin(CheckpointState target);
  void finish(CheckpointState target);
  HmacKey signing_key() const;
  Ed25519SecretKey ed25519_signing_key() const;
  void dump(const ContainerInfo& container, const std::filesystem::path& dir, const CriuOptions& options,
            SignatureFormat format, bool predump);
  // A migration's dump (nucleus/checkpoint/migrate.hpp): hand_over gets the stopped tree once the
  // checkpoint is committed (lib/criu/dump_guardian.hpp).
  void dump(const ContainerInfo& container, const std::filesystem::path& dir, const CriuOptions& options,
            SignatureFormat format, bool predump, const HandOver& hand_over);
  friend MigrationReport migrate(CriuRuntime&, const ContainerInfo&, const std::filesystem::path&, int,
                                 const MigrateOptions&);
  friend ReceivedMigration receive_migration(CriuRuntime&, int, const std::filesystem::path&, const CriuOptions&,
                                             std::chrono::milliseconds);
  // lazy_pages: a post-copy checkpoint, its memory served by a lazy-pages daemon in options.work_dir.
  RestoredTree restore_tracked(const std::filesystem::path& dir, const CriuOptions& options, bool track,
                               bool lazy_pages = false);

  std::filesystem::path binary_;
  int binary_fd_ = -1;  // O_PATH: what was validated is what runs
  CriuVersion version_;
  std::optional<HmacKey> key_;
  std::optional<Ed25519SecretKey> ed25519_key_;
  mutable std::mutex mutex_;
  CheckpointState state_ = CheckpointState::None;
};

}  // namespace nucleus::checkpoint
