#include <nucleus/checkpoint/key_store.hpp>

#include <fcntl.h>
#include <pwd.h>
#include <sodium.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string_view>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs/fs_util.hpp"
#include "signature/sodium.hpp"

namespace nucleus::checkpoint {

namespace fs = std::filesystem;

void init_sodium() {
  if (sodium_init() < 0) throw Error(Status::internal, "libsodium could not be initialised");
}

// --- Key material ---

namespace {

std::mutex key_material_mutex;
std::size_t key_material_holders = 0;  // under the mutex
int dumpable_before = 0;               // PR_GET_DUMPABLE when the first holder came
std::array<uid_t, 6> ids_before{};     // and the process's uids and gids then

std::array<uid_t, 6> process_ids() noexcept {
  std::array<uid_t, 6> ids{};
  ::getresuid(&ids[0], &ids[1], &ids[2]);
  ::getresgid(&ids[3], &ids[4], &ids[5]);
  return ids;
}

void hold_key_material() {
  const std::lock_guard lock(key_material_mutex);
  if (key_material_holders == 0) {
    dumpable_before = ::prctl(PR_GET_DUMPABLE);
    ids_before = process_ids();
    if (dumpable_before != 0 && ::prctl(PR_SET_DUMPABLE, 0) != 0)
      throw system_error(Status::internal, errno, "cannot make the process non-dumpable while it holds the HMAC key");
  }
  ++key_material_holders;
}

void release_key_material() noexcept {
  const std::lock_guard lock(key_material_mutex);
  // Made dumpable again only as it was: not after a change of credentials meanwhile, after which
  // the kernel's own reset (or the application's choice) stands.
  if (--key_material_holders == 0 && dumpable_before == 1 && process_ids() == ids_before)
    ::prctl(PR_SET_DUMPABLE, 1);
}

}  // namespace

KeyMaterialGuard::KeyMaterialGuard() { hold_key_material(); }
KeyMaterialGuard::~KeyMaterialGuard() { release_key_material(); }

unsigned char* alloc_key_bytes(std::size_t size) {
  init_sodium();
  hold_key_material();
  auto* bytes = static_cast<unsigned char*>(sodium_malloc(size));
  if (!bytes) {
    release_key_material();
    throw Error(Status::no_memory, "cannot allocate guarded memory for the HMAC key");
  }
  return bytes;
}

void free_key_bytes(unsigned char* bytes) noexcept {
  if (!bytes) return;
  sodium_free(bytes);  // wipes them
  release_key_material();
}

// --- HmacKey ---

void HmacKey::Deleter::operator()(unsigned char* p) const noexcept { free_key_bytes(p); }

HmacKey::HmacKey(std::unique_ptr<unsigned char[], Deleter> data, std::size_t size) noexcept
    : data_(std::move(data)), size_(size) {}

std::span<const unsigned char> HmacKey::bytes() const noexcept { return {data_.get(), size_}; }

HmacKey HmacKey::from_bytes(std::span<const unsigned char> bytes) {
  init_sodium();
  if (bytes.size() < min_size)
    throw Error(Status::key, fmt::format("HMAC key is {} bytes; at least {} are needed", bytes.size(), min_size));
  if (bytes.size() > max_size)
    throw Error(Status::key, fmt::format("HMAC key is {} bytes; at most {} are allowed", bytes.size(), max_size));
  std::unique_ptr<unsigned char[], Deleter> data(alloc_key_bytes(bytes.size()));
  std::memcpy(data.get(), bytes.data(), bytes.size());
  return HmacKey(std::move(data), bytes.size());
}

HmacKey HmacKey::generate() {
  std::unique_ptr<unsigned char[], Deleter> data(alloc_key_bytes(min_size));
  randombytes_buf(data.get(), min_size);
  return HmacKey(std::move(data), min_size);
}

// --- KeyStore ---

namespace {

constexpr const char* env_key_file = "NUCLEUS_CHECKPOINT_HMAC_KEY_FILE";

std::string home_dir() {
  if (const char* home = std::getenv("HOME"); home && *home == '/') return home;
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::string buf(16384, '\0');
  if (getpwuid_r(geteuid(), &pw, buf.data(), buf.size(), &found) == 0 && found && pw.pw_dir &&
      pw.pw_dir[0] == '/')
    return pw.pw_dir;
  return {};
}

// The file or folder must be ours alone: owned by the effective uid, no group or other bits.
void check_private(const struct stat& st, std::string_view what, const fs::path& path) {
  if (st.st_uid != geteuid())
    throw Error(Status::key, fmt::format("{} {} is owned by uid {} (expected {}); fix with chown", what,
                                         path.native(), st.st_uid, geteuid()));
  if ((st.st_mode & 077) != 0)
    throw Error(Status::key, fmt::format("{} {} has insecure mode {:o}; expected owner-only access (chmod go-rwx)",
                                         what, path.native(), st.st_mode & 0777));
}

UniqueFd open_key_dir(const fs::path& dir, bool create) {
  try {
    UniqueFd fd = create ? open_or_create_dir(dir, 0700, "checkpoint HMAC key directory")
                         : open_dir(dir, "checkpoint HMAC key directory");
    check_private(stat_fd(fd.get(), "checkpoint HMAC key directory"), "checkpoint HMAC key directory", dir);
    return fd;
  } catch (const Error& e) {
    if (!create && e.status() == Status::not_found)
      throw Error(Status::key, fmt::format("{}: there is no checkpoint HMAC key on this machine; copy the signing "
                                           "machine's key into {} (folder 0700, file 0600), or set {}",
                                           e.what(), dir.native(), env_key_file));
    throw Error(Status::key, e.what());
  }
}

// Key material read from a file, in guarded memory.
struct KeyBytesDeleter {
  void operator()(unsigned char* bytes) const noexcept { free_key_bytes(bytes); }
};
using KeyBytes = std::unique_ptr<unsigned char[], KeyBytesDeleter>;

// A key file must be recognisably a key, never just any private file (a dump's metadata.json,
// say): either exactly HmacKey::min_size raw bytes (what load_or_create writes, and what
// nucleus-container reads and writes), or this line and then the key in lowercase hex on one line.
constexpr std::string_view key_file_header = "nucleus-checkpoint-hmac-key 1\n";
constexpr std::size_t min_hex_file = key_file_header.size() + 2 * HmacKey::min_size,
                      max_hex_file = key_file_header.size() + 2 * HmacKey::max_size + 1;  // + "\n"

Error not_a_key_file(const fs::path& path, std::size_t size) {
  return Error(Status::key,
               fmt::format("checkpoint HMAC key {} ({} bytes) is not a key file. A key file holds exactly {} bytes, the "
                           "raw key, as `nucleus-checkpoint keygen` writes it; or the line '{}' and then one line of the "
                           "key in lowercase hex ({} to {} digits). Make a new key with `nucleus-checkpoint keygen` "
                           "(it writes to {} if set), or write a longer key of your own as: {{ echo {}; od -An -v -tx1 "
                           "RAW_KEY | tr -d ' \\n'; echo; }} > KEY_FILE",
                           path.native(), size, HmacKey::min_size, key_file_header.substr(0, key_file_header.size() - 1),
                           2 * HmacKey::min_size, 2 * HmacKey::max_size, env_key_file,
                           key_file_header.substr(0, key_file_header.size() - 1)));
}

// The key in a key file's bytes (in guarded memory), or not_a_key_file.
HmacKey parse_key_file(std::span<const unsigned char> file, const fs::path& path) {
  if (file.size() == HmacKey::min_size) return HmacKey::from_bytes(file);
  std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
  if (!text.starts_with(key_file_header)) throw not_a_key_file(path, file.size());
  text.remove_prefix(key_file_header.size());
  if (text.ends_with('\n')) text.remove_suffix(1);
  const bool lower_hex = std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
  if (!lower_hex || text.size() % 2 != 0 || text.size() < 2 * HmacKey::min_size) throw not_a_key_file(path, file.size());
  const KeyBytes key(alloc_key_bytes(text.size() / 2));
  std::size_t size = 0;
  if (sodium_hex2bin(key.get(), text.size() / 2, text.data(), text.size(), nullptr, &size, nullptr) != 0 ||
      size != text.size() / 2)
    throw not_a_key_file(path, file.size());
  return HmacKey::from_bytes({key.get(), size});
}

// nullopt when there is no key file yet.
std::optional<HmacKey> read_key(int dir_fd, const fs::path& path) {
  const std::string name = path.filename();
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    if (errno == ENOENT) return std::nullopt;
    if (errno == ELOOP)
      throw Error(Status::key, fmt::format("checkpoint HMAC key {} is a symlink; refusing to follow it", path.native()));
    throw system_error(Status::key, errno, fmt::format("cannot open checkpoint HMAC key {}", path.native()));
  }
  const struct stat st = stat_fd(fd.get(), "checkpoint HMAC key");
  if (!S_ISREG(st.st_mode))
    throw Error(Status::key, fmt::format("checkpoint HMAC key {} is not a regular file", path.native()));
  check_private(st, "checkpoint HMAC key", path);
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size != HmacKey::min_size && (size < min_hex_file || size > max_hex_file)) throw not_a_key_file(path, size);
  // Read straight into guarded memory: no copy in ordinary heap.
  const KeyBytes buf(alloc_key_bytes(size));
  std::size_t got = 0;
  while (got < size) {
    const ssize_t n = ::read(fd.get(), buf.get() + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::key, errno, fmt::format("cannot read checkpoint HMAC key {}", path.native()));
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got != size)
    throw Error(Status::key, fmt::format("checkpoint HMAC key {} changed while it was read", path.native()));
  return parse_key_file({buf.get(), size}, path);
}

}  // namespace

