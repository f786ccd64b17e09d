// Shared by the fuzz targets: the checks, a fixed key and private scratch folders.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/key_store.hpp>

namespace nc_fuzz {

namespace fs = std::filesystem;
namespace nc = nucleus::checkpoint;

// A finding: the abort makes libFuzzer save the input that caused it.
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "fuzz: %s\n", what);
  std::abort();
}
inline void expect(bool ok, const char* what) {
  if (!ok) fail(what);
}

// The status of the Error that f throws, or nothing when it returns. Anything else thrown escapes
// to std::terminate, which libFuzzer reports as a crash.
template <class F>
std::optional<nc::Status> status_of(F&& f) {
  try {
    f();
  } catch (const nc::Error& e) {
    return e.status();
  }
  return std::nullopt;
}

// A fixed key, so that a finding reproduces from its input alone.
inline const nc::HmacKey& fixed_key() {
  static const nc::HmacKey key = [] {
    std::array<unsigned char, nc::HmacKey::min_size> bytes{};
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 7 + 1);
    return nc::HmacKey::from_bytes(bytes);
  }();
  return key;
}

// A fresh 0700 folder (mkdtemp) in `base`, removed with all it holds when it goes. The default base
// is $NC_FUZZ_TMPDIR, scripts/fuzz.sh's 0700 scratch folder, else the current folder; never /tmp.
class ScratchDir {
 public:
  explicit ScratchDir(const fs::path& base = default_base()) {
    std::string templ = (base / "nc-fuzz-XXXXXX").native();
    if (!::mkdtemp(templ.data())) fail("mkdtemp failed: is NC_FUZZ_TMPDIR a writable folder?");
    path_ = templ;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const fs::path& path() const { return path_; }

  static fs::path default_base() {
    const char* base = std::getenv("NC_FUZZ_TMPDIR");
    return base && *base ? fs::path(base) : fs::current_path();
  }

 private:
  fs::path path_;
};

// Creates or replaces a regular file (0600) with exactly `data`.
inline void write_file(const fs::path& path, std::string_view data) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) fail("cannot create a file in the scratch folder");
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n <= 0) fail("cannot write a file in the scratch folder");
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  ::close(fd);
}

}  // namespace nc_fuzz
