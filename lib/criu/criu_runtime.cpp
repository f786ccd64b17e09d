#include <nucleus/checkpoint/criu_runtime.hpp>

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/metadata.hpp>

#include "fs/checkpoint_dir.hpp"
#include "signature/chunked_signature.hpp"
#include "criu/criu_args.hpp"
#include "criu/criu_log.hpp"
#include "fs/fs_util.hpp"
#include "signature/live_digests.hpp"
#include "criu/proc.hpp"
#include "criu/subprocess.hpp"
#include "checkpoint/utf8.hpp"
#include <nucleus/checkpoint_version.h>

namespace nucleus::checkpoint {

namespace fs = std::filesystem;

namespace {

// CRIU's first version that understands the [vvar_vclock] mapping of newer kernels.
const CriuVersion first_vvar_vclock_version{4, 1, 0, "4.1"};
constexpr const char* restore_run_dir = "/run/nucleus-checkpoint";
constexpr auto zombie_grace = std::chrono::seconds(5);

// CRIU runs with a fixed environment: nothing of the caller's PATH or LD_* reaches it.
// CRIU_FAULT=130 is CRIU's switch to step the parasite's sigreturn with PTRACE_SYSCALL instead of
// a hardware breakpoint: under hypervisors that do not forward debug exceptions (this project's
// machines among them) a breakpoint never fires and CRIU waits forever. It costs microseconds.
std::vector<std::string> criu_environment() {
  return {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", "CRIU_FAULT=130"};
}

std::string proc_fd_path(int fd) { return fmt::format("/proc/self/fd/{}", fd); }

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
// CRIU, as root, writes its log (and pidfile) there, following symlinks: the folder must be ours.
UniqueFd open_work_dir(const fs::path& path) {
  UniqueFd fd = open_or_create_dir(path, 0700, "CRIU work directory");
  require_private_dir(fd.get(), path, "CRIU work directory");
  return fd;
}

std::string keep_failed_log(const CheckpointDir& cd) {
  const std::string kept = cd.target_name() + ".failed-dump.log";
  if (::renameat(cd.dir(), "dump.log", cd.parent(), kept.c_str()) != 0) return "(CRIU wrote no log)";
  return (cd.target().parent_path() / kept).native();
}

void require_root(std::string_view operation) {
  if (geteuid() != 0)
    throw Error(Status::permission, fmt::format("{} requires root (CRIU needs CAP_SYS_ADMIN and CAP_SYS_PTRACE); "
                                                "run it as root", operation));
}

}  // namespace

const std::vector<fs::path>& CriuRuntime::trusted_paths() {
  static const std::vector<fs::path> paths{"/usr/sbin/criu", "/usr/bin/criu", "/usr/local/sbin/criu"};
  return paths;
}

namespace {

// The checks of validate_binary, on what an open descriptor refers to; and every folder above
// it must be writable only by root or the caller (or sticky), so nobody else could have swapped it.
void check_binary(int fd, const fs::path& path) {
  const struct stat st = stat_fd(fd, "criu binary");
  if (!S_ISREG(st.st_mode)) throw Error(Status::invalid, fmt::format("criu binary {} is not a regular file", path.native()));
  if ((st.st_mode & 022) != 0)
    throw Error(Status::permission, fmt::format("criu binary {} is writable by group/others (mode {:o}), refusing to "
                                                "execute", path.native(), st.st_mode & 07777));
  if ((st.st_mode & 0111) == 0)
    throw Error(Status::permission, fmt::format("criu binary {} is not executable", path.native()));
  if (st.st_uid != 0 && st.st_uid != geteuid())
    throw Error(Status::permission, fmt::format("criu binary {} is owned by UID {} (expected root or euid {}), refusing "
                                                "to execute", path.native(), st.st_uid, geteuid()));
  std::error_code ec;
  const fs::path real = fs::read_symlink(fmt::format("/proc/self/fd/{}", fd), ec);
  for (fs::path dir = real.parent_path(); !ec && !dir.empty(); dir = dir.parent_path()) {
    struct stat ds {};
    if (::lstat(dir.c_str(), &ds) != 0) break;
    // A sticky folder such as /tmp is fine: others cannot rename or remove what they do not own.
    if ((ds.st_uid != 0 && ds.st_uid != geteuid()) || ((ds.st_mode & 022) != 0 && (ds.st_mode & S_ISVTX) == 0))
      throw Error(Status::permission, fmt::format("criu binary {} is in {}, which others can change (owner {}, mode {:o}); "
                                                  "refusing to execute it", path.native(), dir.native(), ds.st_uid,
                                                  ds.st_mode & 07777));
    if (dir == dir.root_path()) break;
  }
}

UniqueFd open_binary(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_PATH | O_CLOEXEC));
  if (!fd) throw system_error(status_of_errno(errno), errno, fmt::format("Cannot stat criu binary {}", path.native()));
  check_binary(fd.get(), path);
  return fd;
}

}  // namespace