fs::path KeyStore::default_path() {
  if (const char* env = std::getenv(env_key_file); env && *env) return env;
  if (geteuid() == 0) return "/var/lib/nucleus/checkpoint-hmac.key";
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg && *xdg == '/')
    return fs::path(xdg) / "nucleus/checkpoint-hmac.key";
  const std::string home = home_dir();
  if (!home.empty()) return fs::path(home) / ".local/share/nucleus/checkpoint-hmac.key";
  throw Error(Status::key, fmt::format("no place for the checkpoint HMAC key: set {} or HOME", env_key_file));
}

KeyStore::KeyStore() : path_(default_path()) {}
KeyStore::KeyStore(fs::path key_file) : path_(std::move(key_file)) {
  if (path_.filename().empty()) throw Error(Status::invalid, fmt::format("key file path {} names no file", path_.native()));
}

bool KeyStore::exists() const {
  struct stat st {};
  return ::lstat(path_.c_str(), &st) == 0;
}

HmacKey KeyStore::load() const {
  init_sodium();
  UniqueFd dir = open_key_dir(path_.parent_path().empty() ? "." : path_.parent_path(), false);
  auto key = read_key(dir.get(), path_);
  if (!key)
    throw Error(Status::key, fmt::format("no checkpoint HMAC key at {}: sign on this machine first, or copy the "
                                         "signing machine's key there (mode 0600), or set {}",
                                         path_.native(), env_key_file));
  return std::move(*key);
}

