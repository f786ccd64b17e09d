#include <nucleus/checkpoint/hmac_tree.hpp>

#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "signature/chunked_signature.hpp"
#include "fs/fs_util.hpp"
#include "signature/hmac_sha256.hpp"
#include "signature/signed_manifest.hpp"
#include "signature/sodium.hpp"
#include "fs/tree_walk.hpp"

namespace nucleus::checkpoint {

namespace {

using Mac = HmacSha256::Mac;

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

// The seed format's MAC: one serial HMAC over records of the whole tree in walk order.
class SeedTreeMac {
 public:
  SeedTreeMac(const HmacKey& key, const HmacTree::Progress& progress)
      : mac_(key.bytes()), buffer_(1 << 20), progress_(progress) {}

  Mac run(int root_fd) {
    walk_checkpoint_files(root_fd, [this](int fd, const struct stat& st, const std::string& rel) {
      if (S_ISLNK(st.st_mode))
        throw integrity(fmt::format("the seed signature format cannot cover '{}', the parent link of a chain layer: "
                                    "sign a layer in the chunked or manifest format", rel));
      const bool folder = S_ISDIR(st.st_mode);
      const char head[2] = {folder ? 'D' : 'F', '\0'};
      mac_.update(head, 2);
      mac_.update(rel.data(), rel.size());
      mac_.update("", 1);
      if (!folder) hash_file(fd, rel, static_cast<std::uint64_t>(st.st_size));
    }, HmacTree::signature_file, HmacTree::max_total_bytes());
    return mac_.final();
  }

 private:
  void hash_file(int fd, const std::string& rel, std::uint64_t size) {
    mac_.update_u64le(size);
    std::uint64_t total = 0;
    for (;;) {
      const ssize_t n = ::read(fd, buffer_.data(), buffer_.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw system_error(Status::io, errno, fmt::format("cannot read checkpoint file '{}'", rel));
      if (n == 0) break;
      mac_.update(buffer_.data(), static_cast<std::size_t>(n));
      total += static_cast<std::uint64_t>(n);
      hashed_ += static_cast<std::uint64_t>(n);
      if (progress_) progress_(hashed_);
    }
    if (total != size)
      throw integrity(fmt::format("checkpoint file '{}' changed size during the integrity scan", rel));
  }

  HmacSha256 mac_;
  std::vector<unsigned char> buffer_;
  const HmacTree::Progress& progress_;
  std::uint64_t hashed_ = 0;
};

// The seed format's stored MAC: 64 lowercase hex digits; surrounding ASCII white space is
// tolerated, as the seed trims it.
Mac parse_seed_signature(std::string_view text) {
  const auto ws = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  while (!text.empty() && ws(text.front())) text.remove_prefix(1);
  while (!text.empty() && ws(text.back())) text.remove_suffix(1);
  if (text.empty()) throw integrity(fmt::format("Checkpoint HMAC {} is empty", HmacTree::signature_file));
  const auto mac = HmacSha256::from_hex(text);
  if (!mac)
    throw integrity(fmt::format("Checkpoint HMAC {} is malformed: expected {} lowercase hex digits",
                                HmacTree::signature_file, 2 * crypto_auth_hmacsha256_BYTES));
  return *mac;
}

// What checkpoint.hmac holds, in any format, told apart by its first bytes: the seed format's
// MAC or a chunked signature (format 2 or 3).
using Signature = std::variant<Mac, ChunkedSignature>;

Signature read_signature(int dir_fd) {
  const std::string stored = read_signature_text(dir_fd);
  if (stored.starts_with(ChunkedSignature::family)) return ChunkedSignature::parse(stored);
  return parse_seed_signature(stored);
}

// With the HMAC key or the trusted public key the signature names, each loaded only here: an
// unsigned or malformed folder is an integrity failure even where there is no key.
void check(Signature signature, int dir_fd, const VerifyingKeys& keys, const HmacTree::Progress& progress) {
  if (auto* chunked = std::get_if<ChunkedSignature>(&signature)) {
    if (chunked->format == SignatureFormat::manifest)
      return verify_with_manifest(dir_fd, keys, std::move(*chunked), progress);
    verify_chunked(dir_fd, keys.key_for(*chunked), *chunked, progress);
  } else {
    require_same_mac(std::get<Mac>(signature), SeedTreeMac(keys.hmac(), progress).run(dir_fd));
  }
}

UniqueFd open_checkpoint(const std::filesystem::path& dir) { return open_dir(dir, "checkpoint directory"); }

constexpr const char* env_max_bytes = "NUCLEUS_CHECKPOINT_MAX_BYTES";
std::atomic<std::uint64_t> max_bytes_set{0};  // set_max_total_bytes's; 0: none

}  // namespace

std::uint64_t HmacTree::max_total_bytes() {
  if (const std::uint64_t set = max_bytes_set.load()) return set;
  const char* env = std::getenv(env_max_bytes);
  if (!env || !*env) return default_max_total_bytes;
  const std::string_view text = env;
  std::uint64_t bytes = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), bytes);
  if (ec != std::errc() || end != text.data() + text.size() || bytes == 0)
    throw Error(Status::invalid, fmt::format("{} is '{}': it must be a positive number of bytes, such as {} for 2 TiB",
                                             env_max_bytes, text.substr(0, 64), 2 * default_max_total_bytes));
  return bytes;
}

