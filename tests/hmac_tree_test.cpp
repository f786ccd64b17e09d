// HmacTree: the MAC over a whole checkpoint folder, checked against seed_hmac.py (an
// independent Python implementation of the seed's algorithm), and what sign/verify accept.
#include "test_support.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>

extern char** environ;

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

// f must throw Error(Status::integrity) whose message contains `part`.
template <class F>
void require_integrity_error(F&& f, std::string_view part) {
  const auto e = error_of(std::forward<F>(f));
  REQUIRE(e.has_value());
  INFO("message: " << e->what());
  CHECK(e->status() == Status::integrity);
  CHECK(contains(e->what(), part));
}

// A fixed key: the cross-checks must not depend on randomness to be reproducible.
HmacKey key_of(std::size_t size, unsigned char salt = 0) {
  std::vector<unsigned char> bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<unsigned char>(i * 31 + salt);
  return HmacKey::from_bytes(bytes);
}

// Bytes with no period of a power of two, so that read-buffer boundaries show.
std::string pattern(std::size_t size) {
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 131 + i / 251) % 251);
  return s;
}

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::lstat(p.c_str(), &st) == 0);
  return st.st_mode;
}

// Runs `python3 seed_hmac.py dir key_file`; returns its exit status and standard output.
std::pair<int, std::string> run_seed(const fs::path& dir, const fs::path& key_file) {
  const char* script = std::getenv("NC_TEST_SEED_HMAC");
  REQUIRE(script != nullptr);  // set by tests/meson.build
  int out[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  std::string python = "/usr/bin/python3", script_arg = script, dir_arg = dir.native(), key_arg = key_file.native();
  char* argv[] = {python.data(), script_arg.data(), dir_arg.data(), key_arg.data(), nullptr};
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, python.c_str(), &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  std::string output;
  if (rc == 0) {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(out[0], buf, sizeof buf)) != 0) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      output.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(out[0]);
  REQUIRE(rc == 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  return {WEXITSTATUS(status), output};
}

// The seed's MAC of dir under key, by seed_hmac.py; the key file lives outside dir.
std::string seed_mac(const TempDir& tmp, const fs::path& dir, const HmacKey& key) {
  const fs::path key_file = tmp / "seed-script.key";
  write_file(key_file, std::string(key.bytes().begin(), key.bytes().end()));
  const auto [status, output] = run_seed(dir, key_file);
  INFO("seed_hmac.py printed: " << output);
  REQUIRE(status == 0);
  REQUIRE(output.size() == 65);
  REQUIRE(output.back() == '\n');
  return output.substr(0, 64);
}

// A checkpoint as CRIU and the library leave it, before signing.
fs::path make_checkpoint(const TempDir& tmp) {
  const fs::path dir = tmp / "checkpoint";
  fs::create_directories(dir / "images");
  write_file(dir / "metadata.json", "{\"id\":\"abc\"}");
  write_file(dir / "dump.log", "(00.000001) Dumping finished successfully\n");
  write_file(dir / "images" / "pages-1.img", "snapshot");
  write_file(dir / "images" / "core-1.img", "corecore");  // same size as pages-1.img
  write_file(dir / "images" / "inventory.img", "inventory");
  return dir;
}

// The seed tests' tree: checkpoint/metadata.json and an empty checkpoint/images.
fs::path seed_checkpoint_dir(const TempDir& tmp) {
  const fs::path dir = tmp / "checkpoint";
  fs::create_directory(dir);
  fs::create_directory(dir / "images");
  write_file(dir / "metadata.json", "{\"id\":\"abc\"}");
  return dir;
}

// A chain of `levels` nested folders under dir, with a file at the bottom.
void make_chain(const fs::path& dir, int levels) {
  fs::path p = dir;
  for (int i = 0; i < levels; ++i) p /= "d";
  fs::create_directories(p);
  write_file(p / "leaf", "bottom");
}

}  // namespace

