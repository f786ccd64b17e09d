#include <nucleus/checkpoint/criu_runtime.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdlib>
#include <algorithm>
#include <set>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/metadata.hpp>

#include "checkpoint/chain.hpp"
#include "fs/checkpoint_dir.hpp"
#include "fs/tree_walk.hpp"
#include "signature/chunked_signature.hpp"
#include "criu/criu_args.hpp"
#include "criu/criu_log.hpp"
#include "criu/criu_notify.hpp"
#include "fs/fs_util.hpp"
#include "signature/live_digests.hpp"
#include "container/container_scan.hpp"
#include "criu/criu_tools.hpp"
#include "criu/dump_guardian.hpp"
#include "criu/proc.hpp"
#include "criu/runtime_support.hpp"
#include "criu/subprocess.hpp"
#include "checkpoint/utf8.hpp"
#include <nucleus/checkpoint_version.h>

namespace nucleus::checkpoint {

namespace fs = std::filesystem;

namespace {

// A process's command line as metadata.json records it: valid UTF-8 (bytes that are not become
// U+FFFD), and at most 64 KiB of it, so the metadata always fits.
std::vector<std::string> recorded_command(const std::vector<std::string>& cmdline) {
  constexpr std::size_t budget = 64 * 1024;
  std::vector<std::string> command;
  std::size_t used = 0;
  for (const auto& arg : cmdline) {
    if (used + arg.size() > budget) {
      command.push_back(fmt::format("[{} more arguments left out]", cmdline.size() - command.size()));
      break;
    }
    used += arg.size();
    command.push_back(to_valid_utf8(arg));
  }
  return command;
}

// A failed dump's staging folder is removed, but its log is worth keeping: it moves beside the
// target as NAME.failed-dump.log. Returns where it is.
std::string keep_failed_log(const CheckpointDir& cd) {
  const std::string kept = cd.target_name() + ".failed-dump.log";
  if (::renameat(cd.dir(), "dump.log", cd.parent(), kept.c_str()) != 0) return "(CRIU wrote no log)";
  return (cd.target().parent_path() / kept).native();
}

constexpr const char* runtime_dir_name = "runtime";
constexpr std::size_t max_runtime_file = 1 << 20;

// A runtime file's name is one plain component: it cannot leave runtime/.
void require_plain_name(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 255 || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos || !is_valid_utf8(name))
    throw Error(Status::invalid, fmt::format("runtime file name '{}' must be one UTF-8 file name (no '/', not . or ..)",
                                             to_valid_utf8(name)));
}

// Annotations sorted and unique, runtime files named, both bounded: checked before CRIU runs.
void record_runtime_description(const ContainerInfo& c, CheckpointMetadata& m) {
  m.annotations = c.annotations;
  std::sort(m.annotations.begin(), m.annotations.end());
  for (std::size_t i = 0; i < m.annotations.size(); ++i) {
    const std::string& name = m.annotations[i].first;
    if (name.empty() || name.find('\0') != std::string::npos)
      throw Error(Status::invalid, "an annotation's name is empty or holds a NUL byte");
    if (i > 0 && m.annotations[i].first == m.annotations[i - 1].first)
      throw Error(Status::invalid, fmt::format("annotation '{}' is given twice", to_valid_utf8(m.annotations[i].first)));
  }
  std::set<std::string> names;
  for (const auto& [name, bytes] : c.runtime_files) {
    require_plain_name(name);
    if (!names.insert(name).second) throw Error(Status::invalid, fmt::format("runtime file '{}' is given twice", name));
    if (bytes.size() > max_runtime_file)
      throw Error(Status::invalid, fmt::format("runtime file '{}' is {} bytes, more than the {} allowed", name,
                                               bytes.size(), max_runtime_file));
  }
  m.runtime_files.assign(names.begin(), names.end());
}

void write_runtime_files(int dir_fd, const std::vector<std::pair<std::string, std::string>>& files) {
  if (files.empty()) return;
  const UniqueFd runtime = open_or_create_dir_at(dir_fd, runtime_dir_name, 0700, "runtime files folder");
  for (const auto& [name, bytes] : files) write_file_atomic_at(runtime.get(), name, bytes, 0600);
}

template <typename Enum>
std::string name_of(Enum value, std::initializer_list<const char*> names) {
  const auto i = static_cast<std::size_t>(value);
  return i < names.size() ? names.begin()[i] : "";
}

// The options restore must repeat, by CRIU's names.
void record_dump_options(const CriuOptions& o, DumpRecord& r) {
  r.shell_job = o.shell_job;
  r.tcp_established = o.tcp_established;
  r.tcp_close = o.tcp_close;
  r.ext_unix_sk = o.ext_unix_sk;
  r.file_locks = o.file_locks;
  r.evasive_devices = o.evasive_devices;
  r.manage_cgroups = name_of(o.manage_cgroups, {"", "soft", "full", "strict", "ignore"});
  r.network_lock = name_of(o.network_lock, {"", "iptables", "nftables", "skip"});
  r.file_validation = o.file_validation;
}

// The parent a chain layer is dumped on, with its own parents, verified whole before CRIU reads any
// of it: a pre-dump of the same container, in a folder beside the new checkpoint's.
std::vector<ChainLayer> verified_parents(const CheckpointDir& cd, const fs::path& parent, const std::string& container_id,
                                         const std::function<void(int)>& verify_layer) {
  const std::string name = parent.filename().native();
  const auto beside = [&] {
    return same_file(open_dir(parent.parent_path().empty() ? "." : parent.parent_path(), "parent checkpoint's folder")
                         .get(),
                     cd.parent());
  };
  if (!is_plain_name(name) || !beside())
    throw Error(Status::invalid, fmt::format("parent checkpoint {} must be a folder beside the new checkpoint {} (in "
                                             "the same folder), as CRIU links a layer to its parent as {}",
                                             parent.native(), cd.target().native(), parent_link_target("NAME")));
  std::vector<ChainLayer> layers =
      verify_chain(open_dir_at(cd.parent(), name, "parent checkpoint").get(), parent.native(), verify_layer,
                   ChainUse::criu_reads);
  const CheckpointMetadata& m = layers.front().metadata;
  if (!m.chain || !m.chain->predump)
    throw Error(Status::invalid, fmt::format("parent checkpoint {} is not a pre-dump: a layer is dumped on a pre-dump "
                                             "(nc_predump, nucleus-checkpoint predump)", parent.native()));
  if (m.container_id != container_id)
    throw Error(Status::invalid, fmt::format("parent checkpoint {} is a pre-dump of container '{}', not of '{}'",
                                             parent.native(), to_valid_utf8(m.container_id), to_valid_utf8(container_id)));
  return layers;
}

// CRIU tracks memory through the kernel's soft-dirty bits; without them its pre-dump aborts and a
// dump with --track-mem is refused, so a chain cannot be made at all.
void require_memory_tracking(int binary_fd) {
  if (const std::optional<std::string> missing = memory_tracking_missing(binary_fd))
    throw Error(Status::criu, fmt::format("{}, so CRIU can neither pre-dump nor dump on a parent: make a full dump "
                                          "instead",
                                          *missing));
}

}  // namespace