void HmacTree::set_max_total_bytes(std::uint64_t bytes) noexcept { max_bytes_set = bytes; }

std::string HmacTree::compute(int dir_fd, const HmacKey& key, const Progress& progress) {
  return HmacSha256::to_hex(SeedTreeMac(key, progress).run(dir_fd));
}

std::string HmacTree::compute(const std::filesystem::path& dir, const HmacKey& key, const Progress& progress) {
  return compute(open_checkpoint(dir).get(), key, progress);
}

void HmacTree::sign_as(int dir_fd, const HmacKey& key, SignatureFormat format, const Progress& progress) {
  if (format == SignatureFormat::chunked || format == SignatureFormat::manifest)
    return sign_chunked(dir_fd, key, progress, nullptr, nullptr, format);
  if (format != SignatureFormat::seed)
    throw Error(Status::invalid, fmt::format("unknown signature format {}", static_cast<int>(format)));
  // A stale temp file from an interrupted sign must not become part of what is signed.
  remove_stale_temp_at(dir_fd, signature_file);
  write_file_atomic_at(dir_fd, signature_file, compute(dir_fd, key, progress), 0600);
}

void HmacTree::sign_as(const std::filesystem::path& dir, const HmacKey& key, SignatureFormat format,
                       const Progress& progress) {
  sign_as(open_checkpoint(dir).get(), key, format, progress);
}

void HmacTree::sign_as(int dir_fd, const Ed25519SecretKey& key, SignatureFormat format, const Progress& progress) {
  require_signable(format, SignatureKind::ed25519);
  if (format != SignatureFormat::chunked && format != SignatureFormat::manifest)
    throw Error(Status::invalid, fmt::format("unknown signature format {}", static_cast<int>(format)));
  sign_chunked(dir_fd, key, progress, nullptr, nullptr, format);
}

void HmacTree::sign_as(const std::filesystem::path& dir, const Ed25519SecretKey& key, SignatureFormat format,
                       const Progress& progress) {
  sign_as(open_checkpoint(dir).get(), key, format, progress);
}

void HmacTree::sign(int dir_fd, const HmacKey& key, const Progress& progress) {
  sign_as(dir_fd, key, SignatureFormat::seed, progress);
}

void HmacTree::sign(const std::filesystem::path& dir, const HmacKey& key, const Progress& progress) {
  sign_as(open_checkpoint(dir).get(), key, SignatureFormat::seed, progress);
}

SignatureFormat HmacTree::format_of(int dir_fd) {
  const Signature signature = read_signature(dir_fd);
  const auto* chunked = std::get_if<ChunkedSignature>(&signature);
  return chunked ? chunked->format : SignatureFormat::seed;
}

SignatureFormat HmacTree::format_of(const std::filesystem::path& dir) { return format_of(open_checkpoint(dir).get()); }

CheckpointSigner HmacTree::signer_of(int dir_fd) {
  const Signature signature = read_signature(dir_fd);
  const auto* chunked = std::get_if<ChunkedSignature>(&signature);
  if (!chunked || chunked->kind == SignatureKind::hmac_sha256) return {};
  return {SignatureKind::ed25519, Ed25519PublicKey::hex(chunked->key_id)};
}

CheckpointSigner HmacTree::signer_of(const std::filesystem::path& dir) { return signer_of(open_checkpoint(dir).get()); }

void HmacTree::verify(int dir_fd, const HmacKey& key, const Progress& progress) {
  check(read_signature(dir_fd), dir_fd, key, progress);
}

void HmacTree::verify(int dir_fd, const KeyStore& store, const Progress& progress) {
  check(read_signature(dir_fd), dir_fd, store, progress);
}

void HmacTree::verify(const std::filesystem::path& dir, const HmacKey& key, const Progress& progress) {
  verify(open_checkpoint(dir).get(), key, progress);
}

void HmacTree::verify(const std::filesystem::path& dir, const KeyStore& store, const Progress& progress) {
  verify(open_checkpoint(dir).get(), store, progress);
}

}  // namespace nucleus::checkpoint
