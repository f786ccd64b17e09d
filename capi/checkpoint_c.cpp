// The C ABI: a thin shim over the C++ core. Every entry point catches everything, records the
// message for nc_last_error() (and, in the _e twins, in the caller's nc_error; in a setter, in the
// options' own) and returns the status.
#include <nucleus/checkpoint.h>
#include <nucleus/checkpoint_version.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nucleus/checkpoint/chain.hpp>
#include <nucleus/checkpoint/criu_runtime.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>
#include <nucleus/checkpoint/metadata.hpp>
#include <nucleus/checkpoint/migrate.hpp>
#include <nucleus/checkpoint/registry.hpp>
#include <nucleus/checkpoint/transfer.hpp>

#include "checkpoint/utf8.hpp"
#include "criu/criu_args.hpp"
#include "fs/fs_util.hpp"
#include "signature/hex.hpp"

namespace nc = nucleus::checkpoint;

struct nc_runtime {
  explicit nc_runtime(std::optional<std::string> criu_path)
      : criu(criu_path ? nc::CriuRuntime(*criu_path) : nc::CriuRuntime()) {}
  nc::CriuRuntime criu;
};

// One call's outcome, owned by the caller: nothing ties it to a thread.
struct nc_error {
  nc_status status = NC_OK;
  std::string message;
  int criu_exit_code = -1;
  std::string criu_lines;  // CRIU's Error lines, each ending in '\n'
};

struct nc_options {
  nc::CriuOptions criu;
  // Of the container, not of CRIU: kept beside its options, for nc_checkpoint_ex's ContainerInfo.
  std::uint64_t start_ticks = 0;
  std::vector<std::pair<std::string, std::string>> annotations;
  std::vector<std::pair<std::string, std::string>> runtime_files;  // name, bytes
  nc::SignatureFormat signature_format = nc::SignatureFormat::manifest;
  nc::TransferOptions transfer;  // nc_export's
  std::vector<std::string> receiver_has;  // nc_export_chain's: the layers left out
  nc::RegistryOptions registry;  // nc_push_image's and nc_pull_image's
  std::chrono::milliseconds reply_timeout = nc::MigrateOptions{}.reply_timeout;  // nc_migrate's, nc_receive's
  bool post_copy = false;                                                          // nc_migrate's
  std::optional<nc::Ed25519PublicKey> receiver_key;                                // nc_migrate's
  nc_error error;  // the outcome of the latest setter called on this handle (nc_options_error)
};