TEST_CASE("compute agrees with seed_hmac.py on awkward trees", "[hmac_tree]") {
  TempDir tmp;
  const fs::path dir = tmp / "tree";
  fs::create_directory(dir);
  SECTION("an empty folder") {}
  SECTION("empty files") {
    write_file(dir / "a", "");
    write_file(dir / "b", "");
  }
  SECTION("nested empty folders") {
    fs::create_directories(dir / "x" / "y" / "z");
    fs::create_directory(dir / "w");
  }
  SECTION("names with spaces, newlines and UTF-8") {
    write_file(dir / "with space.img", "1");
    write_file(dir / "new\nline", "2");
    write_file(dir / "é.img", "3");
    fs::create_directory(dir / "日本");
    write_file(dir / "日本" / "ファイル", "4");
  }
  SECTION("names in byte order, not locale order") {
    // "B" < "a" as bytes; "a" (a folder holding b) comes before "a.b" and "a-" before "a0",
    // whereas sorting whole paths would put "a.b" before "a/b".
    write_file(dir / "B", "upper");
    fs::create_directory(dir / "a");
    write_file(dir / "a" / "b", "in a");
    write_file(dir / "a.b", "dot");
    write_file(dir / "a-", "dash");
    write_file(dir / "a0", "zero");
    write_file(dir / "_", "underscore");
  }
  SECTION("a nested checkpoint.hmac is content, the top-level one is not") {
    write_file(dir / "checkpoint.hmac", "not part of the MAC");
    fs::create_directory(dir / "sub");
    write_file(dir / "sub" / "checkpoint.hmac", "part of the MAC");
  }
  SECTION("files across the 1 MiB read buffer") {
    write_file(dir / "big.img", pattern(3 << 20));
    write_file(dir / "exact.img", pattern(1 << 20));
    write_file(dir / "over.img", pattern((1 << 20) + 1));
  }
  SECTION("a folder nested max_depth - 1 levels") { make_chain(dir, HmacTree::max_depth - 1); }

  const HmacKey key = key_of(32);
  CHECK(HmacTree::compute(dir, key) == seed_mac(tmp, dir, key));
}

TEST_CASE("compute agrees with seed_hmac.py for keys of 32, 64, 65 and 200 bytes", "[hmac_tree]") {
  // Keys longer than SHA-256's 64-byte block are hashed first; shorter ones are zero-padded.
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  std::set<std::string> macs;
  for (const std::size_t size : {32, 64, 65, 200}) {
    INFO(size << "-byte key");
    const HmacKey key = key_of(size, 7);
    const std::string mac = HmacTree::compute(dir, key);
    CHECK(mac == seed_mac(tmp, dir, key));
    macs.insert(mac);
  }
  CHECK(macs.size() == 4);
}

TEST_CASE("compute matches a known answer", "[hmac_tree]") {
  // Computed once with seed_hmac.py (and by hand from the byte stream) for this tree and key.
  TempDir tmp;
  const fs::path dir = seed_checkpoint_dir(tmp);
  fs::create_directory(dir / "images" / "empty");
  write_file(dir / "images" / "pages-1.img", "snapshot");
  std::vector<unsigned char> bytes(32);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i);
  const HmacKey key = HmacKey::from_bytes(bytes);
  CHECK(HmacTree::compute(dir, key) == "4030dbce7de3ffb67e31558eb38c38c4437f536e6936c05e291e3b6cb2601a65");
}

TEST_CASE("only the top-level checkpoint.hmac is left out of the MAC", "[hmac_tree]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const HmacKey key = key_of(32);
  const std::string unsigned_mac = HmacTree::compute(dir, key);
  write_file(dir / "checkpoint.hmac", "anything");
  CHECK(HmacTree::compute(dir, key) == unsigned_mac);
  write_file(dir / "images" / "checkpoint.hmac", "anything");
  CHECK(HmacTree::compute(dir, key) != unsigned_mac);
}

TEST_CASE("compute by descriptor equals compute by path", "[hmac_tree]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const HmacKey key = key_of(32);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  const std::string by_fd = HmacTree::compute(fd, key);
  ::close(fd);
  CHECK(by_fd == HmacTree::compute(dir, key));
}

TEST_CASE("compute of a missing folder is Status::not_found", "[hmac_tree]") {
  TempDir tmp;
  const auto e = error_of([&] { (void)HmacTree::compute(tmp / "absent", key_of(32)); });
  REQUIRE(e.has_value());
  CHECK(e->status() == Status::not_found);
}

