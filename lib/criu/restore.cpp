#include <nucleus/checkpoint/criu_runtime.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdlib>
#include <thread>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/metadata.hpp>

#include "checkpoint/chain.hpp"
#include "fs/checkpoint_dir.hpp"
#include "signature/chunked_signature.hpp"
#include "criu/criu_args.hpp"
#include "criu/criu_log.hpp"
#include "criu/criu_notify.hpp"
#include "fs/fs_util.hpp"
#include "signature/live_digests.hpp"
#include "container/restore_plan.hpp"
#include "criu/criu_tools.hpp"
#include "criu/proc.hpp"
#include "criu/runtime_support.hpp"
#include "criu/subprocess.hpp"
#include "signature/chunked_digest.hpp"
#include "signature/signed_manifest.hpp"
#include "stream/image_server.hpp"
#include "checkpoint/utf8.hpp"
#include <nucleus/checkpoint_version.h>

namespace nucleus::checkpoint {

namespace fs = std::filesystem;

namespace {

constexpr auto zombie_grace = std::chrono::seconds(5);

}  // namespace

namespace {

// The folder for one restore's log and pidfile; never the checkpoint folder, which must stay
// exactly as signed so that it verifies and restores again. By default a private folder under
// /run, removed when done unless a failure's log is kept there for the operator; or the caller's
// work dir, where the log stays.
struct RestoreWorkDir {
  PrivateRunDir run;
  int dir = -1;
  UniqueFd given_dir;
  fs::path given;
  bool keep_log = false;