namespace {

static_assert(static_cast<int>(nc::Status::unsupported) == NC_E_UNSUPPORTED);
static_assert(static_cast<int>(nc::Status::unconfirmed) == NC_E_UNCONFIRMED);
static_assert(static_cast<int>(nc::Status::internal) == NC_E_INTERNAL && static_cast<int>(nc::Status::key) == NC_E_KEY &&
              static_cast<int>(nc::Status::integrity) == NC_E_INTEGRITY && static_cast<int>(nc::Status::ok) == NC_OK);
static_assert(static_cast<int>(nc::CriuNotification::pre_dump) == NC_NOTIFY_PRE_DUMP &&
              static_cast<int>(nc::CriuNotification::pre_resume) == NC_NOTIFY_PRE_RESUME &&
              static_cast<int>(nc::CriuNotification::status_ready) == NC_NOTIFY_STATUS_READY);

thread_local std::string last_error;

// A call's outcome, for nc_last_error() and, if given, the caller's nc_error (a success clears both).
// Its text escaped as the CLI shows text (nc::printable): a caller may print or log it as it is, and
// a name from a folder someone else made still cannot drive its terminal.
nc_status record(nc_error* err, nc_status status, const char* message, int criu_exit_code = -1,
                 const std::vector<std::string>* criu_lines = nullptr) noexcept {
  std::string shown;
  try {
    shown = nc::printable(message);
    last_error = shown;
  } catch (...) {
    last_error.clear();
  }
  if (err) {
    err->status = status;
    err->criu_exit_code = criu_exit_code;
    try {
      err->message = shown;
      err->criu_lines.clear();
      if (criu_lines)
        for (const std::string& line : *criu_lines) (err->criu_lines += nc::printable(line)) += '\n';
    } catch (...) {
      err->message.clear();
      err->criu_lines.clear();
    }
  }
  return status;
}

template <typename Body>
nc_status guard(nc_error* err, Body&& body) noexcept {
  try {
    body();
    return record(err, NC_OK, "");
  } catch (const nc::CriuError& e) {
    return record(err, static_cast<nc_status>(e.status()), e.what(), e.criu_exit_code(), &e.criu_lines());
  } catch (const nc::Error& e) {
    return record(err, static_cast<nc_status>(e.status()), e.what());
  } catch (const std::bad_alloc&) {
    return record(err, NC_E_NOMEM, "out of memory");
  } catch (const std::exception& e) {
    return record(err, NC_E_INTERNAL, e.what());
  } catch (...) {
    return record(err, NC_E_INTERNAL, "unknown internal error");
  }
}

template <typename Body>
nc_status guard(Body&& body) noexcept {
  return guard(nullptr, std::forward<Body>(body));
}

void require(bool ok, std::string_view what) {
  if (!ok) throw nc::Error(nc::Status::invalid, std::string(what));
}

// A C caller may pass any int as an enum; in C++ reading an out-of-range enum is undefined, so
// its bits are read as an int before they are checked.
template <typename Enum>
int enum_bits(const Enum& e) {  // by reference: copying the enum would already be a load of it
  static_assert(sizeof(Enum) == sizeof(int));
  int bits = 0;
  std::memcpy(&bits, &e, sizeof bits);
  return bits;
}

// Runs body; an Error it throws names `name` (the C function) first.
template <typename Body>
void named(const char* name, Body&& body) {
  try {
    body();
  } catch (const nc::Error& e) {
    throw nc::Error(e.status(), std::string(name) + ": " + e.what());
  }
}

// Every setter: check the handle, then change one field.
template <typename Set>
nc_status set_option(nc_options* opts, const char* name, Set&& set) {
  return guard(opts ? &opts->error : nullptr, [&] {
    if (opts == nullptr) throw nc::Error(nc::Status::invalid, std::string(name) + ": options are NULL");
    named(name, [&] {
      if constexpr (std::is_invocable_v<Set, nc::CriuOptions&>) set(opts->criu);
      else set(*opts);
    });
  });
}

// A setter of what CRIU is given: the changed options are checked whole, as CRIU would get them,
// and kept only if they pass.
template <typename Set>
nc_status set_criu_option(nc_options* opts, const char* name, Set&& set) {
  return set_option(opts, name, [&](nc::CriuOptions& current) {
    nc::CriuOptions changed = current;
    set(changed);
    nc::validate_criu_options(changed);
    current = std::move(changed);
  });
}

// A string setter's value: NULL goes back to the default, "" is refused (CRIU would get it as a
// value).
std::string optional_value(const char* value) {
  if (value == nullptr) return {};
  require(*value != '\0', "the value is empty (NULL goes back to the default)");
  return value;
}

// An add_* setter's value, which must be given.
std::string required_value(const char* value, const char* what = "the value") {
  require(value != nullptr, std::string(what) + " is NULL");
  return value;
}

// Names added once: a second value for a name would leave which one counts unclear.
void require_new_name(const std::vector<std::pair<std::string, std::string>>& entries, const std::string& name) {
  const bool taken = std::any_of(entries.begin(), entries.end(), [&](const auto& e) { return e.first == name; });
  // (Built by appending: GCC 12 at -O3 warns falsely of overlap (-Wrestrict) for "'" + name.)
  std::string message = nc::to_valid_utf8(name);
  message.insert(0, 1, '\'');
  message += "' was already added";
  require(!taken, message);
}

nc::HmacTree::Progress progress_of(nc_progress_fn fn, void* user) {
  if (!fn) return {};
  return [fn, user](std::uint64_t bytes) { fn(bytes, user); };
}

// A C caller's format, checked before it is used as the enum.
nc::SignatureFormat signature_format(const nc_signature_format& format) {
  const int f = enum_bits(format);
  if (f != NC_SIGNATURE_SEED && f != NC_SIGNATURE_CHUNKED && f != NC_SIGNATURE_MANIFEST)
    throw nc::Error(nc::Status::invalid, "unknown signature format " + std::to_string(f));
  return static_cast<nc::SignatureFormat>(f);
}

// A C caller's signing, checked before it is used as the enum.
nc::SignatureKind signing_kind(const nc_signing& signing) {
  const int k = enum_bits(signing);
  if (k != NC_SIGNING_HMAC && k != NC_SIGNING_ED25519) throw nc::Error(nc::Status::invalid, "unknown signing " + std::to_string(k));
  return static_cast<nc::SignatureKind>(k);
}

// A string handed to C, to be freed with nc_free.
char* malloc_copy(std::string_view text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (!out) throw std::bad_alloc();
  std::memcpy(out, text.data(), text.size());
  out[text.size()] = '\0';
  return out;
}

// nc_key_path's and nc_key_path_ex's body: with `needed`, buf may be NULL when size is 0 (a query).
void key_path(const char* name, char* buf, size_t size, size_t* needed) {
  if (needed) *needed = 0;
  require(buf != nullptr || (needed != nullptr && size == 0),
          std::string(name) + (needed ? ": buf is NULL and size is not 0" : ": buf is NULL"));
  const std::string path = nc::KeyStore::default_path();
  if (needed) *needed = path.size() + 1;
  if (buf == nullptr) return;
  if (path.size() + 1 > size) {
    if (needed && size > 0) *buf = '\0';
    throw nc::Error(nc::Status::invalid, std::string(name) + ": buf holds " + std::to_string(size) +
                                             " bytes; the path needs " + std::to_string(path.size() + 1));
  }
  std::memcpy(buf, path.c_str(), path.size() + 1);
}

// text into a NUL-terminated field, cut at a character boundary to fit (never mid-sequence).
template <std::size_t N>
void copy_cut(std::string_view text, char (&out)[N]) {
  std::size_t n = std::min(text.size(), N - 1);
  if (n < text.size())
    while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xc0) == 0x80) --n;
  text.copy(out, n);
  out[n] = '\0';
}

}  // namespace