std::optional<std::string> memory_tracking_missing(int criu_binary_fd) {
  const ProcessResult r =
      run_process(criu_binary_fd, "criu", {"check", "--feature", "mem_dirty_track"}, {}, criu_environment());
  if (r.succeeded()) return std::nullopt;
  const std::vector<std::string> said = criu_error_lines(r.output);
  return fmt::format("this kernel does not track which memory a process changes (it needs CONFIG_MEM_SOFT_DIRTY; "
                     "criu check --feature mem_dirty_track said: {})",
                     said.empty() ? r.describe() : said.front());
}

void CriuRuntime::predump(const ContainerInfo& container, const fs::path& dir, const CriuOptions& options,
                          SignatureFormat format) {
  dump(container, dir, options, format, true);
}

void CriuRuntime::checkpoint(const ContainerInfo& container, const fs::path& dir, bool leave_running) {
  CriuOptions options;
  options.leave_running = leave_running;
  checkpoint(container, dir, options);
}

void CriuRuntime::checkpoint(const ContainerInfo& container, const fs::path& dir, const CriuOptions& options) {
  checkpoint(container, dir, options, SignatureFormat::manifest);
}

void CriuRuntime::checkpoint(const ContainerInfo& container, const fs::path& dir, const CriuOptions& options,
                             SignatureFormat format) {
  dump(container, dir, options, format, false);
}

void CriuRuntime::dump(const ContainerInfo& container, const fs::path& dir, const CriuOptions& options,
                       SignatureFormat format, bool predump) {
  dump(container, dir, options, format, predump, HandOver{});
}