void CriuRuntime::validate_binary(const fs::path& path) { open_binary(path); }

namespace {

fs::path find_binary() {
  for (const auto& p : CriuRuntime::trusted_paths()) {
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0) return p;
  }
  // As root, PATH is never searched: the environment must not choose what runs as root.
  if (geteuid() == 0)
    throw Error(Status::not_found, "CRIU binary not found in trusted system paths (/usr/sbin, /usr/bin, "
                                   "/usr/local/sbin); install CRIU >= 4.1 (scripts/install-criu.sh) or give its path");
  if (const char* path_var = std::getenv("PATH")) {
    std::stringstream dirs(path_var);
    for (std::string dir; std::getline(dirs, dir, ':');) {
      if (dir.empty() || dir[0] != '/') continue;
      const fs::path candidate = fs::path(dir) / "criu";
      struct stat st {};
      if (::stat(candidate.c_str(), &st) == 0) return candidate;
    }
  }
  throw Error(Status::not_found, "CRIU binary not found. Install criu (>= 4.1) to use checkpoint/restore.");
}

bool kernel_has_vvar_vclock() {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);)
    if (line.ends_with("[vvar_vclock]")) return true;
  return false;
}

}  // namespace

std::optional<CriuVersion> CriuRuntime::parse_version(std::string_view output) {
  const auto at = output.find("Version:");
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view rest = output.substr(at + 8);
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  rest = rest.substr(0, rest.find_first_of("\r\n"));
  CriuVersion v;
  v.text = std::string(rest);
  int* parts[] = {&v.major, &v.minor, &v.patch};
  const char* p = rest.data();
  const char* end = rest.data() + rest.size();
  for (int i = 0; i < 3 && p < end; ++i) {
    const auto [next, ec] = std::from_chars(p, end, *parts[i]);
    if (ec != std::errc()) {
      if (i < 2) return std::nullopt;  // major and minor are required
      break;
    }
    p = next;
    if (p < end && *p == '.') ++p; else break;
  }
  return v;
}

std::optional<pid_t> CriuRuntime::parse_pidfile(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return std::nullopt;
  const auto last = text.find_last_not_of(" \t\r\n");
  const std::string_view digits = text.substr(first, last - first + 1);
  pid_t pid = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
  if (ec != std::errc() || end != digits.data() + digits.size() || pid <= 0 || digits.front() == '+')
    return std::nullopt;
  return pid;
}

CriuRuntime::CriuRuntime() : CriuRuntime(find_binary()) {}

CriuRuntime::CriuRuntime(fs::path criu_binary) : binary_(std::move(criu_binary)) {
  // Checked once, then always run through this descriptor: the path is never looked up again.
  UniqueFd binary = open_binary(binary_);
  const ProcessResult r = run_process(binary.get(), "criu", {"--version"}, {}, criu_environment());
  if (!r.succeeded_by(r.output, "Version:"))
    throw Error(Status::criu, fmt::format("{} --version failed ({}): {}", binary_.native(), r.describe(), r.output));
  auto version = parse_version(r.output);
  if (!version)
    throw Error(Status::criu, fmt::format("{} --version printed no version: {}", binary_.native(), r.output));
  version_ = std::move(*version);
  if (version_ < first_vvar_vclock_version && kernel_has_vvar_vclock())
    throw Error(Status::criu,
                fmt::format("CRIU {} at {} is too old for this kernel: the kernel maps [vvar_vclock], which CRIU "
                            "understands from 4.1 on, so every dump would fail. Install CRIU >= 4.1 "
                            "(scripts/install-criu.sh builds one into /usr/local/sbin) and remove or pass past "
                            "this one", version_.text, binary_.native()));
  binary_fd_ = binary.release();
}