extern "C" {

nc_status nc_error_new(nc_error** out) {
  return guard([&] {
    require(out != nullptr, "nc_error_new: out is NULL");
    *out = nullptr;
    *out = new nc_error();
  });
}

void nc_error_free(nc_error* err) { delete err; }

nc_status nc_error_status(const nc_error* err) { return err ? err->status : NC_OK; }

const char* nc_error_message(const nc_error* err) { return err ? err->message.c_str() : ""; }

int nc_error_criu_exit_code(const nc_error* err) { return err ? err->criu_exit_code : -1; }

const char* nc_error_criu_lines(const nc_error* err) { return err ? err->criu_lines.c_str() : ""; }

const nc_error* nc_options_error(const nc_options* opts) { return opts ? &opts->error : nullptr; }

nc_status nc_runtime_new(nc_runtime** out) { return nc_runtime_new_e(out, nullptr); }

nc_status nc_runtime_new_e(nc_runtime** out, nc_error* err) {
  return guard(err, [&] {
    require(out != nullptr, "nc_runtime_new: out is NULL");
    *out = nullptr;
    *out = new nc_runtime(std::nullopt);
  });
}

nc_status nc_runtime_new_with_criu(const char* criu_path, nc_runtime** out) {
  return nc_runtime_new_with_criu_e(criu_path, out, nullptr);
}

nc_status nc_runtime_new_with_criu_e(const char* criu_path, nc_runtime** out, nc_error* err) {
  return guard(err, [&] {
    require(out != nullptr, "nc_runtime_new_with_criu: out is NULL");
    *out = nullptr;
    require(criu_path != nullptr && *criu_path != '\0', "nc_runtime_new_with_criu: criu_path is NULL or empty");
    *out = new nc_runtime(std::string(criu_path));
  });
}

void nc_runtime_free(nc_runtime* rt) { delete rt; }

nc_status nc_checkpoint(nc_runtime* rt, const char* container_id, pid_t pid, const char* dir, int leave_running) {
  return nc_checkpoint_e(rt, container_id, pid, dir, leave_running, nullptr);
}

nc_status nc_checkpoint_e(nc_runtime* rt, const char* container_id, pid_t pid, const char* dir, int leave_running,
                          nc_error* err) {
  nc_options opts;
  opts.criu.leave_running = leave_running != 0;
  return nc_checkpoint_ex_e(rt, container_id, pid, dir, &opts, err);
}

nc_status nc_restore(nc_runtime* rt, const char* dir, pid_t* restored_pid) {
  return nc_restore_ex_e(rt, dir, nullptr, restored_pid, nullptr);
}

nc_status nc_restore_e(nc_runtime* rt, const char* dir, pid_t* restored_pid, nc_error* err) {
  return nc_restore_ex_e(rt, dir, nullptr, restored_pid, err);
}

nc_status nc_set_max_checkpoint_bytes(unsigned long long bytes) { return nc_set_max_checkpoint_bytes_e(bytes, nullptr); }

nc_status nc_set_max_checkpoint_bytes_e(unsigned long long bytes, nc_error* err) {
  return guard(err, [&] { nc::HmacTree::set_max_total_bytes(bytes); });
}

nc_status nc_sign(const char* dir) { return nc_sign_ex_e(dir, NC_SIGNATURE_SEED, nullptr, nullptr, nullptr); }

nc_status nc_sign_e(const char* dir, nc_error* err) { return nc_sign_ex_e(dir, NC_SIGNATURE_SEED, nullptr, nullptr, err); }

nc_status nc_verify(const char* dir) { return nc_verify_progress_e(dir, nullptr, nullptr, nullptr); }

nc_status nc_verify_e(const char* dir, nc_error* err) { return nc_verify_progress_e(dir, nullptr, nullptr, err); }

nc_status nc_sign_progress(const char* dir, nc_progress_fn progress, void* user) {
  return nc_sign_ex_e(dir, NC_SIGNATURE_SEED, progress, user, nullptr);
}

nc_status nc_sign_progress_e(const char* dir, nc_progress_fn progress, void* user, nc_error* err) {
  return nc_sign_ex_e(dir, NC_SIGNATURE_SEED, progress, user, err);
}

nc_status nc_sign_ex(const char* dir, nc_signature_format format, nc_progress_fn progress, void* user) {
  return nc_sign_ex_e(dir, format, progress, user, nullptr);
}

nc_status nc_sign_ex_e(const char* dir, nc_signature_format format, nc_progress_fn progress, void* user,
                       nc_error* err) {
  return guard(err, [&] {
    require(dir != nullptr && *dir != '\0', "sign: dir is NULL or empty");
    nc::SignatureFormat f{};
    named("nc_sign_ex", [&] { f = signature_format(format); });
    nc::HmacTree::sign_as(dir, nc::KeyStore().load_or_create(), f, progress_of(progress, user));
  });
}

nc_status nc_signature_format_of(const char* dir, nc_signature_format* format_out) {
  return nc_signature_format_of_e(dir, format_out, nullptr);
}

nc_status nc_signature_format_of_e(const char* dir, nc_signature_format* format_out, nc_error* err) {
  return guard(err, [&] {
    require(format_out != nullptr, "nc_signature_format_of: format_out is NULL");
    require(dir != nullptr && *dir != '\0', "nc_signature_format_of: dir is NULL or empty");
    *format_out = static_cast<nc_signature_format>(nc::HmacTree::format_of(dir));
  });
}

nc_status nc_verify_progress(const char* dir, nc_progress_fn progress, void* user) {
  return nc_verify_progress_e(dir, progress, user, nullptr);
}

nc_status nc_verify_progress_e(const char* dir, nc_progress_fn progress, void* user, nc_error* err) {
  return guard(err, [&] {
    require(dir != nullptr && *dir != '\0', "verify: dir is NULL or empty");
    nc::CheckpointChain::verify(dir, nc::KeyStore(), progress_of(progress, user));
  });
}

nc_status nc_read_metadata(const char* dir, char** json_out) { return nc_read_metadata_e(dir, json_out, nullptr); }

nc_status nc_read_metadata_e(const char* dir, char** json_out, nc_error* err) {
  return guard(err, [&] {
    require(json_out != nullptr, "nc_read_metadata: json_out is NULL");
    *json_out = nullptr;
    require(dir != nullptr && *dir != '\0', "nc_read_metadata: dir is NULL or empty");
    *json_out = malloc_copy(nc::CheckpointMetadata::load(nc::open_dir(dir, "checkpoint directory").get()).to_json());
  });
}

void nc_free(void* p) { std::free(p); }

nc_status nc_key_path(char* buf, size_t size) { return nc_key_path_e(buf, size, nullptr); }

nc_status nc_key_path_e(char* buf, size_t size, nc_error* err) {
  return guard(err, [&] { key_path("nc_key_path", buf, size, nullptr); });
}

nc_status nc_key_path_ex(char* buf, size_t size, size_t* needed) { return nc_key_path_ex_e(buf, size, needed, nullptr); }

nc_status nc_key_path_ex_e(char* buf, size_t size, size_t* needed, nc_error* err) {
  return guard(err, [&] {
    require(needed != nullptr, "nc_key_path_ex: needed is NULL (nc_key_path takes none)");
    key_path("nc_key_path_ex", buf, size, needed);
  });
}

nc_status nc_keygen(int* created) { return nc_keygen_e(created, nullptr); }

nc_status nc_keygen_e(int* created, nc_error* err) {
  return guard(err, [&] {
    const nc::KeyStore store;
    const bool existed = store.exists();
    store.load_or_create();
    if (created) *created = existed ? 0 : 1;
  });
}

// --- Ed25519 ---

static_assert(static_cast<int>(nc::SignatureKind::hmac_sha256) == NC_SIGNING_HMAC &&
              static_cast<int>(nc::SignatureKind::ed25519) == NC_SIGNING_ED25519);

nc_status nc_keygen_ed25519(int* created) { return nc_keygen_ed25519_e(created, nullptr); }

nc_status nc_keygen_ed25519_e(int* created, nc_error* err) {
  return guard(err, [&] {
    const nc::KeyStore store;
    const bool existed = store.ed25519_exists();
    // Trusted here even when it existed: keygen is how a host comes to verify what it signs.
    store.trust(store.load_or_create_ed25519().public_key());
    if (created) *created = existed ? 0 : 1;
  });
}

nc_status nc_public_key(char** text_out, char** key_id_out) { return nc_public_key_e(text_out, key_id_out, nullptr); }

nc_status nc_public_key_e(char** text_out, char** key_id_out, nc_error* err) {
  return guard(err, [&] {
    require(text_out != nullptr || key_id_out != nullptr, "nc_public_key: text_out and key_id_out are both NULL");
    if (text_out) *text_out = nullptr;
    if (key_id_out) *key_id_out = nullptr;
    const nc::Ed25519PublicKey key = nc::KeyStore().load_ed25519().public_key();
    std::unique_ptr<char, decltype(&std::free)> text(text_out ? malloc_copy(key.to_file_text()) : nullptr, &std::free);
    if (key_id_out) *key_id_out = malloc_copy(key.id_hex());
    if (text_out) *text_out = text.release();
  });
}

nc_status nc_trust_key(const char* public_key_text) { return nc_trust_key_e(public_key_text, nullptr); }

nc_status nc_trust_key_e(const char* public_key_text, nc_error* err) {
  return guard(err, [&] {
    require(public_key_text != nullptr, "nc_trust_key: public_key_text is NULL");
    const std::string_view text(public_key_text, ::strnlen(public_key_text, nc::Ed25519PublicKey::max_file_size + 1));
    nc::KeyStore().trust(nc::Ed25519PublicKey::parse_file_text(text, "nc_trust_key's public_key_text"));
  });
}

nc_status nc_sign_as(const char* dir, nc_signature_format format, nc_signing signing, nc_progress_fn progress,
                     void* user) {
  return nc_sign_as_e(dir, format, signing, progress, user, nullptr);
}

nc_status nc_sign_as_e(const char* dir, nc_signature_format format, nc_signing signing, nc_progress_fn progress,
                       void* user, nc_error* err) {
  return guard(err, [&] {
    require(dir != nullptr && *dir != '\0', "nc_sign_as: dir is NULL or empty");
    nc::SignatureFormat f{};
    nc::SignatureKind kind{};
    named("nc_sign_as", [&] {
      f = signature_format(format);
      kind = signing_kind(signing);
    });
    const nc::KeyStore store;
    if (kind == nc::SignatureKind::ed25519)
      nc::HmacTree::sign_as(dir, store.load_or_create_ed25519(), f, progress_of(progress, user));
    else
      nc::HmacTree::sign_as(dir, store.load_or_create(), f, progress_of(progress, user));
  });
}

nc_status nc_signer_of(const char* dir, nc_signing* signing_out, char** key_id_out) {
  return nc_signer_of_e(dir, signing_out, key_id_out, nullptr);
}

nc_status nc_signer_of_e(const char* dir, nc_signing* signing_out, char** key_id_out, nc_error* err) {
  return guard(err, [&] {
    require(signing_out != nullptr, "nc_signer_of: signing_out is NULL");
    if (key_id_out) *key_id_out = nullptr;
    require(dir != nullptr && *dir != '\0', "nc_signer_of: dir is NULL or empty");
    const nc::CheckpointSigner signer = nc::HmacTree::signer_of(dir);
    if (key_id_out && signer.kind == nc::SignatureKind::ed25519) *key_id_out = malloc_copy(signer.key_id);
    *signing_out = static_cast<nc_signing>(signer.kind);
  });
}

nc_status nc_options_new(nc_options** out) { return nc_options_new_e(out, nullptr); }

nc_status nc_options_new_e(nc_options** out, nc_error* err) {
  return guard(err, [&] {
    require(out != nullptr, "nc_options_new: out is NULL");
    *out = nullptr;
    *out = new nc_options();
  });
}

void nc_options_free(nc_options* opts) { delete opts; }

nc_status nc_options_set_leave_running(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.leave_running = on != 0; });
}
nc_status nc_options_set_shell_job(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.shell_job = on != 0; });
}
nc_status nc_options_set_tcp_established(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.tcp_established = on != 0; });
}
nc_status nc_options_set_tcp_close(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.tcp_close = on != 0; });
}
nc_status nc_options_set_ext_unix_sk(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.ext_unix_sk = on != 0; });
}
nc_status nc_options_set_file_locks(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.file_locks = on != 0; });
}
nc_status nc_options_set_manage_cgroups(nc_options* o, nc_cgroup_mode mode) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) {
    const int m = enum_bits(mode);
    require(m >= NC_CGROUP_DEFAULT && m <= NC_CGROUP_IGNORE, "unknown mode " + std::to_string(m));
    c.manage_cgroups = static_cast<nc::CgroupMode>(m);
  });
}
nc_status nc_options_add_external(nc_options* o, const char* spec) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) { c.external.push_back(required_value(spec)); });
}
nc_status nc_options_set_work_dir(nc_options* o, const char* dir) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.work_dir = dir ? dir : ""; });
}
nc_status nc_options_set_log_level(nc_options* o, int level) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) {
    require(level >= 0 && level <= 4, "the level must be 0 to 4");
    c.log_level = level;
  });
}
nc_status nc_options_set_timeout_ms(nc_options* o, unsigned int ms) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.timeout = std::chrono::milliseconds(ms); });
}
nc_status nc_options_set_image_stream(nc_options* o, int enabled) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.stream_images = enabled != 0; });
}
nc_status nc_options_set_restore_mode(nc_options* o, nc_restore_mode mode) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) {
    const int m = enum_bits(mode);
    require(m == NC_RESTORE_DETACHED || m == NC_RESTORE_CHILD, "unknown mode " + std::to_string(m));
    c.restore_mode = static_cast<nc::RestoreMode>(m);
  });
}

