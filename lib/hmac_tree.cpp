#include <nucleus/checkpoint/hmac_tree.hpp>

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/error.hpp>

#include "fs_util.hpp"
#include "hmac_sha256.hpp"
#include "sodium.hpp"
#include "utf8.hpp"

namespace nucleus::checkpoint {

namespace {

using Mac = HmacSha256::Mac;

Error integrity(std::string message) { return Error(Status::integrity, std::move(message)); }

// Names in one folder, in byte order (std::string compares as unsigned char, like Rust's Path).
std::vector<std::string> sorted_names(int dir_fd, const std::string& rel) {
  auto names = list_dir(dir_fd, fmt::format("checkpoint folder '{}'", rel));
  std::sort(names.begin(), names.end());
  return names;
}

class TreeMac {
 public:
  TreeMac(const HmacKey& key, const HmacTree::Progress& progress)
      : mac_(key.bytes()), buffer_(1 << 20), progress_(progress) {}

  Mac run(int root_fd) {
    walk(root_fd, "", 0);
    return mac_.final();
  }

 private:
  void update(const void* data, std::size_t size) { mac_.update(data, size); }
  void record(char kind, const std::string& rel) {
    const char head[2] = {kind, '\0'};
    update(head, 2);
    update(rel.data(), rel.size());
    update("", 1);
  }

  void walk(int dir_fd, const std::string& prefix, int depth) {
    if (depth > HmacTree::max_depth)
      throw integrity(fmt::format("checkpoint tree is nested deeper than {} levels at '{}'", HmacTree::max_depth, prefix));
    for (const std::string& name : sorted_names(dir_fd, prefix)) {
      if (depth == 0 && name == HmacTree::signature_file) continue;
      const std::string rel = prefix.empty() ? name : prefix + "/" + name;
      if (++entries_ > HmacTree::max_entries)
        throw integrity(fmt::format("checkpoint tree has more than {} entries", HmacTree::max_entries));
      if (rel.size() > HmacTree::max_path_length)
        throw integrity(fmt::format("checkpoint path '{}...' is longer than {} bytes", rel.substr(0, 64),
                                    HmacTree::max_path_length));
      if (!is_valid_utf8(name)) throw integrity(fmt::format("Checkpoint path '{}' is not valid UTF-8", rel));
      struct stat st {};
      if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
        throw integrity(fmt::format("checkpoint entry '{}' vanished during the integrity scan", rel));
      if (S_ISLNK(st.st_mode))
        throw integrity(fmt::format("Checkpoint integrity scan refuses symlink path '{}'", rel));
      if (S_ISDIR(st.st_mode)) {
        record('D', rel);
        UniqueFd child(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!child) throw integrity(fmt::format("cannot open checkpoint folder '{}': {}", rel, std::strerror(errno)));
        expect_same(child.get(), st, rel);
        walk(child.get(), rel, depth + 1);
      } else if (S_ISREG(st.st_mode)) {
        record('F', rel);
        hash_file(dir_fd, name, rel, st);
      } else {
        throw integrity(fmt::format("Checkpoint integrity scan rejects special file '{}' (only folders and regular "
                                    "files may be in a checkpoint)", rel));
      }
    }
  }

  // The entry opened must be the one examined: a swap in between is an integrity failure.
  static struct stat expect_same(int fd, const struct stat& seen, const std::string& rel) {
    const struct stat now = stat_fd(fd, rel);
    if (now.st_dev != seen.st_dev || now.st_ino != seen.st_ino || (now.st_mode & S_IFMT) != (seen.st_mode & S_IFMT))
      throw integrity(fmt::format("checkpoint entry '{}' was replaced during the integrity scan", rel));
    return now;
  }

