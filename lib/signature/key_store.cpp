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
#include <functional>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "checkpoint/utf8.hpp"
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
constexpr const char* env_ed25519_key_file = "NUCLEUS_CHECKPOINT_ED25519_KEY_FILE";
constexpr const char* env_trust_dir = "NUCLEUS_CHECKPOINT_TRUSTED_KEYS";
constexpr const char* env_signers = "NUCLEUS_CHECKPOINT_SIGNERS";
constexpr const char* ed25519_key_name = "checkpoint-ed25519.key";
constexpr const char* trust_dir_name = "trusted-keys";

// A key file: what it is called in messages, the variable that moves it, and whether hosts share
// it (an HMAC key is copied to every verifier; an Ed25519 secret key never leaves its host).
struct KeyKind {
  std::string_view what;
  const char* env;
  bool shared;
};
constexpr KeyKind hmac_key{"checkpoint HMAC key", env_key_file, true};
constexpr KeyKind ed25519_key{"checkpoint Ed25519 key", env_ed25519_key_file, false};

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

UniqueFd open_key_dir(const fs::path& dir, bool create, const KeyKind& kind) {
  const std::string what = fmt::format("{} directory", kind.what);
  try {
    UniqueFd fd = create ? open_or_create_dir(dir, 0700, what) : open_dir(dir, what);
    check_private(stat_fd(fd.get(), what), what, dir);
    return fd;
  } catch (const Error& e) {
    if (!create && e.status() == Status::not_found && kind.shared)
      throw Error(Status::key, fmt::format("{}: there is no {} on this machine; copy the signing machine's key into "
                                           "{} (folder 0700, file 0600), or set {}",
                                           e.what(), kind.what, dir.native(), kind.env));
    if (!create && e.status() == Status::not_found)
      throw Error(Status::key, fmt::format("{}: there is no {} on this machine; create one with `nucleus-checkpoint "
                                           "keygen --ed25519`, or set {}",
                                           e.what(), kind.what, kind.env));
    throw Error(Status::key, e.what());
  }
}