HmacKey KeyStore::load_or_create() const {
  init_sodium();
  UniqueFd dir = open_key_dir(path_.parent_path().empty() ? "." : path_.parent_path(), true);
  if (auto key = read_key(dir.get(), path_)) return std::move(*key);

  // Write the new key under a private temporary name, then link it into place: link fails if
  // another process won the race, and then its complete key is the one both use.
  HmacKey key = HmacKey::generate();
  const std::string name = path_.filename();
  const std::string tmp = fmt::format(".{}.{:08x}", name, randombytes_random());
  UniqueFd fd(::openat(dir.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) throw system_error(Status::key, errno, fmt::format("cannot create checkpoint HMAC key in {}", path_.parent_path().native()));
  int link_err = 0;
  try {
    write_all(fd.get(), key.bytes().data(), key.bytes().size(), "checkpoint HMAC key");
    fsync_fd(fd.get(), "checkpoint HMAC key");
    if (::linkat(dir.get(), tmp.c_str(), dir.get(), name.c_str(), 0) != 0) link_err = errno;
  } catch (...) {
    ::unlinkat(dir.get(), tmp.c_str(), 0);
    throw;
  }
  ::unlinkat(dir.get(), tmp.c_str(), 0);
  if (link_err == EEXIST) return load();
  if (link_err != 0) throw system_error(Status::key, link_err, fmt::format("cannot create checkpoint HMAC key {}", path_.native()));
  fsync_fd(dir.get(), "checkpoint HMAC key directory");
  return key;
}

}  // namespace nucleus::checkpoint