nc_status nc_options_set_compression(nc_options* o, nc_compression compression) {
  return set_option(o, __func__, [&](nc_options& all) {
    const int c = enum_bits(compression);
    require(c == NC_COMPRESSION_NONE || c == NC_COMPRESSION_ZSTD, "unknown compression " + std::to_string(c));
    all.transfer.compression = static_cast<nc::Compression>(c);
  });
}

nc_status nc_export(const char* dir, int fd, const nc_options* opts) { return nc_export_e(dir, fd, opts, nullptr); }

nc_status nc_export_e(const char* dir, int fd, const nc_options* opts, nc_error* err) {
  return guard(err, [&] {
    require(dir != nullptr && *dir != '\0', "nc_export: dir is NULL or empty");
    require(fd >= 0, "nc_export: fd is negative");
    named("nc_export", [&] { nc::export_checkpoint(dir, fd, opts ? opts->transfer : nc::TransferOptions{}); });
  });
}

nc_status nc_import(int fd, const char* dir, const nc_options* opts) { return nc_import_e(fd, dir, opts, nullptr); }

nc_status nc_import_e(int fd, const char* dir, const nc_options*, nc_error* err) {
  return guard(err, [&] {
    require(dir != nullptr && *dir != '\0', "nc_import: dir is NULL or empty");
    require(fd >= 0, "nc_import: fd is negative");
    named("nc_import", [&] { nc::import_checkpoint(fd, dir); });
  });
}