UniqueFd open_key_dir_of(const fs::path& key_file, bool create, const KeyKind& kind) {
  return open_key_dir(key_file.parent_path().empty() ? "." : key_file.parent_path(), create, kind);
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

// A key file's bytes, read straight into guarded memory (no copy in ordinary heap), after the
// file is checked to be a private regular file and check_size accepts its size. nullopt when there
// is no key file yet.
struct KeyFileBytes {
  KeyBytes bytes;
  std::size_t size;
};
std::optional<KeyFileBytes> read_key_file(int dir_fd, const fs::path& path, const KeyKind& kind,
                                          const std::function<void(std::size_t)>& check_size) {
  const std::string name = path.filename();
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    if (errno == ENOENT) return std::nullopt;
    if (errno == ELOOP)
      throw Error(Status::key, fmt::format("{} {} is a symlink; refusing to follow it", kind.what, path.native()));
    throw system_error(Status::key, errno, fmt::format("cannot open {} {}", kind.what, path.native()));
  }
  const struct stat st = stat_fd(fd.get(), kind.what);
  if (!S_ISREG(st.st_mode)) throw Error(Status::key, fmt::format("{} {} is not a regular file", kind.what, path.native()));
  check_private(st, kind.what, path);
  const auto size = static_cast<std::size_t>(st.st_size);
  check_size(size);
  KeyBytes buf(alloc_key_bytes(size));
  std::size_t got = 0;
  while (got < size) {
    const ssize_t n = ::read(fd.get(), buf.get() + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(Status::key, errno, fmt::format("cannot read {} {}", kind.what, path.native()));
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got != size) throw Error(Status::key, fmt::format("{} {} changed while it was read", kind.what, path.native()));
  return KeyFileBytes{std::move(buf), size};
}

std::optional<HmacKey> read_key(int dir_fd, const fs::path& path) {
  auto file = read_key_file(dir_fd, path, hmac_key, [&](std::size_t size) {
    if (size != HmacKey::min_size && (size < min_hex_file || size > max_hex_file)) throw not_a_key_file(path, size);
  });
  if (!file) return std::nullopt;
  return parse_key_file({file->bytes.get(), file->size}, path);
}

Error not_an_ed25519_key_file(const fs::path& path, std::size_t size) {
  return Error(Status::key, fmt::format("{} {} ({} bytes) is not an Ed25519 key file: it holds libsodium's {}-byte "
                                        "secret key, as `nucleus-checkpoint keygen --ed25519` writes it, or its {}-byte "
                                        "seed. Point {} at the right file, or move this one away and run keygen",
                                        ed25519_key.what, path.native(), size, Ed25519SecretKey::size,
                                        Ed25519SecretKey::seed_size, ed25519_key.env));
}

std::optional<Ed25519SecretKey> read_ed25519_key(int dir_fd, const fs::path& path) {
  auto file = read_key_file(dir_fd, path, ed25519_key, [&](std::size_t size) {
    if (size != Ed25519SecretKey::size && size != Ed25519SecretKey::seed_size) throw not_an_ed25519_key_file(path, size);
  });
  if (!file) return std::nullopt;
  try {
    return Ed25519SecretKey::from_bytes({file->bytes.get(), file->size});
  } catch (const Error& e) {
    throw Error(Status::key, fmt::format("{} {}: {}", ed25519_key.what, path.native(), e.what()));
  }
}

// Writes a new key file O_EXCL under a private temporary name, fsynced, then links it into place:
// link fails if another process won the race, and then false is returned (its complete key is
// the one to use).
bool create_key_file(int dir_fd, const fs::path& path, const KeyKind& kind, std::span<const unsigned char> bytes) {
  const std::string name = path.filename();
  const std::string tmp = fmt::format(".{}.{:08x}", name, randombytes_random());
  UniqueFd fd(::openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) throw system_error(Status::key, errno, fmt::format("cannot create {} in {}", kind.what, path.parent_path().native()));
  int link_err = 0;
  try {
    write_all(fd.get(), bytes.data(), bytes.size(), kind.what);
    fsync_fd(fd.get(), kind.what);
    if (::linkat(dir_fd, tmp.c_str(), dir_fd, name.c_str(), 0) != 0) link_err = errno;
  } catch (...) {
    ::unlinkat(dir_fd, tmp.c_str(), 0);
    throw;
  }
  ::unlinkat(dir_fd, tmp.c_str(), 0);
  if (link_err == EEXIST) return false;
  if (link_err != 0) throw system_error(Status::key, link_err, fmt::format("cannot create {} {}", kind.what, path.native()));
  fsync_fd(dir_fd, fmt::format("{} directory", kind.what));
  return true;
}

// The trust folder and its key files may be root's or the effective uid's, and no one else may
// change them: readable by all (public keys), writable by their owner only.
void check_trusted(const struct stat& st, std::string_view what, const fs::path& path) {
  if (st.st_uid != 0 && st.st_uid != geteuid())
    throw Error(Status::key, fmt::format("{} {} is owned by uid {}; it must be root's or {}'s (chown it), since its "
                                         "owner decides which signatures verify",
                                         what, path.native(), st.st_uid, geteuid()));
  if ((st.st_mode & 022) != 0)
    throw Error(Status::key, fmt::format("{} {} has mode {:o}: others can change which signatures verify (chmod go-w)",
                                         what, path.native(), st.st_mode & 0777));
}

constexpr std::string_view trusted_key_suffix = ".pub";

// The public key in trusted key file `name` of the trust folder open at dir_fd.
Ed25519PublicKey read_trusted_key(int dir_fd, const std::string& name, const fs::path& dir) {
  const fs::path path = dir / name;
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd && errno == ELOOP)
    throw Error(Status::key, fmt::format("trusted key {} is a symlink; replace it with the key file itself",
                                         path.native()));
  if (!fd) throw system_error(Status::key, errno, fmt::format("cannot open trusted key {}", path.native()));
  const struct stat st = stat_fd(fd.get(), "trusted key");
  if (!S_ISREG(st.st_mode)) throw Error(Status::key, fmt::format("trusted key {} is not a regular file", path.native()));
  check_trusted(st, "trusted key", path);
  if (static_cast<std::uint64_t>(st.st_size) > Ed25519PublicKey::max_file_size)
    throw Error(Status::key, fmt::format("trusted key {} is {} bytes, more than the {} a public key file may be",
                                         path.native(), st.st_size, Ed25519PublicKey::max_file_size));
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  text.resize(pread_full(fd.get(), text.data(), text.size(), 0, "trusted key"));
  return Ed25519PublicKey::parse_file_text(text, fmt::format("trusted key {}", path.native()));
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

namespace {

fs::path from_env_or(const char* env, const fs::path& beside) {
  if (const char* value = std::getenv(env); value && *value) return value;
  return beside;
}

}  // namespace

KeyStore::KeyStore() : KeyStore(default_path()) {
  ed25519_path_ = from_env_or(env_ed25519_key_file, ed25519_path_);
  trust_dir_ = from_env_or(env_trust_dir, trust_dir_);
}

KeyStore::KeyStore(fs::path key_file) : path_(std::move(key_file)) {
  if (path_.filename().empty()) throw Error(Status::invalid, fmt::format("key file path {} names no file", path_.native()));
  ed25519_path_ = path_.parent_path() / ed25519_key_name;
  trust_dir_ = path_.parent_path() / trust_dir_name;
}

bool KeyStore::accepts_hmac() {
  const char* value = std::getenv(env_signers);
  if (!value || !*value || std::string_view(value) == "any") return true;
  if (std::string_view(value) == "ed25519") return false;
  throw Error(Status::invalid, fmt::format("{} is '{}': set it to ed25519 (accept Ed25519 signatures only) or any",
                                           env_signers, to_valid_utf8(value)));
}

bool KeyStore::exists() const {
  struct stat st {};
  return ::lstat(path_.c_str(), &st) == 0;
}

HmacKey KeyStore::load() const {
  init_sodium();
  UniqueFd dir = open_key_dir_of(path_, false, hmac_key);
  auto key = read_key(dir.get(), path_);
  if (!key)
    throw Error(Status::key, fmt::format("no checkpoint HMAC key at {}: sign on this machine first, or copy the "
                                         "signing machine's key there (mode 0600), or set {}",
                                         path_.native(), env_key_file));
  return std::move(*key);
}

HmacKey KeyStore::load_or_create() const {
  init_sodium();
  UniqueFd dir = open_key_dir_of(path_, true, hmac_key);
  if (auto key = read_key(dir.get(), path_)) return std::move(*key);
  HmacKey key = HmacKey::generate();
  if (!create_key_file(dir.get(), path_, hmac_key, key.bytes())) return load();
  return key;
}

bool KeyStore::ed25519_exists() const {
  struct stat st {};
  return ::lstat(ed25519_path_.c_str(), &st) == 0;
}

Ed25519SecretKey KeyStore::load_ed25519() const {
  init_sodium();
  UniqueFd dir = open_key_dir_of(ed25519_path_, false, ed25519_key);
  auto key = read_ed25519_key(dir.get(), ed25519_path_);
  if (!key)
    throw Error(Status::key, fmt::format("no {} at {}: create one with `nucleus-checkpoint keygen --ed25519`, or set {}",
                                         ed25519_key.what, ed25519_path_.native(), ed25519_key.env));
  return std::move(*key);
}

Ed25519SecretKey KeyStore::load_or_create_ed25519() const {
  init_sodium();
  UniqueFd dir = open_key_dir_of(ed25519_path_, true, ed25519_key);
  if (auto key = read_ed25519_key(dir.get(), ed25519_path_)) return std::move(*key);
  Ed25519SecretKey key = Ed25519SecretKey::generate();
  if (!create_key_file(dir.get(), ed25519_path_, ed25519_key, key.bytes())) return load_ed25519();
  trust(key.public_key());  // so that this host verifies what it signs
  return key;
}

Ed25519PublicKey KeyStore::trusted_key(const Ed25519PublicKey::Id& id) const {
  const std::string id_hex = Ed25519PublicKey::hex(id);
  const auto unknown = [&](std::string_view why) {
    return Error(Status::integrity,
                 fmt::format("checkpoint is signed with Ed25519 key {}, which this host does not trust: {}. If you "
                             "trust the signing host, copy its public key here (`nucleus-checkpoint keygen --ed25519 "
                             "--public-key-out FILE` there writes it; `nucleus-checkpoint trust add FILE` here), or "
                             "set {}",
                             id_hex, why, env_trust_dir));
  };
  UniqueFd dir;
  try {
    dir = open_dir(trust_dir_, "trust folder");
  } catch (const Error& e) {
    if (e.status() == Status::not_found) throw unknown(fmt::format("there is no trust folder {}", trust_dir_.native()));
    throw Error(Status::key, e.what());
  }
  check_trusted(stat_fd(dir.get(), "trust folder"), "trust folder", trust_dir_);
  std::vector<std::string> keys;
  std::size_t entries = 0;
  for_each_name(dir.get(), "trust folder", [&](std::string_view name) {
    if (++entries > max_trusted_entries)
      throw Error(Status::key, fmt::format("trust folder {} holds more than {} entries", trust_dir_.native(),
                                           max_trusted_entries));
    if (name.ends_with(trusted_key_suffix) && !name.starts_with('.')) keys.emplace_back(name);
  });
  std::optional<Ed25519PublicKey> found;
  for (const std::string& name : keys) {
    const Ed25519PublicKey key = read_trusted_key(dir.get(), name, trust_dir_);
    if (key.id() == id) found = key;
  }
  if (!found) throw unknown(fmt::format("no key in the trust folder {} has that id", trust_dir_.native()));
  return *found;
}

fs::path KeyStore::trust(const Ed25519PublicKey& key) const {
  // A missing parent is made private (0700): it is the key folder too, by default, which must be.
  fs::path folder = trust_dir_.lexically_normal();
  if (folder.filename().empty()) folder = folder.parent_path();
  const UniqueFd parent = open_or_create_dir(folder.has_parent_path() ? folder.parent_path() : ".", 0700,
                                             "trust folder's parent");
  UniqueFd dir = open_or_create_dir_at(parent.get(), folder.filename(), 0755, "trust folder");
  check_trusted(stat_fd(dir.get(), "trust folder"), "trust folder", trust_dir_);
  const std::string name = key.id_hex() + std::string(trusted_key_suffix);
  write_file_atomic_at(dir.get(), name, key.to_file_text(), 0644);
  return trust_dir_ / name;
}

}  // namespace nucleus::checkpoint