void CriuRuntime::check() const {
  require_root("criu check");
  const ProcessResult r = run_process(binary_fd_, "criu", {"check"}, {}, criu_environment());
  if (!r.succeeded_by(r.output, "Looks good") || r.output.find("Looks good") == std::string::npos)
    throw Error(Status::criu, fmt::format("criu check with {} (CRIU {}) failed ({}): {}", binary_.native(), version_.text,
                                          r.describe(), r.output));
}

CriuRuntime::~CriuRuntime() {
  if (binary_fd_ >= 0) ::close(binary_fd_);
}

CheckpointState CriuRuntime::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

void CriuRuntime::set_key(HmacKey key) { key_ = std::move(key); }

HmacKey CriuRuntime::signing_key() const {
  return key_ ? HmacKey::from_bytes(key_->bytes()) : KeyStore().load_or_create();
}

CheckpointState CriuRuntime::begin(CheckpointState target) {
  std::lock_guard lock(mutex_);
  // A finished dump or restore is final for that operation; the next one starts from None.
  if (state_ == CheckpointState::Dumped || state_ == CheckpointState::Restored) state_ = CheckpointState::None;
  state_ = transition(state_, target);
  return state_;
}

void CriuRuntime::finish(CheckpointState target) {
  std::lock_guard lock(mutex_);
  state_ = transition(state_, target);
}

namespace {

// Runs `body`; whatever it throws, the state first returns to None (the seed left it stuck).
template <typename Body>
auto guarded(CriuRuntime& rt, void (CriuRuntime::*finish)(CheckpointState), Body&& body) {
  try {
    return body();
  } catch (...) {
    (rt.*finish)(CheckpointState::None);
    throw;
  }
}

}  // namespace

void CriuRuntime::checkpoint(const ContainerInfo& container, const fs::path& dir, bool leave_running) {
  CriuOptions options;
  options.leave_running = leave_running;
  checkpoint(container, dir, options);
}

void CriuRuntime::checkpoint(const ContainerInfo& container, const fs::path& dir, const CriuOptions& options) {
  checkpoint(container, dir, options, SignatureFormat::chunked);
}

