// Shared by the C++ tests: Catch2 (v2 from Debian, or v3 from the wrap), private temporary
// folders under the build tree, and a guard for the key-file environment variable.
#pragma once

#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#else
#include <catch2/catch.hpp>
#endif

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <cstdint>
#include <string>
#include <string_view>

#include <nucleus/checkpoint/error.hpp>

namespace nucleus::checkpoint::test {

namespace fs = std::filesystem;

// The Error that f throws, or nothing when it throws none.
template <class F>
std::optional<Error> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return std::nullopt;
}

// The Error that f must throw.
template <class F>
Error require_error(F&& f) {
  auto e = error_of(std::forward<F>(f));
  REQUIRE(e.has_value());
  return *e;
}

inline bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

// A fresh 0700 folder under $NC_TEST_TMPDIR (root's, under /var/tmp; never /tmp), removed at the end.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("NC_TEST_TMPDIR");
    fs::path root = base && *base ? base : fs::current_path();
    fs::create_directories(root);
    std::string templ = (root / "nc-test-XXXXXX").native();
    if (!::mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const fs::path& p) const { return path_ / p; }

 private:
  fs::path path_;
};

inline void write_file(const fs::path& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << data;
  if (!out) throw std::runtime_error("cannot write " + p.native());
}

// Bytes that differ from chunk to chunk (no period of a power of two), so order and boundaries
// show; another salt gives other bytes at every offset.
inline std::string bytes_of_size(std::uint64_t size, unsigned salt = 0) {
  std::string s(size, '\0');
  for (std::uint64_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 131 + i / 251 + salt) % 251);
  return s;
}

// Flips one bit of the byte at `at` in place: the same file, the same size, one byte changed.
inline void flip_byte(const fs::path& file, off_t at) {
  const int fd = ::open(file.c_str(), O_RDWR | O_NOFOLLOW);
  REQUIRE(fd >= 0);
  unsigned char b = 0;
  REQUIRE(::pread(fd, &b, 1, at) == 1);
  b ^= 0x80;
  REQUIRE(::pwrite(fd, &b, 1, at) == 1);
  ::close(fd);
}

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Points NUCLEUS_CHECKPOINT_HMAC_KEY_FILE at `path` for the guard's lifetime.
class KeyFileEnv {
 public:
  explicit KeyFileEnv(const fs::path& path) {
    if (const char* old = std::getenv(name)) previous_ = old;
    ::setenv(name, path.c_str(), 1);
  }
  ~KeyFileEnv() {
    if (previous_) ::setenv(name, previous_->c_str(), 1);
    else ::unsetenv(name);
  }
  KeyFileEnv(const KeyFileEnv&) = delete;
  KeyFileEnv& operator=(const KeyFileEnv&) = delete;

 private:
  static constexpr const char* name = "NUCLEUS_CHECKPOINT_HMAC_KEY_FILE";
  std::optional<std::string> previous_;
};

// Sets the environment variable `name` to `value` (unset when value is null) for the guard's
// lifetime, then puts back what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) previous_ = old;
    if (value) ::setenv(name, value, 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (previous_) ::setenv(name_.c_str(), previous_->c_str(), 1);
    else ::unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> previous_;
};

// Hashing with libsodium (true) or the default engine, OpenSSL where built in (false): the
// engine is chosen from NUCLEUS_CHECKPOINT_HMAC_ENGINE each time a hash is set up.
inline ScopedEnv hash_engine_env(bool sodium) { return ScopedEnv("NUCLEUS_CHECKPOINT_HMAC_ENGINE", sodium ? "sodium" : nullptr); }

// A 0700 folder `keys` in dir, the seed tests' prepare_secure_checkpoint_key_dir.
inline fs::path secure_key_dir(const TempDir& dir) {
  const fs::path keys = dir / "keys";
  fs::create_directory(keys);
  fs::permissions(keys, fs::perms::owner_all, fs::perm_options::replace);
  return keys;
}

}  // namespace nucleus::checkpoint::test