  void hash_file(int dir_fd, const std::string& name, const std::string& rel, const struct stat& seen) {
    UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    if (!fd) throw integrity(fmt::format("cannot open checkpoint file '{}': {}", rel, std::strerror(errno)));
    const struct stat st = expect_same(fd.get(), seen, rel);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    std::array<unsigned char, 8> le{};
    for (std::size_t i = 0; i < le.size(); ++i) le[i] = static_cast<unsigned char>(size >> (8 * i));
    update(le.data(), le.size());
    std::uint64_t total = 0;
    for (;;) {
      const ssize_t n = ::read(fd.get(), buffer_.data(), buffer_.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw system_error(Status::io, errno, fmt::format("cannot read checkpoint file '{}'", rel));
      if (n == 0) break;
      update(buffer_.data(), static_cast<std::size_t>(n));
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
  std::size_t entries_ = 0;
};

std::string to_hex(const Mac& mac) {
  std::array<char, crypto_auth_hmacsha256_BYTES * 2 + 1> hex{};
  sodium_bin2hex(hex.data(), hex.size(), mac.data(), mac.size());
  return hex.data();
}

// The stored MAC: 64 lowercase hex digits; surrounding ASCII white space is tolerated, as the
// seed trims it.
Mac parse_signature(std::string_view text) {
  const auto ws = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  while (!text.empty() && ws(text.front())) text.remove_prefix(1);
  while (!text.empty() && ws(text.back())) text.remove_suffix(1);
  if (text.empty()) throw integrity(fmt::format("Checkpoint HMAC {} is empty", HmacTree::signature_file));
  const bool lower_hex = std::all_of(text.begin(), text.end(),
                                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
  if (text.size() != 2 * crypto_auth_hmacsha256_BYTES || !lower_hex)
    throw integrity(fmt::format("Checkpoint HMAC {} is malformed: expected {} lowercase hex digits",
                                HmacTree::signature_file, 2 * crypto_auth_hmacsha256_BYTES));
  Mac mac{};
  std::size_t len = 0;
  if (sodium_hex2bin(mac.data(), mac.size(), text.data(), text.size(), nullptr, &len, nullptr) != 0 || len != mac.size())
    throw integrity(fmt::format("Checkpoint HMAC {} is malformed", HmacTree::signature_file));
  return mac;
}

UniqueFd open_checkpoint(const std::filesystem::path& dir) { return open_dir(dir, "checkpoint directory"); }

}  // namespace

std::string HmacTree::compute(int dir_fd, const HmacKey& key, const Progress& progress) {
  return to_hex(TreeMac(key, progress).run(dir_fd));
}

std::string HmacTree::compute(const std::filesystem::path& dir, const HmacKey& key, const Progress& progress) {
  return compute(open_checkpoint(dir).get(), key, progress);
}

void HmacTree::sign(int dir_fd, const HmacKey& key, const Progress& progress) {
  // A stale temp file from an interrupted sign must not become part of what is signed.
  remove_stale_temp_at(dir_fd, signature_file);
  write_file_atomic_at(dir_fd, signature_file, compute(dir_fd, key, progress), 0600);
}

void HmacTree::sign(const std::filesystem::path& dir, const HmacKey& key, const Progress& progress) {
  sign(open_checkpoint(dir).get(), key, progress);
}

namespace {

Mac read_signature(int dir_fd) {
  std::string stored;
  try {
    stored = read_file_at(dir_fd, HmacTree::signature_file, 4096, "checkpoint signature");
  } catch (const Error& e) {
    if (e.status() == Status::not_found)
      throw integrity(fmt::format("checkpoint is not signed: it has no {}", HmacTree::signature_file));
    throw integrity(fmt::format("cannot read the checkpoint's signature: {}", e.what()));
  }
  return parse_signature(stored);
}

void check(const Mac& expected, int dir_fd, const HmacKey& key, const HmacTree::Progress& progress) {
  const Mac actual = TreeMac(key, progress).run(dir_fd);
  if (sodium_memcmp(expected.data(), actual.data(), expected.size()) != 0)
    throw integrity(
        "Checkpoint integrity verification failed: HMAC mismatch (the folder changed since it was signed, or it "
        "was signed with another key)");
}

}  // namespace

void HmacTree::verify(int dir_fd, const HmacKey& key, const Progress& progress) {
  check(read_signature(dir_fd), dir_fd, key, progress);
}

void HmacTree::verify(int dir_fd, const KeyStore& store, const Progress& progress) {
  const Mac expected = read_signature(dir_fd);
  check(expected, dir_fd, store.load(), progress);
}

void HmacTree::verify(const std::filesystem::path& dir, const HmacKey& key, const Progress& progress) {
  verify(open_checkpoint(dir).get(), key, progress);
}

void HmacTree::verify(const std::filesystem::path& dir, const KeyStore& store, const Progress& progress) {
  verify(open_checkpoint(dir).get(), store, progress);
}

}  // namespace nucleus::checkpoint