void CriuRuntime::checkpoint(const ContainerInfo& container, const fs::path& dir, const CriuOptions& options,
                             SignatureFormat format) {
  require_root("Checkpoint");
  if (format != SignatureFormat::seed && format != SignatureFormat::chunked)
    throw Error(Status::invalid, fmt::format("unknown signature format {}", static_cast<int>(format)));
  if (container.id.empty()) throw Error(Status::invalid, "container id is empty");
  if (container.pid <= 0) throw Error(Status::invalid, fmt::format("PID {} is not a process", container.pid));
  const ProcessStatus process = read_process_status(container.pid, container.start_ticks);
  // Built, and checked, before CRIU runs: a dump must never end unsignable.
  CheckpointMetadata metadata;
  metadata.container_id = container.id;
  metadata.container_name = container.name.empty() ? container.id : container.name;
  metadata.original_pid = static_cast<std::uint32_t>(container.pid);
  metadata.command = container.command.empty() ? recorded_command(process.cmdline) : container.command;
  metadata.version = NC_VERSION_STRING;
  metadata.using_gvisor = container.using_gvisor;
  metadata.rootless = container.rootless;
  metadata.to_json();
  const HmacKey key = signing_key();  // before CRIU touches the tree: a key problem loses nothing
  begin(CheckpointState::Dumping);
  guarded(*this, &CriuRuntime::finish, [&] {
    CheckpointDir cd = CheckpointDir::prepare(dir);
    // CRIU's log goes into the checkpoint, and so is signed with it, unless a work dir is given.
    const UniqueFd work = options.work_dir.empty() ? UniqueFd() : open_work_dir(options.work_dir);
    const int work_fd = work ? work.get() : cd.dir();
    const auto args = criu_dump_args(container.pid, proc_fd_path(child_fd(0)), proc_fd_path(child_fd(1)), options);
    // With the tree left running, its images are hashed as CRIU writes them, on CPU CRIU leaves
    // idle, and signing hashes only what is left. That relies on CRIU writing each image once,
    // front to back. Without leave_running the tree dies once this returns, so there the
    // signature is computed from the finished files alone (on every core): a wrong one would lose
    // the process.
    // Either way, chunks that equal one already hashed (pages a forked child shares with its
    // parent, which CRIU writes for each) are compared instead of hashed again.
    TwinChunks twins;
    std::optional<LiveDigests> live;
    if (format == SignatureFormat::chunked && options.leave_running)
      live.emplace(cd.images(), ChunkedSignature::default_chunk_size, &twins);
    // In a process group of its own: killed at its timeout, CRIU can leave a stopped helper of
    // its own behind, which goes with it. (Not for restores: with shell_job, CRIU puts the
    // restored tree into its own process group.)
    const ProcessResult r = run_process(binary_fd_, "criu", args, {cd.images(), work_fd}, criu_environment(),
                                        options.timeout, ProcessGroup::own);
    StartedDigests started = live ? live->stop() : StartedDigests();
    if (!r.succeeded_by(r.status_lost ? log_tail(work_fd, "dump.log") : "", "Dumping finished successfully")) {
      // CRIU resumes the tree when it fails; killed, it may have left it stopped: resume it.
      signal_tree(process_tree(container.pid), SIGCONT);
      const std::string errors = criu_errors(work_fd, "dump.log", r.output);
      throw Error(Status::criu, fmt::format("criu dump of PID {} ({}) failed ({}): {}. Full log: {}{}", container.pid,
                                            process.comm, r.describe(), errors,
                                            work ? (options.work_dir / "dump.log").native() : keep_failed_log(cd),
                                            r.timed_out ? ". The tree runs on: CRIU's parasite code removes itself "
                                                          "when CRIU goes away" : ""));
    }
    // The tree is now stopped (or running, with leave_running); it ends only once the checkpoint
    // is safely in place, and runs on if anything fails first.
    const std::vector<pid_t> tree = process_tree(container.pid);
    try {
      metadata.checkpoint_at = static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
      make_tree_private(cd.dir());  // CRIU writes its images 0644; they hold process memory
      metadata.save(cd.dir());
      if (format == SignatureFormat::chunked) sign_chunked(cd.dir(), key, {}, &started, &twins);
      else HmacTree::sign_as(cd.dir(), key, SignatureFormat::seed);
      cd.commit();
    } catch (...) {
      if (!options.leave_running) signal_tree(tree, SIGCONT);
      throw;
    }
    if (!options.leave_running) kill_tree(tree);
  });
  finish(CheckpointState::Dumped);
}

namespace {

// The folder for one restore's log and pidfile; never the checkpoint folder, which must stay
// exactly as signed so that it verifies and restores again. By default a private folder under
// /run, removed when done unless a failure's log is kept there for the operator; or the caller's
// work dir, where the log stays.
struct RestoreWorkDir {
  UniqueFd parent;
  UniqueFd dir;
  std::string name;
  fs::path given;
  bool keep_log = false;

