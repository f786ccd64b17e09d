// Where the checkpoint HMAC key lives, and how it is loaded or created safely.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>

#include <nucleus/checkpoint_export.h>

namespace nucleus::checkpoint {

// Key bytes in libsodium's guarded memory: locked, never swapped, left out of core dumps, wiped
// when freed. While any key (or a MAC keyed with one) lives, the process is not dumpable
// (PR_SET_DUMPABLE 0), since OpenSSL keeps its keyed state in ordinary heap; the last one to go
// restores what was there.
class NC_EXPORT HmacKey {
 public:
  static constexpr std::size_t min_size = 32;
  static constexpr std::size_t max_size = 4096;

  // Copies a key handed in from memory; throws Error(Status::key) if it is shorter than min_size.
  static HmacKey from_bytes(std::span<const unsigned char> bytes);
  // A new key of min_size bytes from libsodium's CSPRNG.
  static HmacKey generate();

  std::span<const unsigned char> bytes() const noexcept;

 private:
  struct Deleter {
    void operator()(unsigned char* p) const noexcept;
  };
  HmacKey(std::unique_ptr<unsigned char[], Deleter> data, std::size_t size) noexcept;
  std::unique_ptr<unsigned char[], Deleter> data_;
  std::size_t size_;
};

class NC_EXPORT KeyStore {
 public:
  // The seed's order: $NUCLEUS_CHECKPOINT_HMAC_KEY_FILE; as root /var/lib/nucleus/checkpoint-hmac.key;
  // otherwise $XDG_DATA_HOME (or ~/.local/share)/nucleus/checkpoint-hmac.key, then
  // ~/.nucleus/checkpoint-hmac.key. Never /tmp: with no home, throws Error(Status::key).
  static std::filesystem::path default_path();

  KeyStore();  // at default_path()
  explicit KeyStore(std::filesystem::path key_file);

  const std::filesystem::path& path() const noexcept { return path_; }

  // Reads the key. The file and its folder must be owned by the effective uid, carry no group or
  // other permission bits and not be symlinks. The file must be recognisably a key: exactly
  // HmacKey::min_size raw bytes (what load_or_create writes, as nucleus-container does), or the
  // line "nucleus-checkpoint-hmac-key 1" and then the key in lowercase hex (min_size to max_size
  // bytes) on one line; anything else is refused with Status::key.
  HmacKey load() const;
  // load(), or if there is no key file yet, a new key written O_EXCL 0600 and fsynced (its folder
  // created 0700). When two processes race, one key wins and both return it.
  HmacKey load_or_create() const;
  bool exists() const;

 private:
  std::filesystem::path path_;
};

}  // namespace nucleus::checkpoint
