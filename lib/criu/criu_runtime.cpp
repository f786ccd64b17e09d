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
#include "criu/criu_tools.hpp"
#include "criu/proc.hpp"
#include "criu/runtime_support.hpp"
#include "criu/subprocess.hpp"
#include "checkpoint/utf8.hpp"
#include <nucleus/checkpoint_version.h>

namespace nucleus::checkpoint {

namespace fs = std::filesystem;

namespace {

// CRIU's first version that understands the [vvar_vclock] mapping of newer kernels.
const CriuVersion first_vvar_vclock_version{4, 1, 0, "4.1"};

}  // namespace

UniqueFd open_work_dir(const fs::path& path) {
  UniqueFd fd = open_or_create_dir(path, 0700, "CRIU work directory");
  require_private_dir(fd.get(), path, "CRIU work directory");
  return fd;
}

PrivateRunDir make_private_run_dir(const std::string& parent_path, std::string_view prefix, std::string_view what) {
  PrivateRunDir run;
  run.parent_path = parent_path;
  run.parent = open_or_create_dir(parent_path, 0700, what);
  const struct stat st = stat_fd(run.parent.get(), parent_path);
  if (st.st_uid != 0 || (st.st_mode & 077) != 0)
    throw Error(Status::permission, fmt::format("{} must be owned by root with mode 0700", parent_path));
  run.name = fmt::format("{}-{:08x}", prefix, randombytes_random());
  if (::mkdirat(run.parent.get(), run.name.c_str(), 0700) != 0)
    throw system_error(status_of_errno(errno), errno, fmt::format("cannot create {}", run.path()));
  try {
    run.dir = open_dir_at(run.parent.get(), run.name, what);
  } catch (const Error&) {
    ::unlinkat(run.parent.get(), run.name.c_str(), AT_REMOVEDIR);  // out of descriptors, say: nothing left behind
    throw;
  }
  return run;
}

void require_root(std::string_view operation) {
  if (geteuid() != 0)
    throw Error(Status::permission, fmt::format("{} requires root (CRIU needs CAP_SYS_ADMIN and CAP_SYS_PTRACE); "
                                                "run it as root", operation));
}

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
  if (ec) return;
  if (const auto dir = folder_others_can_change(real)) {
    struct stat ds {};
    ::lstat(dir->c_str(), &ds);
    throw Error(Status::permission, fmt::format("criu binary {} is in {}, which others can change (owner {}, mode {:o}); "
                                                "refusing to execute it", path.native(), dir->native(), ds.st_uid,
                                                ds.st_mode & 07777));
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

void CriuRuntime::set_ed25519_key(Ed25519SecretKey key) { ed25519_key_ = std::move(key); }

Ed25519SecretKey CriuRuntime::ed25519_signing_key() const {
  return ed25519_key_ ? Ed25519SecretKey::from_bytes(ed25519_key_->bytes()) : KeyStore().load_or_create_ed25519();
}

CheckpointState CriuRuntime::begin(CheckpointState target) {
  std::lock_guard lock(mutex_);
  // A finished dump or restore is final for that operation; the next one starts from None.
  if (state_ == CheckpointState::Dumped || state_ == CheckpointState::Restored) state_ = CheckpointState::None;
  // Busy: said in the caller's terms (transition() would say "from Dumping to Restoring").
  if (state_ == CheckpointState::Dumping || state_ == CheckpointState::Restoring)
    throw Error(Status::state, fmt::format("cannot {}: this runtime is already {}; a runtime (nc_runtime, CriuRuntime) runs "
                                           "one operation at a time: use one runtime per thread",
                                           target == CheckpointState::Dumping ? "dump" : "restore",
                                           state_ == CheckpointState::Dumping ? "dumping" : "restoring"));
  state_ = transition(state_, target);
  return state_;
}

void CriuRuntime::finish(CheckpointState target) {
  std::lock_guard lock(mutex_);
  state_ = transition(state_, target);
}

}  // namespace nucleus::checkpoint