TEST_CASE("seed: test_checkpoint_hmac_detects_tampering_in_images", "[hmac_tree][seed]") {
  TempDir tmp;
  const KeyFileEnv env(secure_key_dir(tmp) / "checkpoint.key");
  const fs::path checkpoint_dir = seed_checkpoint_dir(tmp);
  write_file(checkpoint_dir / "images" / "pages-1.img", "snapshot");

  // The seed signs with the key store's key, created on first use, and verifies with it again.
  HmacTree::sign(checkpoint_dir, KeyStore().load_or_create());
  REQUIRE_NOTHROW(HmacTree::verify(checkpoint_dir, KeyStore().load()));

  write_file(checkpoint_dir / "images" / "pages-1.img", "tampered");
  require_integrity_error([&] { HmacTree::verify(checkpoint_dir, KeyStore().load()); }, "HMAC mismatch");
}

TEST_CASE("seed: test_checkpoint_hmac_rejects_symlinks_in_checkpoint_tree", "[hmac_tree][seed]") {
  TempDir tmp;
  const KeyFileEnv env(secure_key_dir(tmp) / "checkpoint.key");
  const fs::path checkpoint_dir = seed_checkpoint_dir(tmp);
  fs::create_symlink(checkpoint_dir / "metadata.json", checkpoint_dir / "images" / "metadata-link");

  require_integrity_error([&] { HmacTree::sign(checkpoint_dir, KeyStore().load_or_create()); }, "refuses symlink");
  CHECK_FALSE(fs::exists(fs::symlink_status(checkpoint_dir / "checkpoint.hmac")));
}

TEST_CASE("verify refuses a checkpoint changed after signing, or a bad signature", "[hmac_tree]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const fs::path sig = dir / "checkpoint.hmac";
  const fs::path images = dir / "images";
  const HmacKey key = key_of(32);
  const HmacKey other_key = key_of(32, 1);
  HmacTree::sign(dir, key);
  REQUIRE_NOTHROW(HmacTree::verify(dir, key));
  const std::string mac = read_file(sig);
  const HmacKey* verify_key = &key;
  std::string part = "HMAC mismatch";

  // Changes to the tree, all caught by the MAC itself.
  SECTION("a file's content changed, same size") { write_file(images / "pages-1.img", "snapsh0t"); }
  SECTION("a file added") { write_file(images / "pages-2.img", ""); }
  SECTION("a file removed") { fs::remove(images / "inventory.img"); }
  SECTION("a file renamed") { fs::rename(images / "core-1.img", images / "core-2.img"); }
  SECTION("an empty folder added") { fs::create_directory(images / "extra"); }
  SECTION("a file moved into another folder") { fs::rename(dir / "dump.log", images / "dump.log"); }
  SECTION("contents swapped between two files of one size") {
    write_file(images / "pages-1.img", "corecore");
    write_file(images / "core-1.img", "snapshot");
  }
  SECTION("verified with another key") { verify_key = &other_key; }

  // Signatures that are missing or malformed.
  SECTION("no checkpoint.hmac") {
    fs::remove(sig);
    part = "not signed";
  }
  SECTION("empty checkpoint.hmac") {
    write_file(sig, "");
    part = "empty";
  }
  SECTION("63 hex digits") {
    write_file(sig, mac.substr(0, 63));
    part = "malformed";
  }
  SECTION("65 hex digits") {
    write_file(sig, mac + "0");
    part = "malformed";
  }
  SECTION("uppercase hex") {
    std::string upper = mac;
    std::transform(upper.begin(), upper.end(), upper.begin(), [](char c) { return c >= 'a' && c <= 'f' ? static_cast<char>(c - 32) : c; });
    REQUIRE(upper != mac);
    write_file(sig, upper);
    part = "malformed";
  }
  SECTION("not hex") {
    write_file(sig, std::string(64, 'g'));
    part = "malformed";
  }
  SECTION("a NUL byte in place of a digit") {
    std::string with_nul = mac;
    with_nul[20] = '\0';
    write_file(sig, with_nul);
    part = "malformed";
  }
  SECTION("a NUL byte after the digits") {
    write_file(sig, mac + std::string(1, '\0'));
    part = "malformed";
  }
  SECTION("checkpoint.hmac is a symlink to the right MAC") {
    write_file(tmp / "outside.hmac", mac);
    fs::remove(sig);
    fs::create_symlink(tmp / "outside.hmac", sig);
    part = "symlink";
  }
  SECTION("checkpoint.hmac is a directory") {
    fs::remove(sig);
    fs::create_directory(sig);
    part = "not a regular file";
  }

  // Entries the walk refuses, wherever they are.
  SECTION("a FIFO at the top") {
    REQUIRE(::mkfifo((dir / "fifo").c_str(), 0600) == 0);
    part = "special file";
  }
  SECTION("a FIFO in a subfolder") {
    REQUIRE(::mkfifo((images / "fifo").c_str(), 0600) == 0);
    part = "special file";
  }
  SECTION("a symlink in a subfolder") {
    fs::create_symlink("pages-1.img", images / "link.img");
    part = "refuses symlink";
  }
  SECTION("a character device (/dev/null's numbers)") {
    REQUIRE(::mknod((images / "null").c_str(), S_IFCHR | 0600, ::makedev(1, 3)) == 0);
    part = "special file";
  }
  SECTION("a UNIX socket") {
    const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = (images / "sock").native();
    REQUIRE(path.size() < sizeof addr.sun_path);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    ::close(s);
    part = "special file";
  }
  SECTION("a name that is not UTF-8") {
    write_file(images / "\xff.img", "x");
    part = "not valid UTF-8";
  }

  require_integrity_error([&] { HmacTree::verify(dir, *verify_key); }, part);
}