  explicit RestoreWorkDir(const fs::path& work_dir) : given(work_dir) {
    if (!given.empty()) {
      given_dir = open_work_dir(given);
      dir = given_dir.get();
      return;
    }
    run = make_private_run_dir(run_dir, "restore", "restore work directory");
    dir = run.dir.get();
  }
  std::string path() const { return given.empty() ? run.path() : given.native(); }
  RestoreWorkDir(const RestoreWorkDir&) = delete;
  RestoreWorkDir& operator=(const RestoreWorkDir&) = delete;
  ~RestoreWorkDir() {
    ::unlinkat(dir, "restore.pid", 0);
    if (!given.empty() || keep_log) return;
    for (const char* f : {"restore.log", "stats-restore"}) ::unlinkat(dir, f, 0);
    ::unlinkat(run.parent.get(), run.name.c_str(), AT_REMOVEDIR);
  }
  // Keeps the folder after a failure if CRIU left a log in it; says where.
  std::string keep_failure_log() {
    struct stat st {};
    keep_log = ::fstatat(dir, "restore.log", &st, AT_SYMLINK_NOFOLLOW) == 0;
    return keep_log ? fmt::format("Full log: {}/restore.log", path()) : "CRIU wrote no log";
  }
};

pid_t read_restored_pid(int work_fd) {
  std::string text;
  try {
    text = read_file_at(work_fd, "restore.pid", 64, "CRIU pidfile");
  } catch (const Error& e) {
    throw Error(Status::criu, fmt::format("criu restore succeeded but its pidfile cannot be read: {}", e.what()));
  }
  const auto pid = CriuRuntime::parse_pidfile(text);
  if (!pid) throw Error(Status::criu, fmt::format("criu restore succeeded but its pidfile holds no PID: '{}'", text));
  return *pid;
}

// metadata.json as signed: read once, checked against the manifest, parsed from those bytes.
CheckpointMetadata verified_metadata(int dir_fd, const SignedManifest& manifest) {
  const ManifestFile* signed_file = manifest.find(CheckpointMetadata::file_name);
  if (!signed_file)
    throw Error(Status::integrity, fmt::format("the checkpoint has no signed {}", CheckpointMetadata::file_name));
  const std::string text =
      read_file_at(dir_fd, CheckpointMetadata::file_name, CheckpointMetadata::max_size, "checkpoint metadata");
  const std::uint64_t chunk = manifest.chunk_size();
  if (text.size() != signed_file->size)
    throw Error(Status::integrity, fmt::format("{} changed since it was signed", CheckpointMetadata::file_name));
  for (std::uint64_t i = 0; i < signed_file->chunks.size(); ++i)
    check_chunk(*signed_file, chunk, i, text.data() + i * chunk,
                static_cast<std::size_t>(std::min<std::uint64_t>(chunk, text.size() - i * chunk)));
  // The rest outside images/ (CRIU's dump log, the runtime's files) is verified whole now: CRIU
  // reads none of it, and a restore proceeds only if every file is as signed.
  for (const ManifestFile& file : manifest.files())
    if (!std::string_view(file.path).starts_with("images/") && file.path != CheckpointMetadata::file_name)
      verify_file(open_beneath(dir_fd, file.path, "checkpoint file").get(), file, chunk, hash_threads());
  return CheckpointMetadata::from_json(text);
}

// After a streamed restore: a chunk not as signed (met while CRIU read, or at pre-resume) is the
// failure to report, whatever CRIU said. Nothing of the tree ran: CRIU stopped, or the tree was
// killed at pre-resume, before it resumed.
void refuse_unverified(ImageServer& stream, const fs::path& dir) {
  if (stream.verified()) return;  // at pre-resume: the tree resumed as signed
  try {
    stream.rethrow_failure();
  } catch (const Error& e) {
    throw Error(e.status(), fmt::format("{} was refused while CRIU restored it: {}. Nothing of it ran", dir.native(),
                                        e.what()));
  }
}

bool restored_tree_runs(int work_fd) {
  try {
    const pid_t pid = read_restored_pid(work_fd);
    return process_exists(pid) && !process_is_zombie(pid);
  } catch (const Error&) {
    return false;
  }
}

// The checkpoint is the one the caller means: signed for its container, with its generation.
void require_expected(const CheckpointMetadata& m, const CriuOptions& o, const fs::path& dir) {
  if (!o.expected_container_id.empty() && m.container_id != o.expected_container_id)
    throw Error(Status::integrity, fmt::format("{} is a checkpoint of container '{}', not of '{}': refusing to restore "
                                               "another container's checkpoint in its place", dir.native(),
                                               to_valid_utf8(m.container_id), to_valid_utf8(o.expected_container_id)));
  for (const auto& expected : o.expected_annotations) {
    const std::string& name = expected.first;
    const std::string& value = expected.second;
    const auto found = std::find_if(m.annotations.begin(), m.annotations.end(), [&](const auto& a) { return a.first == name; });
    if (found == m.annotations.end() || found->second != value)
      throw Error(Status::integrity, fmt::format("{} carries annotation {}={}, not the {} expected: it is not the "
                                                 "checkpoint asked for (an older or another one)", dir.native(),
                                                 to_valid_utf8(name),
                                                 found == m.annotations.end() ? "(none)" : to_valid_utf8(found->second),
                                                 to_valid_utf8(value)));
  }
}

// A pidfd for the restored root, taken only if the process at that PID started after CRIU did:
// a root that exited at once and whose PID was reused is reported, never handed over.
RestoredTree track_restored(pid_t pid, std::uint64_t restore_started_ticks) {
  UniqueFd pidfd(open_pidfd(pid));
  if (!pidfd || read_process_status(pid).start_ticks + 1 < restore_started_ticks)
    throw Error(Status::criu, fmt::format("the restored tree's root, PID {}, exited as soon as it was restored", pid));
  return RestoredTree{pid, pidfd.release()};
}

}  // namespace

pid_t CriuRuntime::restore(const fs::path& dir) { return restore(dir, CriuOptions()); }

pid_t CriuRuntime::restore(const fs::path& dir, const CriuOptions& options) {
  return restore_tracked(dir, options, false).pid;
}

RestoredTree CriuRuntime::restore_tree(const fs::path& dir, const CriuOptions& options) {
  return restore_tracked(dir, options, true);
}

RestoredTree CriuRuntime::restore_tracked(const fs::path& dir, const CriuOptions& options, bool track,
                                          bool lazy_pages) {
  require_root("Restore");
  begin(CheckpointState::Restoring);
  const RestoredTree restored = guarded(*this, &CriuRuntime::finish, [&] {
    const UniqueFd dir_fd = open_dir(dir, "checkpoint directory");
    // Nothing of the checkpoint is parsed, and nothing of CRIU runs, before it verifies. Streamed:
    // the signature's manifest is authenticated first (no file read), the files CRIU does not read
    // are verified whole, and the images are checked chunk by chunk before CRIU reads them.
    // Otherwise (asked for, or an older signature format) the whole folder verifies first, and
    // nothing but root may be able to change it before CRIU reads it.
    // The signature is read (once) before the key is loaded: an unsigned or malformed folder is
    // refused as such, not as a missing key.
    // A layer of a pre-dump chain restores from its folders: CRIU's stream mode cannot read parent
    // images. The whole chain verifies first, every layer and the folder holding them private.
    const bool layer = has_parent_link(dir_fd.get());
    std::optional<SignedManifest> manifest;
    // Post-copy: CRIU's lazy-pages daemon reads the images too, so they are read from the folder.
    if (options.stream_images && !layer && !lazy_pages) {
      if (std::optional<ChunkedSignature> signature = SignedManifest::read_signature(dir_fd.get()))
        manifest = key_ ? SignedManifest::authenticate(dir_fd.get(), *key_, std::move(*signature))
                        : SignedManifest::authenticate(dir_fd.get(), KeyStore(), std::move(*signature));
    }
    std::vector<ChainLayer> chain;
    if (layer) {
      chain = verify_chain(dir_fd.get(), dir.native(), [this](int fd) { verify_whole(fd, key_); }, ChainUse::criu_reads);
    } else {
      require_private_tree(dir_fd.get(), manifest ? OpenWriters::allow : OpenWriters::refuse);
      if (!manifest) verify_whole(dir_fd.get(), key_);
    }
    const CheckpointMetadata metadata = layer      ? std::move(chain.front().metadata)
                                        : manifest ? verified_metadata(dir_fd.get(), *manifest)
                                                   : CheckpointMetadata::load(dir_fd.get());
    if (metadata.chain && metadata.chain->predump)
      throw Error(Status::invalid, fmt::format("{} is a pre-dump: it holds the memory of a tree that ran on, and cannot "
                                               "be restored alone; restore the final dump made on it (dump --parent)",
                                               dir.native()));
    if (metadata.record.post_copy_key.empty() == lazy_pages)
      throw Error(Status::invalid,
                  lazy_pages ? fmt::format("{} is not a post-copy checkpoint", dir.native())
                             : fmt::format("{} is a post-copy checkpoint: its memory went to the receiver of a "
                                           "migration and is not in the folder, so it cannot be restored",
                                           dir.native()));
    require_expected(metadata, options, dir);
    UniqueFd images;
    try {
      images = open_dir_at(dir_fd.get(), CheckpointDir::images_name, "checkpoint images directory");
    } catch (const Error& e) {
      throw Error(e.status(), fmt::format("Images directory not found in {}: {}", dir.native(), e.what()));
    }

    // What the dump recorded (its options, the container's rootfs, volumes and namespaces) applied
    // under the caller's options, and checked to be there before CRIU runs.
    const RestorePlan plan = plan_restore(metadata, options, child_fd(2));
    if (plan.options.detect_container && metadata.record.own_network_namespace && plan.options.network_lock != NetworkLock::skip)
      require_network_tools(plan.options.network_lock, "restore");
    std::vector<int> fds{images.get(), -1};
    fds.insert(fds.end(), plan.fds.begin(), plan.fds.end());
    RestoreWorkDir work(options.work_dir);
    fds[1] = work.dir;
    auto args = criu_restore_args(proc_fd_path(child_fd(0)), proc_fd_path(child_fd(1)), plan.options, plan.inherited);
    if (manifest) args.emplace_back("--stream");
    if (lazy_pages) args.emplace_back("--lazy-pages");
    // While the restored tree is still stopped (pre-resume), whatever CRIU did not read whole is
    // verified too: the tree runs only if the whole checkpoint is as signed.
    ImageServer* server = nullptr;
    // The restored tree as it stood at pre-resume, still stopped: a refused restore returns only
    // once it has died, so that nothing of it is left running when the caller hears of the refusal.
    std::optional<ProcessTree> stopped;
    const NotifyCallback notify = !manifest ? options.notify : [&](const NotifyEvent& event) {
      if (event.what == CriuNotification::pre_resume) {
        if (event.pid > 0) stopped = ProcessTree::open(event.pid);
        server->verify_rest();
      }
      return !options.notify || options.notify(event);
    };
    // Only pre-resume, unless the caller asked for notifications: each one is a round trip.
    const Notifications notifications(notify, manifest && !options.notify
                                                  ? std::vector<CriuNotification>{CriuNotification::pre_resume}
                                                  : std::vector<CriuNotification>{});
    notifications.add_args(args);
    const std::uint64_t started = boot_ticks_now();
    const auto deadline = std::chrono::steady_clock::now() + zombie_grace;
    for (;;) {
      ::unlinkat(work.dir, "restore.pid", 0);
      std::optional<ImageServer> stream;
      stopped.reset();
      if (manifest) {
        stream.emplace(images.get(), *manifest);
        server = &*stream;
        fds[0] = stream->dir();
      }
      const ProcessResult r =
          run_process(binary_fd_, "criu", args, fds, criu_environment(), options.timeout, ProcessGroup::caller,
                      notifications.watch());
      // CRIU writes the pidfile once the tree is restored; killed at its timeout after that, the
      // tree runs and the restore has succeeded.
      const bool succeeded =
          r.succeeded_by(r.status_lost ? log_tail(work.dir, "restore.log") : "", "Restore finished successfully") ||
          (r.timed_out && restored_tree_runs(work.dir));
      // Refused at pre-resume, CRIU kills what it restored: wait until that has died.
      if (stopped && (!succeeded || !stream->verified())) stopped->kill();
      // A byte not as signed stopped the restore before the tree ran, whatever CRIU reports.
      if (stream) refuse_unverified(*stream, dir);
      if (succeeded) {
        // CRIU lets the tree run whatever a post-resume script answers; the library killed it.
        if (const std::string refusal = notifications.refusal(); !refusal.empty())
          throw Error(Status::criu, fmt::format("{}; the restored tree was killed. The checkpoint is unchanged and can "
                                                "be restored again", refusal));
        const pid_t pid = read_restored_pid(work.dir);
        return track ? track_restored(pid, started) : RestoredTree{pid, -1};
      }
      // The failed restore's log stays for the operator; CRIU has already killed what it restored.
      const std::string errors = criu_errors(work.dir, "restore.log", r.output);
      const std::string refusal = notifications.refusal();
      const std::string hint = refusal.empty() ? criu_hint(errors) : refusal;
      const std::string failure =
          fmt::format("criu restore of {} (container {}, originally PID {}) failed ({}): {}{}. {}{}",
                      dir.native(), metadata.container_id, metadata.original_pid, r.describe(),
                      hint.empty() ? "" : hint + ". CRIU said: ", errors, work.keep_failure_log(),
                      r.timed_out ? ". What CRIU had restored dies with it; the checkpoint is unchanged and can be "
                                    "restored again" : "");
      const auto taken = taken_pid(failure);
      if (!taken || r.timed_out) throw CriuError(r.exit_code, criu_error_lines(errors), failure);
      if (process_exists(*taken) && !process_is_zombie(*taken))
        throw CriuError(r.exit_code, criu_error_lines(errors),
                        fmt::format("cannot restore: PID {} that the checkpoint needs is taken by {}; stop that process "
                                    "(or restore into a new PID namespace) and retry. {}",
                                    *taken, describe_process(*taken), failure));
      // The PID is held by an exited process not yet reaped: a zombie, or a zombie's process group
      // or session. Its parent (or PID 1) reaps it soon; retry until then, bounded.
      if (std::chrono::steady_clock::now() > deadline)
        throw CriuError(r.exit_code, criu_error_lines(errors),
                        fmt::format("cannot restore: PID {} that the checkpoint needs is still held by an exited "
                                    "process nobody has reaped (its parent must wait() for it). {}", *taken, failure));
      work.keep_log = false;  // retried: this attempt's log is not a failure to keep
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  finish(CheckpointState::Restored);
  return restored;
}

}  // namespace nucleus::checkpoint
