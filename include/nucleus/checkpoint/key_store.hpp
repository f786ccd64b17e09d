// Where the checkpoint keys live (the HMAC key, the Ed25519 signing key, the trusted public keys),
// and how they are loaded or created safely.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>

#include <nucleus/checkpoint/ed25519.hpp>

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

  // The Ed25519 signing key: beside the HMAC key as checkpoint-ed25519.key (for the default store,
  // $NUCLEUS_CHECKPOINT_ED25519_KEY_FILE if set), under the HMAC key's rules. The file is
  // libsodium's 64-byte secret key (what load_or_create_ed25519 writes) or its 32-byte seed.
  const std::filesystem::path& ed25519_path() const noexcept { return ed25519_path_; }
  Ed25519SecretKey load_ed25519() const;
  // load_ed25519(), or a new key written as load_or_create writes one; a key it creates is
  // trusted at once (its public key written into the trust folder), so this host verifies what
  // it signs.
  Ed25519SecretKey load_or_create_ed25519() const;
  bool ed25519_exists() const;

  // The trust folder: the public keys whose Ed25519 signatures verification accepts, one key file
  // (Ed25519PublicKey::to_file_text) per "*.pub" file. Beside the HMAC key as trusted-keys/ (for
  // the default store, $NUCLEUS_CHECKPOINT_TRUSTED_KEYS if set). The folder and its files must be
  // owned by root or the effective uid, not writable by group or others, and not symlinks; at most
  // max_trusted_entries entries.
  static constexpr std::size_t max_trusted_entries = 1024;
  // Whether verification through a key store accepts HMAC signatures at all. A host that should
  // trust public keys only (a migration receiver) may still hold an HMAC key, for its own
  // checkpoints or by accident, and whoever else holds that key could then sign for it:
  // $NUCLEUS_CHECKPOINT_SIGNERS=ed25519 makes it refuse every HMAC signature; "any" or unset
  // accepts both. Anything else: Error(Status::invalid). A key handed in explicitly
  // (HmacTree::verify with an HmacKey, CriuRuntime::set_key) is the caller's choice, and is used.
  static bool accepts_hmac();
  const std::filesystem::path& trust_dir() const noexcept { return trust_dir_; }
  // The trusted key with this id; Status::integrity naming the id and the folder if there is none.
  Ed25519PublicKey trusted_key(const Ed25519PublicKey::Id& id) const;
  // Writes the key into the trust folder (created 0755 if absent, a missing parent 0700) as
  // KEY-ID.pub, mode 0644, atomically; returns that file's path.
  std::filesystem::path trust(const Ed25519PublicKey& key) const;

 private:
  std::filesystem::path path_;
  std::filesystem::path ed25519_path_;
  std::filesystem::path trust_dir_;
};

}  // namespace nucleus::checkpoint