TEST_CASE("verify ignores what the MAC does not cover", "[hmac_tree]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const fs::path page = dir / "images" / "pages-1.img";
  const HmacKey key = key_of(32);
  HmacTree::sign(dir, key);

  SECTION("a file's mode") {
    fs::permissions(page, static_cast<fs::perms>(0644), fs::perm_options::replace);
    REQUIRE((mode_of(page) & 07777) == 0644);
  }
  SECTION("a folder's mode") {
    fs::permissions(dir / "images", static_cast<fs::perms>(0755), fs::perm_options::replace);
    REQUIRE((mode_of(dir / "images") & 07777) == 0755);
  }
  SECTION("a file's and a folder's times") {
    const struct timespec times[2] = {{946684800, 0}, {946684800, 0}};  // 2000-01-01
    for (const fs::path& p : {page, dir / "images"}) {
      REQUIRE(::utimensat(AT_FDCWD, p.c_str(), times, AT_SYMLINK_NOFOLLOW) == 0);
      struct stat st {};
      REQUIRE(::stat(p.c_str(), &st) == 0);
      REQUIRE(st.st_mtim.tv_sec == 946684800);
    }
  }
  SECTION("a trailing newline after the MAC") {
    write_file(dir / "checkpoint.hmac", read_file(dir / "checkpoint.hmac") + "\n");
  }
  CHECK_NOTHROW(HmacTree::verify(dir, key));
}

TEST_CASE("sign writes checkpoint.hmac as 64 lowercase hex digits, mode 0600", "[hmac_tree]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const fs::path sig = dir / "checkpoint.hmac";
  const HmacKey key = key_of(32);
  HmacTree::sign(dir, key);

  const std::string mac = read_file(sig);
  CHECK(mac.size() == 64);
  CHECK(std::all_of(mac.begin(), mac.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }));
  CHECK(mac == HmacTree::compute(dir, key));
  CHECK(mac == seed_mac(tmp, dir, key));
  CHECK(mode_of(sig) == (S_IFREG | 0600));
  CHECK_FALSE(fs::exists(fs::symlink_status(dir / "checkpoint.hmac.tmp")));
  CHECK_NOTHROW(HmacTree::verify(dir, key));

  // Signing again gives the same MAC: the previous signature is not part of what is signed.
  HmacTree::sign(dir, key);
  CHECK(read_file(sig) == mac);
}