nc_status nc_options_add_receiver_has(nc_options* o, const char* signature_sha256) {
  return set_option(o, __func__, [&](nc_options& all) {
    require(signature_sha256 != nullptr, "signature_sha256 is NULL");
    const std::string_view sha(signature_sha256);
    require(nc::array_from_lower_hex<32>(sha).has_value(),
            "signature_sha256 must be the SHA-256 of a layer's checkpoint.hmac as 64 lowercase hex digits");
    require(all.receiver_has.size() < nc::CheckpointChain::max_layers,
            "more layers held than a chain may have (" + std::to_string(nc::CheckpointChain::max_layers) + ")");
    all.receiver_has.emplace_back(sha);
  });
}

nc_status nc_export_chain(const char* layer_dir, int fd, const nc_options* opts) {
  return nc_export_chain_e(layer_dir, fd, opts, nullptr);
}

nc_status nc_export_chain_e(const char* layer_dir, int fd, const nc_options* opts, nc_error* err) {
  return guard(err, [&] {
    require(layer_dir != nullptr && *layer_dir != '\0', "nc_export_chain: layer_dir is NULL or empty");
    require(fd >= 0, "nc_export_chain: fd is negative");
    nc::ChainTransferOptions options;
    if (opts) options = {opts->transfer.compression, opts->receiver_has};
    named("nc_export_chain", [&] { nc::export_chain(layer_dir, fd, options); });
  });
}

nc_status nc_import_chain(int fd, const char* store_dir, const nc_options* opts, char** layer_out) {
  return nc_import_chain_e(fd, store_dir, opts, layer_out, nullptr);
}

nc_status nc_import_chain_e(int fd, const char* store_dir, const nc_options*, char** layer_out, nc_error* err) {
  if (layer_out) *layer_out = nullptr;
  return guard(err, [&] {
    require(store_dir != nullptr && *store_dir != '\0', "nc_import_chain: store_dir is NULL or empty");
    require(fd >= 0, "nc_import_chain: fd is negative");
    named("nc_import_chain", [&] {
      const std::filesystem::path newest = nc::import_chain(fd, store_dir);
      if (layer_out) *layer_out = malloc_copy(newest.native());
    });
  });
}

nc_status nc_options_set_reply_timeout_ms(nc_options* o, unsigned int ms) {
  return set_option(o, __func__, [&](nc_options& all) {
    all.reply_timeout = ms == 0 ? nc::MigrateOptions{}.reply_timeout : std::chrono::milliseconds(ms);
  });
}

nc_status nc_options_set_post_copy(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc_options& all) { all.post_copy = on != 0; });
}

nc_status nc_options_set_receiver_key(nc_options* o, const char* public_key_text) {
  return set_option(o, __func__, [&](nc_options& all) {
    all.receiver_key.reset();  // a text that does not parse leaves none, not the one before
    if (public_key_text)
      all.receiver_key = nc::Ed25519PublicKey::parse_file_text(public_key_text, "nc_options_set_receiver_key's text");
  });
}

nc_status nc_migrate(nc_runtime* rt, const char* container_id, pid_t pid, const char* work_dir, int connected_fd,
                     const nc_options* opts, nc_migration_report* report) {
  return nc_migrate_e(rt, container_id, pid, work_dir, connected_fd, opts, report, nullptr);
}