void CriuRuntime::dump(const ContainerInfo& container, const fs::path& dir, const CriuOptions& options,
                       SignatureFormat format, bool predump, const HandOver& hand_over) {
  require_root(predump ? "Pre-dump" : "Checkpoint");
  // Post-copy: CRIU leaves the memory out and serves it once the images are written, so the
  // checkpoint is signed at its post-dump notification and its log cannot be part of it.
  const bool lazy = hand_over.lazy_pages_socket >= 0;
  if (lazy && (predump || !options.parent.empty() || options.leave_running || format == SignatureFormat::seed))
    throw Error(Status::invalid, "a post-copy dump is a migration's final dump: no pre-dump, parent, leave-running or "
                                 "seed format");
  if (format != SignatureFormat::seed && format != SignatureFormat::chunked && format != SignatureFormat::manifest)
    throw Error(Status::invalid, fmt::format("unknown signature format {}", static_cast<int>(format)));
  require_signable(format, options.signing);
  const bool layer = predump || !options.parent.empty();
  if (layer && format == SignatureFormat::seed)
    throw Error(Status::invalid, "a pre-dump or a dump on a parent is signed in the chunked or manifest format: the "
                                 "seed format cannot cover CRIU's link to the parent");
  if (options.auto_dedup && options.parent.empty())
    throw Error(Status::invalid, "auto-dedup needs a parent checkpoint: it removes from the parents what the new layer "
                                 "holds");
  const bool running = predump || options.leave_running;  // CRIU's pre-dump lets the tree run on
  if (container.id.empty()) throw Error(Status::invalid, "container id is empty");
  if (container.pid <= 0) throw Error(Status::invalid, fmt::format("PID {} is not a process", container.pid));
  // The root held by a pidfd from here on, checked to be the process meant: no signal of the
  // library's can reach a process that took one of the tree's PIDs later.
  const HeldProcess root = open_process(container.pid, container.start_ticks);
  const ProcessStatus& process = root.status;
  // Built, and checked, before CRIU runs: a dump must never end unsignable.
  CheckpointMetadata metadata;
  metadata.container_id = container.id;
  metadata.container_name = container.name.empty() ? container.id : container.name;
  metadata.original_pid = static_cast<std::uint32_t>(container.pid);
  metadata.command = container.command.empty() ? recorded_command(process.cmdline) : container.command;
  metadata.version = NC_VERSION_STRING;
  metadata.using_gvisor = container.using_gvisor;
  metadata.rootless = container.rootless;
  record_runtime_description(container, metadata);
  // What lies outside a container is found, declared to CRIU and recorded for restore before
  // anything is frozen; so is what CRIU would need and not find.
  CriuOptions effective = options;
  // "DIR/" names DIR: its name is what CRIU's link and the metadata record.
  if (!effective.parent.has_filename()) effective.parent = effective.parent.parent_path();
  metadata.has_record = true;
  if (options.detect_container) {
    ContainerScan scan = scan_container(container.pid, process_tree(container.pid), options.external);
    metadata.record = std::move(scan.found);
    effective.external.insert(effective.external.end(), scan.externals.begin(), scan.externals.end());
    if (metadata.record.own_network_namespace && options.network_lock != NetworkLock::skip)
      require_network_tools(options.network_lock, "dump");
    // CRIU would lock a pod's network namespace too, and only a successful restore unlocks it:
    // the pod's other members would be cut off meanwhile. Its connections are the pod's, not
    // the tree's, unless the caller dumps them (tcp-established), which needs the lock.
    const bool shares_net = std::any_of(metadata.record.namespaces.begin(), metadata.record.namespaces.end(),
                                        [](const ExternalNamespace& ns) { return ns.type == "net"; });
    if (shares_net && options.network_lock == NetworkLock::criu_default && !options.tcp_established)
      effective.network_lock = NetworkLock::skip;
  }
  record_dump_options(effective, metadata.record);
  metadata.record.post_copy_key = hand_over.post_copy_key;
  metadata.to_json();
  // The signer's key alone (an Ed25519 dump makes no HMAC key), loaded before CRIU touches the
  // tree: a key problem loses nothing. The seed format is HMAC-only (require_signable).
  const bool by_ed25519 = options.signing == SignatureKind::ed25519;
  const std::optional<Ed25519SecretKey> ed25519 = by_ed25519 ? std::optional(ed25519_signing_key()) : std::nullopt;
  const std::optional<HmacKey> hmac = by_ed25519 ? std::nullopt : std::optional(signing_key());
  HmacTree::max_total_bytes();        // likewise a malformed NUCLEUS_CHECKPOINT_MAX_BYTES
  begin(CheckpointState::Dumping);
  guarded(*this, &CriuRuntime::finish, [&] {
    CheckpointDir cd = CheckpointDir::prepare(dir);
    const std::vector<ChainLayer> parents =
        options.parent.empty() ? std::vector<ChainLayer>()
                               : verified_parents(cd, effective.parent, container.id,
                                                  [this](int fd) { verify_whole(fd, key_); });
    if (layer) require_memory_tracking(binary_fd_);  // after the parent is found good: its errors come first
    if (layer)
      metadata.chain = ChainRecord{predump, effective.parent.filename().native(),
                                   parents.empty() ? std::string() : parents.front().signature_sha256};
    // CRIU's log goes into the checkpoint, and so is signed with it, unless a work dir is given (or
    // the dump is post-copy: CRIU logs on after the signature).
    const std::optional<PrivateRunDir> lazy_work =
        lazy && options.work_dir.empty() ? std::optional(make_private_run_dir(run_dir, "dump", "dump work directory"))
                                         : std::nullopt;
    const UniqueFd work = options.work_dir.empty() ? UniqueFd() : open_work_dir(options.work_dir);
    const int work_fd = lazy_work ? lazy_work->dir.get() : work ? work.get() : cd.dir();
    auto args = (predump ? criu_predump_args : criu_dump_args)(container.pid, proc_fd_path(child_fd(0)),
                                                               proc_fd_path(child_fd(1)), effective);
    std::vector<int> criu_fds{cd.images(), work_fd};
    if (lazy) {
      args.insert(args.end(), {"--lazy-pages", "--ps-socket", std::to_string(child_fd(2))});
      criu_fds.push_back(hand_over.lazy_pages_socket);
    }
    // With the tree left running, its images are hashed as CRIU writes them, on CPU CRIU leaves
    // idle, and signing hashes only what is left. That relies on CRIU writing each image once,
    // front to back. Without leave_running the tree dies once this returns, so there the
    // signature is computed from the finished files alone (on every core): a wrong one would lose
    // the process.
    // Either way, chunks that equal one already hashed (pages a forked child shares with its
    // parent, which CRIU writes for each) are compared instead of hashed again.
    TwinChunks twins;
    std::optional<LiveDigests> live;
    if (format != SignatureFormat::seed && running)
      live.emplace(cd.images(), ChunkedSignature::default_chunk_size, &twins);
    // In a process group of its own: killed at its timeout, CRIU can leave a stopped helper of
    // its own behind, which goes with it. (Not for restores: with shell_job, CRIU puts the
    // restored tree into its own process group.)
    // Should the caller die from here until the tree is dealt with, the guardian resumes the tree.
    const DumpGuardian guardian(container.pid, root.pidfd.get(), cd);
    HeldTree held(container.pid, root.pidfd.get(), guardian, ed25519 ? TreeKey(*ed25519) : TreeKey(*hmac), lazy);
    // The checkpoint signed and moved into place, the tree stopped.
    const auto seal = [&](StartedDigests* started) {
      metadata.checkpoint_at = static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
      make_tree_private(cd.dir());  // CRIU writes its images 0644; they hold process memory
      write_runtime_files(cd.dir(), container.runtime_files);
      // Auto-dedup punched holes in the parents (verified above): each is re-signed as this
      // layer is, and rebound.
      if (options.auto_dedup)
        metadata.chain->parent_signature_sha256 = resign_parents(parents, [&](int fd) {
          if (ed25519) HmacTree::sign_as(fd, *ed25519, HmacTree::format_of(fd));
          else HmacTree::sign_as(fd, *hmac, HmacTree::format_of(fd));
        });
      metadata.save(cd.dir());
      if (format == SignatureFormat::seed) HmacTree::sign_as(cd.dir(), *hmac, SignatureFormat::seed);
      else if (ed25519) sign_chunked(cd.dir(), *ed25519, {}, started, &twins, format);
      else sign_chunked(cd.dir(), *hmac, {}, started, &twins, format);
      cd.commit();
    };
    // Post-copy: sealed and handed over while CRIU waits at post-dump; a failure there is answered
    // "fail", so CRIU resumes the tree, and is the error reported.
    bool handed = false;
    std::exception_ptr hand_over_failure;
    // CRIU serves the pages even when told "fail" at post-dump: `refused` ends that wait.
    const NotifyCallback lazy_notify = [&](const NotifyEvent& event) {
      if (event.what != CriuNotification::post_dump) return !options.notify || options.notify(event);
      try {
        if (options.notify && !options.notify(event))
          throw Error(Status::criu, "the caller's notification callback refused post-dump");
        seal(nullptr);
        handed = true;
        hand_over.give(held);
        return true;
      } catch (...) {
        hand_over_failure = std::current_exception();
        hand_over.refused();
        return false;
      }
    };
    const Notifications notifications(lazy ? lazy_notify : options.notify,
                                      lazy && !options.notify ? std::vector{CriuNotification::post_dump}
                                                              : std::vector<CriuNotification>{});
    notifications.add_args(args);
    ProcessWatch watch = notifications.watch() ? *notifications.watch() : ProcessWatch{};
    UniqueFd criu_pidfd;
    watch.on_start = [&](pid_t criu) {
      guardian.criu_started(criu);
      if (lazy) {
        criu_pidfd.reset(open_pidfd(criu));
        held.criu_started(criu_pidfd.get());
      }
    };
    const ProcessResult r = run_process(binary_fd_, "criu", args, criu_fds, criu_environment(), options.timeout,
                                        ProcessGroup::own, &watch);
    guardian.criu_ended();
    StartedDigests started = live ? live->stop() : StartedDigests();
    const ProcessTree tree = ProcessTree::open(container.pid, root.pidfd.get());
    const std::string log_path = lazy_work ? lazy_work->path() + "/dump.log"
                                 : work    ? (options.work_dir / "dump.log").native()
                                           : std::string();
    if (lazy) {
      if (hand_over_failure) {
        tree.signal(SIGCONT);  // CRIU resumes the tree when told "fail"; killed, it may have left it stopped
        std::rethrow_exception(hand_over_failure);
      }
    }
    const bool criu_succeeded = r.succeeded_by(r.status_lost ? log_tail(work_fd, "dump.log") : "",
                                               predump ? "Pre-dumping finished successfully" : "Dumping finished successfully");
    // Post-copy, once handed over: whatever CRIU says, the receiver's word decides (`served`).
    if (handed) {
      // A log of CRIU's success says nothing of what failed beside it: it goes either way.
      const auto drop_log = [&] {
        if (!criu_succeeded) return;
        for (const char* f : {"dump.log", "stats-dump"}) ::unlinkat(work_fd, f, 0);
        if (lazy_work) ::unlinkat(lazy_work->parent.get(), lazy_work->name.c_str(), AT_REMOVEDIR);
      };
      try {
        hand_over.served(held);
      } catch (...) {
        drop_log();
        if (!held.may_run_elsewhere()) tree.signal(SIGCONT);
        throw;
      }
      drop_log();
    } else if (!criu_succeeded) {
      // CRIU resumes the tree when it fails; killed, it may have left it stopped: resume it.
      tree.signal(SIGCONT);
      const std::string errors = criu_errors(work_fd, "dump.log", r.output);
      const std::string refusal = notifications.refusal();
      const std::string hint = refusal.empty() ? criu_hint(errors) : refusal;
      throw CriuError(r.exit_code, criu_error_lines(errors), fmt::format("criu {} of PID {} ({}) failed ({}): {}{}. Full log: {}{}", predump ? "pre-dump" : "dump", container.pid,
                                            process.comm, r.describe(), hint.empty() ? "" : hint + ". CRIU said: ", errors,
                                            log_path.empty() ? keep_failed_log(cd) : log_path,
                                            r.timed_out ? ". The tree runs on: CRIU's parasite code removes itself "
                                                          "when CRIU goes away" : ""));
    }
    // The tree is now stopped (or running, with leave_running); it ends only once the checkpoint
    // is safely in place, and runs on if anything fails first.
    if (!handed) {
      try {
        seal(&started);
        if (hand_over.give) hand_over.give(held);  // a migration: the tree ends only once it runs elsewhere
      } catch (...) {
        if (!running && !held.may_run_elsewhere()) tree.signal(SIGCONT);
        throw;
      }
    }
    if (!running) tree.kill();
  });
  finish(CheckpointState::Dumped);
}

}  // namespace nucleus::checkpoint