TEST_CASE("a stale checkpoint.hmac.tmp is not part of the signed tree", "[hmac_tree]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const fs::path stale = dir / "checkpoint.hmac.tmp";
  const HmacKey key = key_of(32);
  const std::string expected = HmacTree::compute(dir, key);
  const fs::path outside = tmp / "outside.txt";
  write_file(outside, "untouched");

  SECTION("a stale file") { write_file(stale, "left by an interrupted sign"); }
  // The temp file must be replaced, never written through.
  SECTION("a stale symlink") { fs::create_symlink(outside, stale); }

  HmacTree::sign(dir, key);
  CHECK_FALSE(fs::exists(fs::symlink_status(stale)));
  CHECK(read_file(dir / "checkpoint.hmac") == expected);
  CHECK(read_file(outside) == "untouched");
  CHECK_NOTHROW(HmacTree::verify(dir, key));
}

TEST_CASE("nesting deeper than max_depth is refused", "[hmac_tree]") {
  TempDir tmp;
  const fs::path dir = tmp / "deep";
  make_chain(dir, HmacTree::max_depth + 1);
  const HmacKey key = key_of(32);
  require_integrity_error([&] { (void)HmacTree::compute(dir, key); }, "nested deeper");
  require_integrity_error([&] { HmacTree::sign(dir, key); }, "nested deeper");
  CHECK_FALSE(fs::exists(fs::symlink_status(dir / "checkpoint.hmac")));
}

TEST_CASE("a path longer than max_path_length is refused", "[hmac_tree]") {
  TempDir tmp;
  const fs::path dir = tmp / "long";
  fs::create_directory(dir);
  // 20 * 251 bytes > 4096, and longer than PATH_MAX: built one folder at a time by descriptor.
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  for (int i = 0; i < 20 && fd >= 0; ++i) {
    const std::string name(250, static_cast<char>('a' + i));
    REQUIRE(::mkdirat(fd, name.c_str(), 0700) == 0);
    const int next = ::openat(fd, name.c_str(), O_RDONLY | O_DIRECTORY);
    ::close(fd);
    fd = next;
  }
  REQUIRE(fd >= 0);
  ::close(fd);
  require_integrity_error([&] { (void)HmacTree::compute(dir, key_of(32)); }, "longer than");
}

TEST_CASE("a folder swapped for a symlink during the walk never takes it out of the tree", "[hmac_tree]") {
  // Another thread keeps swapping images/ for a symlink to a folder outside the checkpoint while
  // verify runs. inotify on the outside folder shows whether anything there was ever opened.
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const fs::path outside = tmp / "outside";
  fs::create_directory(outside);
  write_file(outside / "pages-1.img", "snapshot");
  const HmacKey key = key_of(32);
  HmacTree::sign(dir, key);

  const int watch = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  REQUIRE(watch >= 0);
  REQUIRE(::inotify_add_watch(watch, outside.c_str(), IN_OPEN | IN_ACCESS) >= 0);
  std::atomic<bool> stop{false};
  std::thread swapper([&] {
    while (!stop) {
      fs::rename(dir / "images", dir / "images.real");
      fs::create_directory_symlink(outside, dir / "images");
      fs::remove(dir / "images");
      fs::rename(dir / "images.real", dir / "images");
    }
  });
  int passed = 0, refused = 0;
  for (int i = 0; i < 2000; ++i) {
    const auto e = error_of([&] { HmacTree::verify(dir, key); });
    if (!e) {
      ++passed;
    } else {
      CHECK(e->status() == Status::integrity);
      ++refused;
    }
  }
  stop = true;
  swapper.join();
  char events[4096];
  CHECK(::read(watch, events, sizeof events) < 0);  // nothing outside was opened or read
  ::close(watch);
  INFO(passed << " verified, " << refused << " refused");
  CHECK(refused > 0);  // the race was really run
  CHECK_NOTHROW(HmacTree::verify(dir, key));
}

TEST_CASE("the same descriptor gives the same MAC twice", "[hmac_tree]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(fd >= 0);
  const HmacKey key = key_of(32);
  const std::string first = HmacTree::compute(fd, key);
  CHECK(HmacTree::compute(fd, key) == first);
  HmacTree::sign(fd, key);
  CHECK_NOTHROW(HmacTree::verify(fd, key));
  ::close(fd);
  CHECK(first == HmacTree::compute(dir, key));
}