nc_status nc_migrate_e(nc_runtime* rt, const char* container_id, pid_t pid, const char* work_dir, int connected_fd,
                       const nc_options* opts, nc_migration_report* report, nc_error* err) {
  return guard(err, [&] {
    require(rt != nullptr, "nc_migrate: the runtime is NULL");
    require(container_id != nullptr && *container_id != '\0', "nc_migrate: container_id is NULL or empty");
    require(work_dir != nullptr && *work_dir != '\0', "nc_migrate: work_dir is NULL or empty");
    require(report == nullptr || report->size >= offsetof(nc_migration_report, downtime_ms),
            "nc_migrate: report->size is not set (set it to sizeof(nc_migration_report))");
    const nc_options defaults;
    const nc_options& o = opts ? *opts : defaults;
    nc::ContainerInfo info;
    info.id = container_id;
    info.pid = pid;
    info.start_ticks = o.start_ticks;
    info.annotations = o.annotations;
    info.runtime_files = o.runtime_files;
    nc::MigrationReport done;
    named("nc_migrate", [&] {
      done = nc::migrate(rt->criu, info, work_dir, connected_fd, {o.criu, o.transfer, o.reply_timeout, o.post_copy, o.receiver_key});
    });
    if (!report) return;
    nc_migration_report filled{};
    filled.size = std::min(report->size, sizeof filled);
    filled.downtime_ms = static_cast<unsigned long long>(done.downtime.count());
    filled.dump_ms = static_cast<unsigned long long>(done.dump.count());
    filled.transfer_ms = static_cast<unsigned long long>(done.transfer.count());
    filled.restore_ms = static_cast<unsigned long long>(done.restore.count());
    filled.bytes_sent = done.bytes_sent;
    filled.rounds = done.rounds;
    filled.restored_pid = done.restored_pid;
    copy_cut(done.rounds_reason, filled.rounds_reason);
    copy_cut(nc::printable(done.restored_dir), filled.restored_dir);  // the receiver's word: shown safe
    filled.post_copy_ms = static_cast<unsigned long long>(done.post_copy.count());
    filled.pages_sent = done.pages_sent;
    copy_cut(done.receiver_key_id, filled.receiver_key_id);
    std::memcpy(report, &filled, filled.size);  // a caller built against an older, shorter struct gets its part
  });
}

nc_status nc_receive(nc_runtime* rt, int connected_fd, const char* store_dir, const nc_options* opts,
                     pid_t* restored_pid, char** reply_out) {
  return nc_receive_e(rt, connected_fd, store_dir, opts, restored_pid, reply_out, nullptr);
}

nc_status nc_receive_e(nc_runtime* rt, int connected_fd, const char* store_dir, const nc_options* opts,
                       pid_t* restored_pid, char** reply_out, nc_error* err) {
  return nc_receive_ex_e(rt, connected_fd, store_dir, opts, restored_pid, reply_out, nullptr, err);
}

nc_status nc_receive_ex(nc_runtime* rt, int connected_fd, const char* store_dir, const nc_options* opts,
                        pid_t* restored_pid, char** reply_out, int* source_told) {
  return nc_receive_ex_e(rt, connected_fd, store_dir, opts, restored_pid, reply_out, source_told, nullptr);
}

nc_status nc_receive_ex_e(nc_runtime* rt, int connected_fd, const char* store_dir, const nc_options* opts,
                          pid_t* restored_pid, char** reply_out, int* source_told, nc_error* err) {
  if (restored_pid) *restored_pid = 0;
  if (reply_out) *reply_out = nullptr;
  if (source_told) *source_told = 0;
  return guard(err, [&] {
    require(rt != nullptr, "nc_receive: the runtime is NULL");
    require(store_dir != nullptr && *store_dir != '\0', "nc_receive: store_dir is NULL or empty");
    named("nc_receive", [&] {
      const nc::ReceivedMigration received =
          nc::receive_migration(rt->criu, connected_fd, store_dir, opts ? opts->criu : nc::CriuOptions(),
                                opts ? opts->reply_timeout : nc::MigrateOptions{}.reply_timeout);
      ::close(received.tree.pidfd);
      if (restored_pid) *restored_pid = received.tree.pid;
      if (reply_out) *reply_out = malloc_copy(received.reply.substr(0, received.reply.find('\n')));
      if (source_told) *source_told = received.source_told ? 1 : 0;
    });
  });
}

nc_status nc_options_set_insecure_registry(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc_options& all) { all.registry.insecure = on != 0; });
}

nc_status nc_push_image(const char* dir, const char* reference, const nc_options* opts, char** digest_out) {
  return nc_push_image_e(dir, reference, opts, digest_out, nullptr);
}

nc_status nc_push_image_e(const char* dir, const char* reference, const nc_options* opts, char** digest_out,
                          nc_error* err) {
  if (digest_out) *digest_out = nullptr;
  return guard(err, [&] {
    require(dir != nullptr && *dir != '\0', "nc_push_image: dir is NULL or empty");
    require(reference != nullptr && *reference != '\0', "nc_push_image: reference is NULL or empty");
    named("nc_push_image", [&] {
      const nc::PushedImage pushed = nc::push_image(dir, reference, opts ? opts->registry : nc::RegistryOptions{});
      if (digest_out) *digest_out = malloc_copy(pushed.manifest_digest);
    });
  });
}

nc_status nc_pull_image(const char* reference, const char* dir, const nc_options* opts) {
  return nc_pull_image_e(reference, dir, opts, nullptr);
}

nc_status nc_pull_image_e(const char* reference, const char* dir, const nc_options* opts, nc_error* err) {
  return guard(err, [&] {
    require(reference != nullptr && *reference != '\0', "nc_pull_image: reference is NULL or empty");
    require(dir != nullptr && *dir != '\0', "nc_pull_image: dir is NULL or empty");
    named("nc_pull_image", [&] { nc::pull_image(reference, dir, opts ? opts->registry : nc::RegistryOptions{}); });
  });
}

