// The verify path over generated trees. The input decodes into a small tree in a fresh private
// folder: folders, files of any content and size, names of any bytes but '/' and NUL, and at
// most one symlink or FIFO. Signing must refuse the tree (Status::integrity) exactly when it holds
// a special file or a name that is not UTF-8. Otherwise the MAC must equal one computed here from
// the decoded model, verify must pass, and once one byte of a file, a name or the signature has
// changed, verify must throw Status::integrity, unless the byte did not change.
#include <fcntl.h>
#include <sodium.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <fuzzer/FuzzedDataProvider.h>
#include <nucleus/checkpoint/hmac_tree.hpp>

#include "fuzz_support.hpp"

namespace {

namespace fs = std::filesystem;
using nc_fuzz::expect;
using nucleus::checkpoint::HmacTree;
using nucleus::checkpoint::KeyStore;
using nucleus::checkpoint::Status;

struct Entry {
  std::vector<std::string> parts;  // the relative path's names
  bool folder = false;
  std::string data;                // a file's bytes

  std::string rel() const {
    std::string r;
    for (const auto& p : parts) r += (r.empty() ? "" : "/") + p;
    return r;
  }
};

// Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF), written apart from
// the library's, which it checks.
bool is_utf8(std::string_view s) {
  static constexpr char32_t min_of[] = {0, 0x80, 0x800, 0x10000};
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    char32_t cp = c;
    if (c >= 0x80) {
      n = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 0;
      if (n == 0) return false;
      cp = c & (0x3F >> n);  // the lead byte's payload bits
      if (i + n >= s.size()) return false;
      for (std::size_t k = 1; k <= n; ++k) {
        const auto d = static_cast<unsigned char>(s[i + k]);
        if ((d & 0xC0) != 0x80) return false;
        cp = (cp << 6) | (d & 0x3F);
      }
      if (cp < min_of[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    }
    i += n + 1;
  }
  return true;
}

// The signature as the README defines it, from the model: a depth-first walk with each folder's
// names in byte order, which is the order of the paths' name lists.
std::string model_mac(std::vector<Entry> entries) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.parts < b.parts; });
  const auto key = nc_fuzz::fixed_key().bytes();
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, key.data(), key.size());
  const auto add = [&st](std::string_view s) {
    crypto_auth_hmacsha256_update(&st, reinterpret_cast<const unsigned char*>(s.data()), s.size());
  };
  for (const Entry& e : entries) {
    add(e.folder ? std::string_view("D\0", 2) : std::string_view("F\0", 2));
    add(e.rel());
    add(std::string_view("\0", 1));
    if (e.folder) continue;
    std::array<char, 8> le{};
    for (std::size_t i = 0; i < le.size(); ++i) le[i] = static_cast<char>(std::uint64_t{e.data.size()} >> (8 * i));
    add({le.data(), le.size()});
    add(e.data);
  }
  std::array<unsigned char, crypto_auth_hmacsha256_BYTES> mac{};
  crypto_auth_hmacsha256_final(&st, mac.data());
  std::array<char, 2 * mac.size() + 1> hex{};
  sodium_bin2hex(hex.data(), hex.size(), mac.data(), mac.size());
  return hex.data();
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The process's private folder (0700) with a key file for KeyStore; each input's tree goes in it.
struct Home {
  nc_fuzz::ScratchDir dir;
  fs::path key_file = dir.path() / "key";
  Home() {
    expect(sodium_init() >= 0, "sodium_init failed");
    const auto key = nc_fuzz::fixed_key().bytes();
    nc_fuzz::write_file(key_file, {reinterpret_cast<const char*>(key.data()), key.size()});
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const Home home;
  FuzzedDataProvider in(data, size);
  const nc_fuzz::ScratchDir tree(home.dir.path());  // removed at the end of this input
  const fs::path& root = tree.path();
  // Either HMAC engine the library may use (OpenSSL's or libsodium's), each against the model.
  if (in.ConsumeBool()) ::setenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE", "sodium", 1);
  else ::unsetenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE");

  std::vector<Entry> entries;  // folders and regular files
  std::vector<std::vector<std::string>> folders{{}};
  bool refused = false, special = false;
  for (int i = in.ConsumeIntegralInRange(0, 12); i > 0 && in.remaining_bytes() > 0; --i) {
    const auto parent = folders[in.ConsumeIntegralInRange<std::size_t>(0, folders.size() - 1)];
    std::string name = in.ConsumeRandomLengthString(12);
    std::erase(name, '/');
    std::erase(name, '\0');
    // The top-level signature and its temp file belong to sign.
    if (name.empty() || name == "." || name == ".." || (parent.empty() && name.starts_with(HmacTree::signature_file)))
      continue;
    Entry e{parent, false, {}};
    e.parts.push_back(name);
    const fs::path path = root / e.rel();
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) continue;  // the name is taken
    const int kind = in.ConsumeIntegralInRange(0, 9);
    if (kind <= 2) {
      expect(::mkdir(path.c_str(), 0700) == 0, "cannot make a folder");
      e.folder = true;
      folders.push_back(e.parts);
    } else if (kind <= 8) {
      e.data = in.ConsumeRandomLengthString(64);
      // Now and then a file that ends just past the library's 1 MiB read buffer.
      if (in.ConsumeIntegralInRange(0, 15) == 0) e.data.append(in.ConsumeIntegralInRange<std::size_t>(0, (1 << 20) + 64), 'x');
      nc_fuzz::write_file(path, e.data);
    } else {
      if (special) continue;
      special = refused = true;
      expect((in.ConsumeBool() ? ::symlink("target", path.c_str()) : ::mkfifo(path.c_str(), 0600)) == 0,
             "cannot make a symlink or FIFO");
      continue;
    }
    if (!is_utf8(name)) refused = true;
    entries.push_back(std::move(e));
  }