  explicit RestoreWorkDir(const fs::path& work_dir) : given(work_dir) {
    if (!given.empty()) {
      dir = open_work_dir(given);
      return;
    }
    parent = open_or_create_dir(restore_run_dir, 0700, "restore work directory");
    const struct stat st = stat_fd(parent.get(), restore_run_dir);
    if (st.st_uid != 0 || (st.st_mode & 077) != 0)
      throw Error(Status::permission, fmt::format("{} must be owned by root with mode 0700", restore_run_dir));
    name = fmt::format("restore-{:08x}", randombytes_random());
    if (::mkdirat(parent.get(), name.c_str(), 0700) != 0)
      throw system_error(status_of_errno(errno), errno, fmt::format("cannot create {}/{}", restore_run_dir, name));
    dir = open_dir_at(parent.get(), name, "restore work directory");
  }
  std::string path() const { return given.empty() ? fmt::format("{}/{}", restore_run_dir, name) : given.native(); }
  RestoreWorkDir(const RestoreWorkDir&) = delete;
  RestoreWorkDir& operator=(const RestoreWorkDir&) = delete;
  ~RestoreWorkDir() {
    ::unlinkat(dir.get(), "restore.pid", 0);
    if (!given.empty() || keep_log) return;
    for (const char* f : {"restore.log", "stats-restore"}) ::unlinkat(dir.get(), f, 0);
    ::unlinkat(parent.get(), name.c_str(), AT_REMOVEDIR);
  }
  // Keeps the folder after a failure if CRIU left a log in it; says where.
  std::string keep_failure_log() {
    struct stat st {};
    keep_log = ::fstatat(dir.get(), "restore.log", &st, AT_SYMLINK_NOFOLLOW) == 0;
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

bool restored_tree_runs(int work_fd) {
  try {
    const pid_t pid = read_restored_pid(work_fd);
    return process_exists(pid) && !process_is_zombie(pid);
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

pid_t CriuRuntime::restore(const fs::path& dir) { return restore(dir, CriuOptions()); }

pid_t CriuRuntime::restore(const fs::path& dir, const CriuOptions& options) {
  require_root("Restore");
  begin(CheckpointState::Restoring);
  const pid_t pid = guarded(*this, &CriuRuntime::finish, [&] {
    const UniqueFd dir_fd = open_dir(dir, "checkpoint directory");
    // Nothing but root may be able to change what is verified, or it could change before CRIU
    // reads it; nothing of the checkpoint is parsed, and nothing of CRIU runs, before it verifies.
    require_private_tree(dir_fd.get());
    if (key_) HmacTree::verify(dir_fd.get(), *key_);
    else HmacTree::verify(dir_fd.get(), KeyStore());
    const CheckpointMetadata metadata = CheckpointMetadata::load(dir_fd.get());
    UniqueFd images;
    try {
      images = open_dir_at(dir_fd.get(), CheckpointDir::images_name, "checkpoint images directory");
    } catch (const Error& e) {
      throw Error(e.status(), fmt::format("Images directory not found in {}: {}", dir.native(), e.what()));
    }

    RestoreWorkDir work(options.work_dir);
    const auto args = criu_restore_args(proc_fd_path(child_fd(0)), proc_fd_path(child_fd(1)), options);
    const auto deadline = std::chrono::steady_clock::now() + zombie_grace;
    for (;;) {
      ::unlinkat(work.dir.get(), "restore.pid", 0);
      const ProcessResult r =
          run_process(binary_fd_, "criu", args, {images.get(), work.dir.get()}, criu_environment(), options.timeout);
      // CRIU writes the pidfile once the tree is restored; killed at its timeout after that, the
      // tree runs and the restore has succeeded.
      if (r.succeeded_by(r.status_lost ? log_tail(work.dir.get(), "restore.log") : "", "Restore finished successfully") ||
          (r.timed_out && restored_tree_runs(work.dir.get()))) {
        return read_restored_pid(work.dir.get());
      }
      // The failed restore's log stays for the operator; CRIU has already killed what it restored.
      const std::string failure =
          fmt::format("criu restore of {} (container {}, originally PID {}) failed ({}): {}. {}{}",
                      dir.native(), metadata.container_id, metadata.original_pid, r.describe(),
                      criu_errors(work.dir.get(), "restore.log", r.output), work.keep_failure_log(),
                      r.timed_out ? ". What CRIU had restored dies with it; the checkpoint is unchanged and can be "
                                    "restored again" : "");
      const auto taken = taken_pid(failure);
      if (!taken || r.timed_out) throw Error(Status::criu, failure);
      if (process_exists(*taken) && !process_is_zombie(*taken))
        throw Error(Status::criu, fmt::format("cannot restore: PID {} that the checkpoint needs is taken by {}; stop "
                                              "that process (or restore into a new PID namespace) and retry. {}",
                                              *taken, describe_process(*taken), failure));
      // The PID is held by an exited process not yet reaped: a zombie, or a zombie's process group
      // or session. Its parent (or PID 1) reaps it soon; retry until then, bounded.
      if (std::chrono::steady_clock::now() > deadline)
        throw Error(Status::criu, fmt::format("cannot restore: PID {} that the checkpoint needs is still held by an "
                                              "exited process nobody has reaped (its parent must wait() for it). {}",
                                              *taken, failure));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  finish(CheckpointState::Restored);
  return pid;
}

}  // namespace nucleus::checkpoint