nc_status nc_options_set_start_ticks(nc_options* o, unsigned long long start_ticks) {
  return set_option(o, __func__, [&](nc_options& all) { all.start_ticks = start_ticks; });
}

nc_status nc_options_set_signature_format(nc_options* o, nc_signature_format format) {
  return set_option(o, __func__, [&](nc_options& all) { all.signature_format = signature_format(format); });
}

nc_status nc_options_set_detect_container(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.detect_container = on != 0; });
}
nc_status nc_options_set_root(nc_options* o, const char* path) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) { c.root = optional_value(path); });
}
nc_status nc_options_add_inherit_fd(nc_options* o, int fd, const char* key) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) {
    // Checked now, where the caller can still tell which descriptor it meant.
    require(fd < 0 || ::fcntl(fd, F_GETFD) != -1, "descriptor " + std::to_string(fd) + " is not open in this process");
    c.inherit_fds.push_back({fd, required_value(key, "the key")});
  });
}
nc_status nc_options_add_join_ns(nc_options* o, const char* spec) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) { c.join_ns.push_back(required_value(spec)); });
}
nc_status nc_options_add_empty_ns(nc_options* o, const char* ns) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) { c.empty_ns.push_back(required_value(ns)); });
}
nc_status nc_options_set_network_lock(nc_options* o, nc_network_lock lock) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) {
    const int l = enum_bits(lock);
    require(l >= NC_NETWORK_LOCK_DEFAULT && l <= NC_NETWORK_LOCK_SKIP, "unknown method " + std::to_string(l));
    c.network_lock = static_cast<nc::NetworkLock>(l);
  });
}
nc_status nc_options_add_cgroup_root(nc_options* o, const char* spec) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) { c.cgroup_root.push_back(required_value(spec)); });
}
nc_status nc_options_set_cgroup_yard(nc_options* o, const char* path) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) { c.cgroup_yard = optional_value(path); });
}
nc_status nc_options_set_cgroup_props(nc_options* o, const char* yaml) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) { c.cgroup_props = optional_value(yaml); });
}
nc_status nc_options_set_freeze_cgroup(nc_options* o, const char* path) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) { c.freeze_cgroup = optional_value(path); });
}
nc_status nc_options_set_lsm_profile(nc_options* o, const char* profile) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) { c.lsm_profile = optional_value(profile); });
}
nc_status nc_options_set_lsm_mount_context(nc_options* o, const char* context) {
  return set_criu_option(o, __func__,
                         [&](nc::CriuOptions& c) { c.lsm_mount_context = optional_value(context); });
}
nc_status nc_options_set_skip_in_flight(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.skip_in_flight = on != 0; });
}
nc_status nc_options_set_parent(nc_options* o, const char* parent_dir) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.parent = parent_dir ? parent_dir : ""; });
}
nc_status nc_options_set_signing(nc_options* o, nc_signing signing) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.signing = signing_kind(signing); });
}
nc_status nc_options_set_auto_dedup(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.auto_dedup = on != 0; });
}
nc_status nc_options_set_link_remap(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.link_remap = on != 0; });
}
nc_status nc_options_set_ghost_limit(nc_options* o, unsigned long long bytes) {
  return set_criu_option(o, __func__, [&](nc::CriuOptions& c) { c.ghost_limit = bytes; });
}
nc_status nc_options_set_ghost_fiemap(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.ghost_fiemap = on != 0; });
}
nc_status nc_options_set_evasive_devices(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.evasive_devices = on != 0; });
}
nc_status nc_options_set_file_validation(nc_options* o, const char* method) {
  return set_criu_option(o, __func__,
                         [&](nc::CriuOptions& c) { c.file_validation = optional_value(method); });
}
nc_status nc_options_set_use_default_config(nc_options* o, int on) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.use_default_config = on != 0; });
}

nc_status nc_options_set_notify(nc_options* o, nc_notify_fn fn, void* user) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) {
    if (!fn) {
      c.notify = nullptr;
      return;
    }
    c.notify = [fn, user](const nc::NotifyEvent& e) {
      return fn(static_cast<nc_notification>(static_cast<int>(e.what)), e.pid, user) == 0;
    };
  });
}

nc_status nc_options_set_expected_container_id(nc_options* o, const char* container_id) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) { c.expected_container_id = container_id ? container_id : ""; });
}

nc_status nc_options_expect_annotation(nc_options* o, const char* name, const char* value) {
  return set_option(o, __func__, [&](nc::CriuOptions& c) {
    require(name != nullptr && *name != '\0' && value != nullptr, "the name is NULL or empty, or the value is NULL");
    c.expected_annotations.emplace_back(name, value);
  });
}

nc_status nc_options_add_annotation(nc_options* o, const char* name, const char* value) {
  return set_option(o, __func__, [&](nc_options& all) {
    const std::string n = required_value(name, "the name"), v = required_value(value);
    require(!n.empty(), "the name is empty");
    // metadata.json holds UTF-8 alone: refused now rather than by the dump.
    require(nc::is_valid_utf8(n) && nc::is_valid_utf8(v),
            "'" + nc::to_valid_utf8(n) + "': the name and the value must be UTF-8");
    require(v.size() <= NC_ANNOTATION_VALUE_MAX, "the value of '" + n + "' is " + std::to_string(v.size()) +
                                                     " bytes; at most " + std::to_string(NC_ANNOTATION_VALUE_MAX) +
                                                     " are recorded");
    require_new_name(all.annotations, n);
    all.annotations.emplace_back(n, v);
  });
}