  const auto signed_status = nc_fuzz::status_of([&] { HmacTree::sign(root, nc_fuzz::fixed_key()); });
  if (refused) {
    expect(signed_status == Status::integrity, "sign did not refuse a tree with a special file or a non-UTF-8 name");
    return 0;
  }
  expect(!signed_status, "sign refused a tree of folders and files with UTF-8 names");
  const fs::path signature = root / HmacTree::signature_file;
  expect(read_file(signature) == model_mac(entries), "the signature differs from the README's algorithm");
  std::uint64_t total = 0, reported = 0;
  for (const Entry& e : entries) total += e.data.size();
  const auto progress = [&](std::uint64_t hashed) {
    expect(hashed >= reported && hashed <= total, "progress went back or past the bytes there are");
    reported = hashed;
  };
  expect(!nc_fuzz::status_of([&] { HmacTree::verify(root, KeyStore(home.key_file), progress); }),
         "verify refused the tree sign had just signed");

  // One byte changes: of a file or of the signature, or of a name.
  bool changed = true;
  std::vector<const Entry*> files;
  for (const Entry& e : entries)
    if (!e.folder) files.push_back(&e);
  if (entries.empty() || in.ConsumeBool()) {
    const std::size_t pick = in.ConsumeIntegralInRange<std::size_t>(0, files.size());  // files.size(): the signature
    const fs::path path = pick < files.size() ? root / files[pick]->rel() : signature;
    const std::size_t length = pick < files.size() ? files[pick]->data.size() : fs::file_size(signature);
    const int fd = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    expect(fd >= 0, "cannot open a file to change it");
    const auto byte = in.ConsumeIntegral<unsigned char>();
    if (length == 0) {
      expect(::pwrite(fd, &byte, 1, 0) == 1, "cannot append a byte");
    } else {
      const auto at = static_cast<off_t>(in.ConsumeIntegralInRange<std::size_t>(0, length - 1));
      unsigned char old = 0;
      expect(::pread(fd, &old, 1, at) == 1 && ::pwrite(fd, &byte, 1, at) == 1, "cannot change a byte");
      changed = old != byte;
    }
    ::close(fd);
  } else {
    const Entry& e = entries[in.ConsumeIntegralInRange<std::size_t>(0, entries.size() - 1)];
    Entry renamed = e;
    std::string& name = renamed.parts.back();
    const std::size_t at = in.ConsumeIntegralInRange<std::size_t>(0, name.size() - 1);
    name[at] = static_cast<char>(in.ConsumeIntegral<unsigned char>());
    struct stat st {};
    changed = name != e.parts.back() && name.find_first_of(std::string_view("/\0", 2)) == std::string::npos &&
              name != "." && name != ".." && !(renamed.parts.size() == 1 && name == HmacTree::signature_file) &&
              ::lstat((root / renamed.rel()).c_str(), &st) != 0;
    if (changed) expect(::rename((root / e.rel()).c_str(), (root / renamed.rel()).c_str()) == 0, "cannot rename");
  }
  const auto status = nc_fuzz::status_of([&] { HmacTree::verify(root, nc_fuzz::fixed_key()); });
  if (changed) expect(status == Status::integrity, "verify passed a tree changed since it was signed");
  else expect(!status, "verify refused a tree that did not change");
  return 0;
}