nc_status nc_options_add_runtime_file(nc_options* o, const char* name, const void* data, size_t size) {
  return set_option(o, __func__, [&](nc_options& all) {
    const std::string n = required_value(name, "the name");
    const std::string shown = nc::to_valid_utf8(n);
    // A plain name: the file lands in runtime/ of the checkpoint and nowhere else; the signature
    // covers UTF-8 names alone.
    require(!n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos && nc::is_valid_utf8(n) &&
                n.size() <= NC_RUNTIME_FILE_NAME_MAX,
            "'" + shown + "' is not a plain file name (UTF-8, no '/', not . or .., at most " +
                std::to_string(NC_RUNTIME_FILE_NAME_MAX) + " bytes)");
    require(size <= NC_RUNTIME_FILE_MAX, "'" + shown + "' is " + std::to_string(size) + " bytes; at most " +
                                             std::to_string(NC_RUNTIME_FILE_MAX) + " are recorded");
    require(data != nullptr || size == 0, "data is NULL");
    require_new_name(all.runtime_files, n);
    all.runtime_files.emplace_back(n, size == 0 ? std::string() : std::string(static_cast<const char*>(data), size));
  });
}

nc_status nc_checkpoint_ex(nc_runtime* rt, const char* container_id, pid_t pid, const char* dir, const nc_options* opts) {
  return nc_checkpoint_ex_e(rt, container_id, pid, dir, opts, nullptr);
}

namespace {

// nc_checkpoint_ex_e and nc_predump_e: `operation` names the call in messages.
nc_status dump(const char* operation, nc_runtime* rt, const char* container_id, pid_t pid, const char* dir,
               const nc_options* opts, nc_error* err, bool predump) {
  return guard(err, [&] {
    const std::string op = operation;
    require(rt != nullptr, op + ": the runtime is NULL");
    require(container_id != nullptr && *container_id != '\0', op + ": container_id is NULL or empty");
    require(dir != nullptr && *dir != '\0', op + ": dir is NULL or empty");
    nc::ContainerInfo info;
    info.id = container_id;
    info.pid = pid;
    const nc_options defaults;
    const nc_options& o = opts ? *opts : defaults;
    info.start_ticks = o.start_ticks;
    info.annotations = o.annotations;
    info.runtime_files = o.runtime_files;
    if (predump) rt->criu.predump(info, dir, o.criu, o.signature_format);
    else rt->criu.checkpoint(info, dir, o.criu, o.signature_format);
  });
}

}  // namespace

nc_status nc_checkpoint_ex_e(nc_runtime* rt, const char* container_id, pid_t pid, const char* dir,
                             const nc_options* opts, nc_error* err) {
  return dump("checkpoint", rt, container_id, pid, dir, opts, err, false);
}

nc_status nc_predump(nc_runtime* rt, const char* container_id, pid_t pid, const char* dir, const nc_options* opts) {
  return nc_predump_e(rt, container_id, pid, dir, opts, nullptr);
}

nc_status nc_predump_e(nc_runtime* rt, const char* container_id, pid_t pid, const char* dir, const nc_options* opts,
                       nc_error* err) {
  return dump("predump", rt, container_id, pid, dir, opts, err, true);
}

namespace {

// What both restore entry points require; clears *restored_pid.
void check_restore(const nc_runtime* rt, const char* dir, pid_t* restored_pid) {
  require(restored_pid != nullptr, "restore: restored_pid is NULL");
  *restored_pid = 0;
  require(rt != nullptr, "restore: the runtime is NULL");
  require(dir != nullptr && *dir != '\0', "restore: dir is NULL or empty");
}

}  // namespace

nc_status nc_restore_ex(nc_runtime* rt, const char* dir, const nc_options* opts, pid_t* restored_pid) {
  return nc_restore_ex_e(rt, dir, opts, restored_pid, nullptr);
}

nc_status nc_restore_ex_e(nc_runtime* rt, const char* dir, const nc_options* opts, pid_t* restored_pid, nc_error* err) {
  return guard(err, [&] {
    check_restore(rt, dir, restored_pid);
    *restored_pid = rt->criu.restore(dir, opts ? opts->criu : nc::CriuOptions());
  });
}

nc_status nc_restore_pidfd(nc_runtime* rt, const char* dir, const nc_options* opts, pid_t* restored_pid, int* pidfd) {
  return nc_restore_pidfd_e(rt, dir, opts, restored_pid, pidfd, nullptr);
}

nc_status nc_restore_pidfd_e(nc_runtime* rt, const char* dir, const nc_options* opts, pid_t* restored_pid, int* pidfd,
                             nc_error* err) {
  return guard(err, [&] {
    require(pidfd != nullptr, "nc_restore_pidfd: pidfd is NULL");
    *pidfd = -1;
    check_restore(rt, dir, restored_pid);
    const nc::RestoredTree tree = rt->criu.restore_tree(dir, opts ? opts->criu : nc::CriuOptions());
    *restored_pid = tree.pid;
    *pidfd = tree.pidfd;
  });
}

const char* nc_version_string(void) { return NC_VERSION_STRING; }

nc_status nc_criu_version(const nc_runtime* rt, int* major, int* minor, int* patch) {
  return nc_criu_version_e(rt, major, minor, patch, nullptr);
}

nc_status nc_criu_version_e(const nc_runtime* rt, int* major, int* minor, int* patch, nc_error* err) {
  return guard(err, [&] {
    require(rt != nullptr, "nc_criu_version: runtime is NULL");
    const auto& v = rt->criu.version();
    if (major) *major = v.major;
    if (minor) *minor = v.minor;
    if (patch) *patch = v.patch;
  });
}

nc_status nc_criu_check(const nc_runtime* rt) { return nc_criu_check_e(rt, nullptr); }

nc_status nc_criu_check_e(const nc_runtime* rt, nc_error* err) {
  return guard(err, [&] {
    require(rt != nullptr, "nc_criu_check: runtime is NULL");
    rt->criu.check();
  });
}

const char* nc_last_error(void) { return last_error.c_str(); }

const char* nc_status_name(nc_status s) { return nc::status_name(static_cast<nc::Status>(s)); }

}  // extern "C"
