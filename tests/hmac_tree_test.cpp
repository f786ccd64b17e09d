// HmacTree: the MAC over a whole checkpoint folder in the three signature formats, checked against
// seed_hmac.py (an independent Python implementation of the seed's, the chunked and the manifest
// format), what sign/verify/format_of accept, and format 3's SignedManifest.
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
#include <cctype>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <sodium.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>

#include "signature/chunked_signature.hpp"
#include "signature/signed_manifest.hpp"
#include "fs/tree_walk.hpp"
#include "fs/unique_fd.hpp"

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

// Runs `python3 seed_hmac.py args...`; returns its exit status and standard output (and error,
// if asked for).
std::pair<int, std::string> run_script(std::vector<std::string> args, bool with_stderr = false) {
  const char* script = std::getenv("NC_TEST_SEED_HMAC");
  REQUIRE(script != nullptr);  // set by tests/meson.build
  args.insert(args.begin(), {"/usr/bin/python3", script});
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  if (with_stderr) posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
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

// The key's bytes in a file outside the checkpoint, for seed_hmac.py.
fs::path script_key_file(const TempDir& tmp, const HmacKey& key) {
  const fs::path key_file = tmp / "seed-script.key";
  write_file(key_file, std::string(key.bytes().begin(), key.bytes().end()));
  return key_file;
}

// The seed's MAC of dir under key, by seed_hmac.py.
std::string seed_mac(const TempDir& tmp, const fs::path& dir, const HmacKey& key) {
  const auto [status, output] = run_script({dir.native(), script_key_file(tmp, key).native()});
  INFO("seed_hmac.py printed: " << output);
  REQUIRE(status == 0);
  REQUIRE(output.size() == 65);
  REQUIRE(output.back() == '\n');
  return output.substr(0, 64);
}

// The chunked format's checkpoint.hmac for dir under key, by seed_hmac.py --format chunked.
std::string chunked_text_by_script(const TempDir& tmp, const fs::path& dir, const HmacKey& key,
                                   std::uint64_t chunk_size) {
  const auto [status, output] = run_script({"--format", "chunked", "--chunk-size", std::to_string(chunk_size),
                                            dir.native(), script_key_file(tmp, key).native()});
  INFO("seed_hmac.py --format chunked printed: " << output);
  REQUIRE(status == 0);
  return output;
}

// 4 KiB: many chunks in small files, for the MAC's arithmetic (chunked_tree_mac takes any chunk
// size). A signature must not have it: verification refuses chunks below min_chunk.
constexpr std::uint64_t small_chunk = 4096;
constexpr std::uint64_t min_chunk = ChunkedSignature::min_chunk_size;  // the smallest a signature may have
constexpr std::uint64_t default_chunk = ChunkedSignature::default_chunk_size;

std::string hex_of(const HmacSha256::Mac& mac) {
  char hex[2 * sizeof mac + 1];
  sodium_bin2hex(hex, sizeof hex, mac.data(), mac.size());
  return hex;
}

// checkpoint.hmac in the chunked format, spelled out here rather than by ChunkedSignature::to_text.
std::string chunked_text(std::uint64_t chunk_size, const std::string& mac_hex) {
  return "nucleus-checkpoint-signature 2\nchunk-size " + std::to_string(chunk_size) + "\nhmac-sha256 " + mac_hex + "\n";
}

UniqueFd open_folder(const fs::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(fd);
  return fd;
}

// The library's chunked signature text for dir at any chunk size (HmacTree::sign uses the default).
std::string chunked_text_of(const fs::path& dir, const HmacKey& key, std::uint64_t chunk_size) {
  return chunked_text(chunk_size, hex_of(chunked_tree_mac(open_folder(dir).get(), key, chunk_size, {})));
}

// Signs dir in the chunked format: at the default chunk size through the public HmacTree::sign,
// at any other by writing the text of chunked_tree_mac, which verify must accept as well.
void sign_chunked_with(const fs::path& dir, const HmacKey& key, std::uint64_t chunk_size) {
  if (chunk_size == default_chunk) return HmacTree::sign_as(dir, key, SignatureFormat::chunked);
  const std::string text = chunked_text_of(dir, key, chunk_size);
  write_file(dir / HmacTree::signature_file, text);
}

// The manifest format's checkpoint.hmac for dir under key, by seed_hmac.py --format manifest.
std::string manifest_text_by_script(const TempDir& tmp, const fs::path& dir, const HmacKey& key,
                                    std::uint64_t chunk_size) {
  const auto [status, output] = run_script({"--format", "manifest", "--chunk-size", std::to_string(chunk_size),
                                            dir.native(), script_key_file(tmp, key).native()});
  INFO("seed_hmac.py --format manifest printed: " << output);
  REQUIRE(status == 0);
  return output;
}

// seed_hmac.py --verify of dir under key: its exit status, and "verified" or why it refused.
std::pair<int, std::string> verify_by_script(const TempDir& tmp, const fs::path& dir, const HmacKey& key) {
  return run_script({"--verify", dir.native(), script_key_file(tmp, key).native()}, true);
}

// The library's manifest signature text for dir at any chunk size.
std::string manifest_text_of(const fs::path& dir, const HmacKey& key, std::uint64_t chunk_size) {
  return chunked_signature_of(open_folder(dir).get(), key, SignatureFormat::manifest, chunk_size, {}).to_text();
}

// Signs dir in the manifest format, as sign_chunked_with does in the chunked one.
void sign_manifest_with(const fs::path& dir, const HmacKey& key, std::uint64_t chunk_size) {
  if (chunk_size == default_chunk) return HmacTree::sign_as(dir, key, SignatureFormat::manifest);
  write_file(dir / HmacTree::signature_file, manifest_text_of(dir, key, chunk_size));
}

// Files whose sizes sit on either side of chunk boundaries: 0, 1, chunk-1, chunk, chunk+1 and
// several chunks plus a piece, each with content that differs from chunk to chunk.
void write_chunk_boundary_files(const fs::path& dir, std::uint64_t chunk) {
  const std::pair<const char*, std::uint64_t> files[] = {
      {"size-0", 0}, {"size-1", 1}, {"size-chunk-1", chunk - 1}, {"size-chunk", chunk},
      {"size-chunk+1", chunk + 1}, {"size-3chunks+5", 3 * chunk + 5}};
  for (const auto& [name, size] : files) write_file(dir / name, pattern(size));
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

// Trees both formats are cross-checked with seed_hmac.py on, each built into an empty folder.
struct AwkwardTree {
  const char* name;
  void (*build)(const fs::path& dir);
};

const std::vector<AwkwardTree>& awkward_trees() {
  static const std::vector<AwkwardTree> trees = {
      {"an empty folder", [](const fs::path&) {}},
      {"empty files",
       [](const fs::path& dir) {
         write_file(dir / "a", "");
         write_file(dir / "b", "");
       }},
      {"nested empty folders",
       [](const fs::path& dir) {
         fs::create_directories(dir / "x" / "y" / "z");
         fs::create_directory(dir / "w");
       }},
      {"names with spaces, newlines and UTF-8",
       [](const fs::path& dir) {
         write_file(dir / "with space.img", "1");
         write_file(dir / "new\nline", "2");
         write_file(dir / "é.img", "3");
         fs::create_directory(dir / "日本");
         write_file(dir / "日本" / "ファイル", "4");
       }},
      {"names in byte order, not locale order",
       [](const fs::path& dir) {
         // "B" < "a" as bytes; "a" (a folder holding b) comes before "a.b" and "a-" before "a0",
         // whereas sorting whole paths would put "a.b" before "a/b".
         write_file(dir / "B", "upper");
         fs::create_directory(dir / "a");
         write_file(dir / "a" / "b", "in a");
         write_file(dir / "a.b", "dot");
         write_file(dir / "a-", "dash");
         write_file(dir / "a0", "zero");
         write_file(dir / "_", "underscore");
       }},
      {"a nested checkpoint.hmac is content, the top-level one is not",
       [](const fs::path& dir) {
         write_file(dir / "checkpoint.hmac", "not part of the MAC");
         fs::create_directory(dir / "sub");
         write_file(dir / "sub" / "checkpoint.hmac", "part of the MAC");
       }},
      {"files across the 1 MiB read buffer",
       [](const fs::path& dir) {
         write_file(dir / "big.img", pattern(3 << 20));
         write_file(dir / "exact.img", pattern(1 << 20));
         write_file(dir / "over.img", pattern((1 << 20) + 1));
       }},
      {"files at 4 KiB chunk boundaries, in a subfolder",
       [](const fs::path& dir) {
         fs::create_directory(dir / "images");
         write_chunk_boundary_files(dir / "images", small_chunk);
       }},
      {"a folder nested max_depth - 1 levels", [](const fs::path& dir) { make_chain(dir, HmacTree::max_depth - 1); }},
  };
  return trees;
}

// Runs check(tmp, dir) for each awkward tree, built in a fresh folder, in a section of its own.
template <typename Check>
void on_awkward_trees(Check&& check) {
  for (const AwkwardTree& tree : awkward_trees()) {
    DYNAMIC_SECTION(tree.name) {
      TempDir tmp;
      const fs::path dir = tmp / "tree";
      fs::create_directory(dir);
      tree.build(dir);
      check(tmp, dir);
    }
  }
}

}  // namespace

TEST_CASE("compute agrees with seed_hmac.py on awkward trees", "[hmac_tree]") {
  on_awkward_trees([](const TempDir& tmp, const fs::path& dir) {
    const HmacKey key = key_of(32);
    CHECK(HmacTree::compute(dir, key) == seed_mac(tmp, dir, key));
  });
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

namespace {

// The known answers' tree: a seed checkpoint folder with an empty folder and a small pages image.
fs::path known_answer_tree(const TempDir& tmp) {
  const fs::path dir = seed_checkpoint_dir(tmp);
  fs::create_directory(dir / "images" / "empty");
  write_file(dir / "images" / "pages-1.img", "snapshot");
  return dir;
}

// The known answers' key: the bytes 0, 1, ..., 31.
HmacKey counting_key() {
  std::vector<unsigned char> bytes(32);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i);
  return HmacKey::from_bytes(bytes);
}

}  // namespace

TEST_CASE("compute matches a known answer", "[hmac_tree]") {
  // Computed once with seed_hmac.py (and by hand from the byte stream) for this tree and key.
  TempDir tmp;
  const fs::path dir = known_answer_tree(tmp);
  CHECK(HmacTree::compute(dir, counting_key()) == "4030dbce7de3ffb67e31558eb38c38c4437f536e6936c05e291e3b6cb2601a65");
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

// ---- The chunked format (version 2) ----

TEST_CASE("the chunked format agrees with seed_hmac.py --format chunked on awkward trees", "[hmac_tree][chunked]") {
  on_awkward_trees([](const TempDir& tmp, const fs::path& dir) {
    const HmacKey key = key_of(32);
    // Small chunks through chunked_tree_mac, the default through the public sign.
    CHECK(chunked_text_of(dir, key, small_chunk) == chunked_text_by_script(tmp, dir, key, small_chunk));
    const std::string by_script = chunked_text_by_script(tmp, dir, key, default_chunk);
    HmacTree::sign_as(dir, key, SignatureFormat::chunked);
    CHECK(read_file(dir / HmacTree::signature_file) == by_script);
    CHECK_NOTHROW(HmacTree::verify(dir, key));
  });
}

TEST_CASE("sign(chunked) agrees with seed_hmac.py on files at 4 MiB chunk boundaries, under both engines",
          "[hmac_tree][chunked]") {
  TempDir tmp;
  const fs::path dir = tmp / "tree";
  fs::create_directories(dir / "images");
  write_chunk_boundary_files(dir / "images", default_chunk);
  write_file(dir / "metadata.json", "{}");
  const HmacKey key = key_of(65, 3);  // longer than the HMAC block: hashed first
  const std::string by_script = chunked_text_by_script(tmp, dir, key, default_chunk);

  std::vector<std::string> signed_texts;
  for (const bool sodium : {false, true}) {
    INFO((sodium ? "libsodium" : "default engine"));
    const auto engine = hash_engine_env(sodium);
    HmacTree::sign_as(dir, key, SignatureFormat::chunked);
    signed_texts.push_back(read_file(dir / HmacTree::signature_file));
    CHECK(signed_texts.back() == by_script);
    CHECK(chunked_text_of(dir, key, small_chunk) == chunked_text_by_script(tmp, dir, key, small_chunk));
  }
  CHECK(signed_texts.front() == signed_texts.back());

  // Signed by one engine, verified by the other.
  {
    const auto engine = hash_engine_env(false);
    CHECK_NOTHROW(HmacTree::verify(dir, key));
  }
  const auto engine = hash_engine_env(true);
  CHECK_NOTHROW(HmacTree::verify(dir, key));
}

TEST_CASE("the chunked format matches known answers", "[hmac_tree][chunked]") {
  // Computed once with seed_hmac.py --format chunked for these trees and this key (and again from
  // the byte stream written out by hand), and kept here so that neither implementation can drift
  // from the format unnoticed.
  TempDir tmp;
  const fs::path dir = known_answer_tree(tmp);
  const HmacKey key = counting_key();

  HmacTree::sign_as(dir, key, SignatureFormat::chunked);
  CHECK(read_file(dir / HmacTree::signature_file) ==
        "nucleus-checkpoint-signature 2\n"
        "chunk-size 4194304\n"
        "hmac-sha256 64a2375a9c471ccb243276145a72e1f97dd76d33dac35ef2193ff4f1c2df6249\n");

  // Two chunks and a piece at 4 KiB: the chunk digests and their order are in the answer.
  write_file(dir / "images" / "pages-2.img", std::string(4096, 'a') + std::string(4096, 'b') + "c");
  CHECK(chunked_text_of(dir, key, small_chunk) ==
        chunked_text(small_chunk, "5cb0218c4a3cf3e964ae81e8192807cf308cc1fd8fdec14cdb555436fe62e068"));
}

TEST_CASE("the chunk size is bound into the MAC, even where every file is a single chunk", "[hmac_tree][chunked]") {
  // Every file shorter than both chunk sizes has the same digest at both: only the bound chunk
  // size tells the MACs apart, so a signature cannot be passed off as one of another chunk size.
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const HmacKey key = key_of(32);
  const auto mac_at = [&](std::uint64_t chunk_size) {
    return chunked_tree_mac(open_folder(dir).get(), key, chunk_size, {});
  };
  CHECK(mac_at(small_chunk) != mac_at(2 * small_chunk));
  CHECK(mac_at(default_chunk) != mac_at(ChunkedSignature::max_chunk_size));
}

TEST_CASE("verify refuses a chunked checkpoint changed after signing", "[hmac_tree][chunked]") {
  // Each change on a fresh tree, for small chunks and the default; the signature verifies before it.
  struct Change {
    const char* name;
    void (*apply)(const fs::path& dir, std::uint64_t chunk);
  };
  const Change changes[] = {
      {"a file's content changed, same size",
       [](const fs::path& dir, std::uint64_t) { write_file(dir / "images/pages-1.img", "snapsh0t"); }},
      {"a byte appended to a file",
       [](const fs::path& dir, std::uint64_t) { write_file(dir / "images/pages-1.img", "snapshot!"); }},
      {"a file cut short by a byte",
       [](const fs::path& dir, std::uint64_t) { fs::resize_file(dir / "images/pages-1.img", 7); }},
      {"an empty file given a byte", [](const fs::path& dir, std::uint64_t) { write_file(dir / "dump.log", "x"); }},
      {"a file added", [](const fs::path& dir, std::uint64_t) { write_file(dir / "images/pages-9.img", ""); }},
      {"a file removed", [](const fs::path& dir, std::uint64_t) { fs::remove(dir / "images/inventory.img"); }},
      {"a file renamed",
       [](const fs::path& dir, std::uint64_t) { fs::rename(dir / "images/core-1.img", dir / "images/core-2.img"); }},
      {"a file moved into another folder",
       [](const fs::path& dir, std::uint64_t) { fs::rename(dir / "metadata.json", dir / "images/metadata.json"); }},
      {"an empty folder added", [](const fs::path& dir, std::uint64_t) { fs::create_directory(dir / "images/extra"); }},
      {"an empty folder removed", [](const fs::path& dir, std::uint64_t) { fs::remove(dir / "images/empty"); }},
      {"an empty folder renamed",
       [](const fs::path& dir, std::uint64_t) { fs::rename(dir / "images/empty", dir / "images/emptz"); }},
      {"a folder with files renamed", [](const fs::path& dir, std::uint64_t) { fs::rename(dir / "images", dir / "imagez"); }},
      {"contents swapped between two files of one size",
       [](const fs::path& dir, std::uint64_t) {
         write_file(dir / "images/pages-1.img", "corecore");
         write_file(dir / "images/core-1.img", "snapshot");
       }},
      {"a file's first and last whole chunks swapped",
       [](const fs::path& dir, std::uint64_t chunk) {
         // Same size and the same chunk digests, only in another order.
         const std::string data = read_file(dir / "images/pages-2.img");
         const std::string first = data.substr(0, chunk), last = data.substr(2 * chunk, chunk);
         REQUIRE(first != last);
         write_file(dir / "images/pages-2.img", last + data.substr(chunk, chunk) + first + data.substr(3 * chunk));
       }},
      {"the chunk-size line changed, the MAC kept",
       [](const fs::path& dir, std::uint64_t chunk) {
         std::string text = read_file(dir / HmacTree::signature_file);
         const std::string line = "chunk-size " + std::to_string(chunk) + "\n";
         text.replace(text.find(line), line.size(), "chunk-size " + std::to_string(chunk * 2) + "\n");
         write_file(dir / HmacTree::signature_file, text);
       }},
      {"a digit of the MAC changed",
       [](const fs::path& dir, std::uint64_t) {
         std::string text = read_file(dir / HmacTree::signature_file);
         char& digit = text[text.size() - 2];
         digit = digit == '0' ? '1' : '0';
         write_file(dir / HmacTree::signature_file, text);
       }},
  };
  for (const std::uint64_t chunk : {min_chunk, default_chunk}) {
    for (const Change& change : changes) {
      INFO(change.name << ", chunk size " << chunk);
      TempDir tmp;
      const fs::path dir = make_checkpoint(tmp);
      fs::create_directory(dir / "images/empty");
      write_file(dir / "dump.log", "");
      write_file(dir / "images/pages-2.img", pattern(3 * chunk + 1));
      const HmacKey key = key_of(32);
      sign_chunked_with(dir, key, chunk);
      REQUIRE(HmacTree::format_of(dir) == SignatureFormat::chunked);
      REQUIRE_NOTHROW(HmacTree::verify(dir, key));
      change.apply(dir, chunk);
      require_integrity_error([&] { HmacTree::verify(dir, key); }, "HMAC mismatch");
    }
  }
}

TEST_CASE("verify of a chunked signature fails for every changed byte and with another key", "[hmac_tree][chunked]") {
  TempDir tmp;
  const fs::path dir = tmp / "tree";
  fs::create_directory(dir);
  write_chunk_boundary_files(dir, min_chunk);
  const HmacKey key = key_of(32);
  sign_chunked_with(dir, key, min_chunk);
  REQUIRE_NOTHROW(HmacTree::verify(dir, key));

  require_integrity_error([&] { HmacTree::verify(dir, key_of(32, 1)); }, "HMAC mismatch");
  require_integrity_error([&] { HmacTree::verify(dir, key_of(33)); }, "HMAC mismatch");

  // The first byte, the bytes on either side of each chunk boundary, and the last byte of every
  // file, each flipped alone and put back.
  int flipped = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const fs::path file = entry.path();
    if (file.filename() == HmacTree::signature_file) continue;
    const std::string original = read_file(file);
    std::set<std::size_t> offsets;
    for (std::size_t boundary = 0; boundary <= original.size(); boundary += min_chunk) {
      if (boundary > 0) offsets.insert(boundary - 1);
      if (boundary < original.size()) offsets.insert(boundary);
    }
    if (!original.empty()) offsets.insert(original.size() - 1);
    for (const std::size_t at : offsets) {
      INFO(file.filename() << " byte " << at);
      std::string changed = original;
      changed[at] = static_cast<char>(changed[at] ^ 0x01);
      write_file(file, changed);
      require_integrity_error([&] { HmacTree::verify(dir, key); }, "HMAC mismatch");
      ++flipped;
    }
    write_file(file, original);
  }
  CHECK(flipped > 10);
  CHECK_NOTHROW(HmacTree::verify(dir, key));
}

TEST_CASE("ChunkedSignature::parse accepts the three lines and nothing else", "[hmac_tree][chunked]") {
  const std::string hex = hex_of(HmacSha256::Mac{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe});
  REQUIRE(hex.size() == 64);
  const std::string header = "nucleus-checkpoint-signature 2\n", mac_line = "hmac-sha256 " + hex + "\n";
  const auto with_size = [&](const std::string& size) { return header + "chunk-size " + size + "\n" + mac_line; };
  const std::string min = std::to_string(min_chunk);

  SECTION("well-formed texts parse, and to_text writes them back byte for byte") {
    for (const std::uint64_t size : {min_chunk, 2 * min_chunk, default_chunk,
                                     ChunkedSignature::max_chunk_size}) {
      const std::string text = with_size(std::to_string(size));
      INFO(text);
      const ChunkedSignature parsed = ChunkedSignature::parse(text);
      CHECK(parsed.chunk_size == size);
      CHECK(hex_of(parsed.mac) == hex);
      CHECK(parsed.to_text() == text);
    }
  }

  SECTION("malformed texts are integrity errors, by parse and by verify") {
    std::string upper_hex = hex;
    std::transform(upper_hex.begin(), upper_hex.end(), upper_hex.begin(), [](char c) { return static_cast<char>(std::toupper(c)); });
    const std::pair<std::string, std::string> malformed[] = {
        // {text, part of the message}
        {header, "'chunk-size' line is missing"},
        {header.substr(0, header.size() - 1), "malformed"},  // the header alone, unterminated
        {header + "chunk-size " + min + "\n", "'hmac-sha256' line is missing"},
        {header + "chunk-size " + min, "'chunk-size' line is missing or unterminated"},
        {header + "chunk-size " + min + "\nhmac-sha256 " + hex, "'hmac-sha256' line is missing or unterminated"},
        {header + mac_line + "chunk-size " + min + "\n", "expected a 'chunk-size' line"},
        {header + "chunk-size:" + min + "\n" + mac_line, "expected a 'chunk-size' line"},
        {header + "chunk-size " + min + "\nhmac-sha512 " + hex + "\n", "expected a 'hmac-sha256' line"},
        {with_size(min) + "x", "unexpected text"},
        {with_size(min) + "\n", "unexpected text"},
        {with_size(min) + mac_line, "unexpected text"},
        {with_size(min) + std::string(1, '\0'), "unexpected text"},
        {header + "chunk-size " + min + "\r\n" + mac_line, "chunk-size must be a power of two"},
        {header + "chunk-size " + min + "\nhmac-sha256 " + hex + "\r\n", "lowercase hex"},
        {header + "chunk-size " + min + "\nhmac-sha256 " + upper_hex + "\n", "lowercase hex"},
        {header + "chunk-size " + min + "\nhmac-sha256 " + hex.substr(1) + "\n", "lowercase hex"},
        {header + "chunk-size " + min + "\nhmac-sha256 " + hex + "0\n", "lowercase hex"},
        {header + "chunk-size " + min + "\nhmac-sha256 " + std::string(64, 'g') + "\n", "lowercase hex"},
        {header + "chunk-size " + min + "\nhmac-sha256  " + hex + "\n", "lowercase hex"},
        {header + "chunk-size " + min + "\nhmac-sha256 \n", "lowercase hex"},
        {header + "chunk-size " + min + "\nhmac-sha256\n", "expected a 'hmac-sha256' line"},
        {with_size(""), "power of two"},
        {with_size("0" + min), "power of two"},
        {with_size("0"), "power of two"},
        {with_size("4097"), "power of two"},
        {with_size(std::to_string(3 * min_chunk / 2)), "power of two"},
        {with_size(std::to_string(min_chunk / 2)), "power of two from 1048576"},
        {with_size("4096"), "power of two from 1048576"},  // a power of two, but chunks too small
        {with_size("1"), "power of two"},
        {with_size("2147483648"), "power of two"},
        {with_size("18446744073709551616"), "power of two"},  // 2^64: out of range
        {with_size("-" + min), "power of two"},
        {with_size("+" + min), "power of two"},
        {with_size(" " + min), "power of two"},
        {with_size(min + " "), "power of two"},
        {with_size("0x100000"), "power of two"},
    };
    TempDir tmp;
    const fs::path dir = make_checkpoint(tmp);
    for (const auto& entry : malformed) {
      const std::string& text = entry.first;  // not a structured binding: lambdas capture it (clang 14)
      const std::string& part = entry.second;
      INFO("text: " << text);
      require_integrity_error([&] { (void)ChunkedSignature::parse(text); }, part);
      write_file(dir / HmacTree::signature_file, text);
      require_integrity_error([&] { HmacTree::verify(dir, key_of(32)); }, part);
      require_integrity_error([&] { (void)HmacTree::format_of(dir); }, part);
    }
  }

  SECTION("CRLF line ends, and a header not exactly version 2, are refused") {
    const std::string crlf = "nucleus-checkpoint-signature 2\r\nchunk-size " + min + "\r\nhmac-sha256 " + hex + "\r\n";
    for (const std::string& text : {crlf, "nucleus-checkpoint-signature 2 \n" + with_size(min).substr(header.size()),
                                    "nucleus-checkpoint-signature 02\n" + with_size(min).substr(header.size())}) {
      INFO("text: " << text);
      require_integrity_error([&] { (void)ChunkedSignature::parse(text); }, "");
    }
  }
}

TEST_CASE("a signature of an unknown version is refused as unknown", "[hmac_tree][chunked]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const HmacKey key = key_of(32);
  sign_chunked_with(dir, key, min_chunk);
  std::string text = read_file(dir / HmacTree::signature_file);
  text[text.find('2')] = '4';
  REQUIRE(text.starts_with("nucleus-checkpoint-signature 4\n"));
  write_file(dir / HmacTree::signature_file, text);
  for (const auto& check : {+[](const fs::path& d, const HmacKey& k) { HmacTree::verify(d, k); },
                            +[](const fs::path& d, const HmacKey&) { (void)HmacTree::format_of(d); }}) {
    const auto e = error_of([&] { check(dir, key); });
    REQUIRE(e.has_value());
    INFO("message: " << e->what());
    CHECK(e->status() == Status::integrity);
    CHECK(contains(e->what(), "'nucleus-checkpoint-signature 4'"));
    CHECK(contains(e->what(), "does not know"));
  }
}

TEST_CASE("format_of tells the two formats apart, and refuses an unsigned folder", "[hmac_tree][chunked]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const HmacKey key = key_of(32);
  require_integrity_error([&] { (void)HmacTree::format_of(dir); }, "not signed");

  HmacTree::sign(dir, key);  // no format given: the seed format, as before
  CHECK(HmacTree::format_of(dir) == SignatureFormat::seed);
  HmacTree::sign_as(dir, key, SignatureFormat::chunked);
  CHECK(HmacTree::format_of(dir) == SignatureFormat::chunked);
  CHECK(HmacTree::format_of(open_folder(dir).get()) == SignatureFormat::chunked);
  HmacTree::sign_as(dir, key, SignatureFormat::seed);
  CHECK(HmacTree::format_of(dir) == SignatureFormat::seed);
  HmacTree::sign_as(dir, key, SignatureFormat::chunked);
  HmacTree::sign(dir, key, {});  // an empty progress, as callers wrote it before there were formats
  CHECK(HmacTree::format_of(dir) == SignatureFormat::seed);
  write_file(dir / HmacTree::signature_file, read_file(dir / HmacTree::signature_file) + "\n");
  CHECK(HmacTree::format_of(dir) == SignatureFormat::seed);

  // format_of reads the text only: a chunked signature by another key is still chunked.
  sign_chunked_with(dir, key_of(32, 9), min_chunk);
  CHECK(HmacTree::format_of(dir) == SignatureFormat::chunked);
}

TEST_CASE("a seed-format checkpoint still verifies", "[hmac_tree][chunked]") {
  // An old checkpoint: signed by the seed's algorithm (seed_hmac.py), not by this library.
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const HmacKey key = key_of(32);
  write_file(dir / HmacTree::signature_file, seed_mac(tmp, dir, key) + "\n");
  CHECK(HmacTree::format_of(dir) == SignatureFormat::seed);
  CHECK_NOTHROW(HmacTree::verify(dir, key));
  write_file(dir / "images/pages-1.img", "snapsh0t");
  require_integrity_error([&] { HmacTree::verify(dir, key); }, "HMAC mismatch");
}

TEST_CASE("sign(chunked) writes checkpoint.hmac 0600, atomically, the same again, and reports progress",
          "[hmac_tree][chunked]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  write_file(dir / "images/pages-2.img", pattern(default_chunk + 5));
  write_file(dir / "checkpoint.hmac.tmp", "left by an interrupted sign");
  const HmacKey key = key_of(32);
  std::uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != "checkpoint.hmac.tmp") total += e.file_size();

  std::vector<std::uint64_t> reports;
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  HmacTree::sign_as(fd, key, SignatureFormat::chunked, [&](std::uint64_t bytes) { reports.push_back(bytes); });
  ::close(fd);

  const fs::path sig = dir / HmacTree::signature_file;
  const std::string text = read_file(sig);
  CHECK(text == chunked_text_by_script(tmp, dir, key, default_chunk));
  CHECK(mode_of(sig) == (S_IFREG | 0600));
  CHECK_FALSE(fs::exists(fs::symlink_status(dir / "checkpoint.hmac.tmp")));
  REQUIRE_FALSE(reports.empty());
  CHECK(std::is_sorted(reports.begin(), reports.end()));
  CHECK(reports.back() == total);
  CHECK_NOTHROW(HmacTree::verify(dir, key));
  HmacTree::sign_as(dir, key, SignatureFormat::chunked);
  CHECK(read_file(sig) == text);
}

TEST_CASE("sign refuses a SignatureFormat it does not know", "[hmac_tree][chunked]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const auto e = error_of([&] { HmacTree::sign_as(dir, key_of(32), static_cast<SignatureFormat>(4)); });
  REQUIRE(e.has_value());
  CHECK(e->status() == Status::invalid);
  CHECK_FALSE(fs::exists(fs::symlink_status(dir / HmacTree::signature_file)));
}

// ---- Hostile trees are bounded before any work ----

namespace {

// HmacTree::set_max_total_bytes for the guard's lifetime, then back to the default.
class MaxTotalBytes {
 public:
  explicit MaxTotalBytes(std::uint64_t bytes) { HmacTree::set_max_total_bytes(bytes); }
  ~MaxTotalBytes() { HmacTree::set_max_total_bytes(0); }
  MaxTotalBytes(const MaxTotalBytes&) = delete;
  MaxTotalBytes& operator=(const MaxTotalBytes&) = delete;
};

// A progress callback that fails the test the moment anything is hashed: a refusal must come
// first. It throws, so that a tree that would take days to hash fails the test at once.
const HmacTree::Progress must_not_hash = [](std::uint64_t) -> void {
  FAIL("hashing started before the tree was refused");
};

// Each way a tree gets read, with must_not_hash: verify in each format, compute and sign.
void require_refused_unread(const fs::path& dir, const HmacKey& key, std::string_view part) {
  const std::string zero_mac(64, '0'), v2 = chunked_text(default_chunk, zero_mac);
  const std::pair<SignatureFormat, std::string> signatures[] = {
      {SignatureFormat::seed, zero_mac},
      {SignatureFormat::chunked, v2},
      // No manifest lines: the limits are refused before they are looked at.
      {SignatureFormat::manifest, "nucleus-checkpoint-signature 3" + v2.substr(v2.find('\n'))}};
  for (const auto& [format, text] : signatures) {
    INFO("signature format " << static_cast<int>(format));
    write_file(dir / HmacTree::signature_file, text);
    require_integrity_error([&] { HmacTree::verify(dir, key, must_not_hash); }, part);
    require_integrity_error([&, format = format] { HmacTree::sign_as(dir, key, format, must_not_hash); }, part);
  }
  require_integrity_error([&] { (void)HmacTree::compute(dir, key, must_not_hash); }, part);
}

std::uint64_t file_bytes(const fs::path& dir) {
  std::uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path() != dir / HmacTree::signature_file) total += e.file_size();
  return total;
}

}  // namespace

TEST_CASE("a chunk size below 1 MiB is refused before anything is hashed, even under the right MAC",
          "[hmac_tree][chunked][limits]") {
  // The chunk size is read from the unverified checkpoint.hmac: tiny chunks would slow verification.
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  write_file(dir / "images/pages-2.img", pattern(3 * min_chunk + 1));
  const HmacKey key = key_of(32);
  for (const std::uint64_t chunk : {small_chunk, min_chunk / 2}) {
    INFO("chunk size " << chunk);
    sign_chunked_with(dir, key, chunk);
    require_integrity_error([&] { HmacTree::verify(dir, key, must_not_hash); }, "power of two from 1048576 to");
  }
  for (const std::uint64_t chunk : {min_chunk, default_chunk}) {
    INFO("chunk size " << chunk);
    sign_chunked_with(dir, key, chunk);
    CHECK_NOTHROW(HmacTree::verify(dir, key));
  }
}

TEST_CASE("a tree whose files add up to more than the byte limit is refused before a byte is hashed",
          "[hmac_tree][limits]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  write_file(dir / "images/pages-2.img", pattern(2 << 20));
  const std::uint64_t total = file_bytes(dir);
  const HmacKey key = key_of(32);
  CHECK(HmacTree::max_total_bytes() == HmacTree::default_max_total_bytes);

  SECTION("set by set_max_total_bytes") {
    const MaxTotalBytes limit(total - 1);
    const std::string named_total = "(" + std::to_string(total) + " bytes)";
    require_refused_unread(dir, key, "more than the 2.0 MiB (" + std::to_string(total - 1) + " bytes) limit");
    require_refused_unread(dir, key, named_total);
    require_refused_unread(dir, key, "NUCLEUS_CHECKPOINT_MAX_BYTES");
    {
      const MaxTotalBytes enough(total);
      HmacTree::sign_as(dir, key, SignatureFormat::chunked);
      CHECK_NOTHROW(HmacTree::verify(dir, key));
    }
  }
  SECTION("set by NUCLEUS_CHECKPOINT_MAX_BYTES") {
    const std::string low = std::to_string(total - 1);
    const ScopedEnv env("NUCLEUS_CHECKPOINT_MAX_BYTES", low.c_str());
    CHECK(HmacTree::max_total_bytes() == total - 1);
    require_refused_unread(dir, key, "more than the");
    const MaxTotalBytes wins(total);  // the setter wins over the variable
    HmacTree::sign(dir, key);
    CHECK_NOTHROW(HmacTree::verify(dir, key));
  }
  SECTION("a malformed NUCLEUS_CHECKPOINT_MAX_BYTES is an error, not no limit") {
    for (const char* bad : {"lots", "0", "-1", "1T", "18446744073709551616"}) {
      INFO(bad);
      const ScopedEnv env("NUCLEUS_CHECKPOINT_MAX_BYTES", bad);
      const auto e = error_of([&] { (void)HmacTree::compute(dir, key); });
      REQUIRE(e.has_value());
      CHECK(e->status() == Status::invalid);
      CHECK(contains(e->what(), "NUCLEUS_CHECKPOINT_MAX_BYTES"));
    }
  }
}

TEST_CASE("a sparse file is refused before a byte is hashed", "[hmac_tree][limits]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const fs::path sparse = dir / "images/pages-2.img";
  const HmacKey key = key_of(32);

  SECTION("terabytes of holes, at the default limit") {
    // The file: a petabyte (or as much as this file system allows) of nothing on disk.
    write_file(sparse, "");
    bool made = false;
    for (const std::uint64_t size : {std::uint64_t{1} << 50, std::uint64_t{8} << 40, std::uint64_t{100} << 30})
      if (!made) made = ::truncate(sparse.c_str(), static_cast<off_t>(size)) == 0;
    REQUIRE(made);
    require_refused_unread(dir, key, "checkpoint file 'images/pages-2.img' is sparse");
    require_refused_unread(dir, key, "NUCLEUS_CHECKPOINT_MAX_BYTES");
  }
  SECTION("more holes than a sixteenth of a lowered limit") {
    const MaxTotalBytes limit(32 << 20);  // 2 MiB of holes allowed
    write_file(sparse, "data");
    REQUIRE(::truncate(sparse.c_str(), 3 << 20) == 0);
    require_refused_unread(dir, key, "is sparse: 3.0 MiB (3145728 bytes) long");
    // Within the allowance: a checkpoint as usual.
    REQUIRE(::truncate(sparse.c_str(), 1 << 20) == 0);
    HmacTree::sign_as(dir, key, SignatureFormat::chunked);
    CHECK_NOTHROW(HmacTree::verify(dir, key));
  }
}

TEST_CASE("a folder of more names than the walk allows is refused without being read whole", "[hmac_tree][limits]") {
  // 2.5 million names used to be read and sorted before the limit was looked at. The limit here is
  // small and the folder large: refusing it must cost a few names' reading, not the folder's.
  TempDir tmp;
  const fs::path dir = tmp / "tree";
  fs::create_directory(dir);
  const UniqueFd fd = open_folder(dir);
  constexpr std::size_t names = 30000, limit = 100;
  // Hard links to one file: quicker to make than files (ext4 allows 65,000 of them).
  write_file(tmp / "page", "");
  for (std::size_t i = 0; i < names; ++i)
    REQUIRE(::link((tmp / "page").c_str(), (dir / ("pages-" + std::to_string(i) + ".img")).c_str()) == 0);
  using Clock = std::chrono::steady_clock;
  const auto fastest = [](auto&& run) {
    auto best = Clock::duration::max();
    for (int i = 0; i < 5; ++i) {
      const auto start = Clock::now();
      run();
      best = std::min(best, Clock::now() - start);
    }
    return best;
  };
  std::size_t visited = 0;
  const auto count = [&](int, const struct stat&, const std::string&) { ++visited; };
  const auto refused = fastest([&] {
    require_integrity_error([&] { walk_checkpoint_tree(fd.get(), count, {}, limit); }, "more than 100 entries");
  });
  CHECK(visited == 0);  // refused before any entry of the folder is looked at
  const auto listed = fastest([&] {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
    REQUIRE(n == names);
  });
  const auto micros = [](Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); };
  INFO("refused in " << micros(refused) << " us, listed in " << micros(listed) << " us");
  CHECK(refused * 10 < listed);

  // The limit itself is exact.
  CHECK_NOTHROW(walk_checkpoint_tree(fd.get(), count, {}, names));
  CHECK(visited == names);
  require_integrity_error([&] { walk_checkpoint_tree(fd.get(), count, {}, names - 1); }, "more than");
}

TEST_CASE("files that grow between the measuring walk and the reading walk are refused", "[hmac_tree][limits]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const UniqueFd fd = open_folder(dir);
  std::vector<std::string> read;
  const auto grow_later_file = [&](int, const struct stat& st, const std::string& rel) {
    read.push_back(rel);
    // metadata.json comes after images/ in the walk: grown once the first walk has measured it.
    if (S_ISDIR(st.st_mode)) write_file(dir / "metadata.json", std::string(4096, 'x'));
  };
  require_integrity_error([&] { walk_checkpoint_files(fd.get(), grow_later_file, {}, 1 << 20); },
                          "'metadata.json' changed during the integrity scan");
  CHECK(read == std::vector<std::string>{"dump.log", "images", "images/core-1.img", "images/inventory.img",
                                         "images/pages-1.img"});
}

// ---- The manifest format (version 3) ----

namespace {

// A checkpoint with a 3-chunk-and-a-byte pages image at 1 MiB chunks (the smallest a signature
// may have), signed in the manifest format at that size.
fs::path make_manifest_checkpoint(const TempDir& tmp, const HmacKey& key) {
  const fs::path dir = make_checkpoint(tmp);
  fs::create_directory(dir / "images/empty");
  write_file(dir / "dump.log", "");
  write_file(dir / "images/pages-2.img", pattern(3 * min_chunk + 1));
  sign_manifest_with(dir, key, min_chunk);
  return dir;
}

// "checkpoint file 'REL' differs from what was signed in bytes FIRST–LAST"
std::string differs_in(std::string_view rel, std::uint64_t first, std::uint64_t last) {
  return "checkpoint file '" + std::string(rel) + "' differs from what was signed in bytes " + std::to_string(first) +
         "\u2013" + std::to_string(last);
}

// The manifest lines of a checkpoint.hmac in the manifest format (after its three lines).
std::vector<std::string> manifest_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t at = 0;
  for (int skipped = 0; skipped < 3; ++skipped) at = text.find('\n', at) + 1;
  for (std::size_t end; (end = text.find('\n', at)) != std::string::npos; at = end + 1)
    lines.push_back(text.substr(at, end - at));
  return lines;
}

// checkpoint.hmac with its manifest lines replaced.
void write_manifest_lines(const fs::path& dir, const std::vector<std::string>& lines) {
  std::string text = read_file(dir / HmacTree::signature_file);
  std::size_t at = 0;
  for (int kept = 0; kept < 3; ++kept) at = text.find('\n', at) + 1;
  text.resize(at);
  for (const std::string& line : lines) text += line + "\n";
  write_file(dir / HmacTree::signature_file, text);
}

// The SHA-256 of each chunk_size piece of data, as libsodium computes it.
std::vector<Sha256::Digest> spec_chunks(std::string_view data, std::uint64_t chunk_size) {
  std::vector<Sha256::Digest> chunks;
  for (std::uint64_t at = 0; at < data.size(); at += chunk_size) {
    const std::string_view piece = data.substr(at, chunk_size);
    Sha256::Digest d{};
    crypto_hash_sha256(d.data(), reinterpret_cast<const unsigned char*>(piece.data()), piece.size());
    chunks.push_back(d);
  }
  return chunks;
}

}  // namespace

TEST_CASE("the manifest format agrees with seed_hmac.py --format manifest on awkward trees", "[hmac_tree][manifest]") {
  on_awkward_trees([](const TempDir& tmp, const fs::path& dir) {
    const HmacKey key = key_of(32);
    CHECK(manifest_text_of(dir, key, small_chunk) == manifest_text_by_script(tmp, dir, key, small_chunk));
    const std::string by_script = manifest_text_by_script(tmp, dir, key, default_chunk);
    HmacTree::sign_as(dir, key, SignatureFormat::manifest);
    CHECK(read_file(dir / HmacTree::signature_file) == by_script);
    CHECK(HmacTree::format_of(dir) == SignatureFormat::manifest);
    CHECK_NOTHROW(HmacTree::verify(dir, key));
    const auto [status, output] = verify_by_script(tmp, dir, key);
    INFO("seed_hmac.py --verify printed: " << output);
    CHECK(status == 0);
  });
}

TEST_CASE("sign(manifest) agrees with seed_hmac.py on files at chunk boundaries, under both engines",
          "[hmac_tree][manifest]") {
  TempDir tmp;
  const fs::path dir = tmp / "tree";
  fs::create_directories(dir / "images");
  write_chunk_boundary_files(dir / "images", default_chunk);
  // Enough files that the signature outgrows the 4096 bytes read of the other formats.
  for (int i = 0; i < 100; ++i) write_file(dir / ("small-" + std::to_string(i)), std::to_string(i));
  const HmacKey key = key_of(65, 3);
  const std::string by_script = manifest_text_by_script(tmp, dir, key, default_chunk);
  REQUIRE(by_script.size() > ChunkedSignature::max_text_size_without_manifest);
  for (const bool sodium : {false, true}) {
    INFO((sodium ? "libsodium" : "default engine"));
    const auto engine = hash_engine_env(sodium);
    HmacTree::sign_as(dir, key, SignatureFormat::manifest);
    CHECK(read_file(dir / HmacTree::signature_file) == by_script);
    CHECK_NOTHROW(HmacTree::verify(dir, key));
  }
  CHECK(verify_by_script(tmp, dir, key).first == 0);
  // A 3-chunk-and-a-byte file at 1 MiB: its line lists 4 digests.
  write_file(dir / "images/pages-9.img", pattern(3 * min_chunk + 1));
  sign_manifest_with(dir, key, min_chunk);
  CHECK(read_file(dir / HmacTree::signature_file) == manifest_text_by_script(tmp, dir, key, min_chunk));
  CHECK_NOTHROW(HmacTree::verify(dir, key));
  CHECK(verify_by_script(tmp, dir, key).first == 0);
}

TEST_CASE("the manifest format matches known answers", "[hmac_tree][manifest]") {
  // Computed once with seed_hmac.py --format manifest (and the MAC again from the byte stream
  // written out by hand) for the chunked format's known-answer trees and key.
  TempDir tmp;
  const fs::path dir = known_answer_tree(tmp);
  const HmacKey key = counting_key();
  HmacTree::sign_as(dir, key, SignatureFormat::manifest);
  CHECK(read_file(dir / HmacTree::signature_file) ==
        "nucleus-checkpoint-signature 3\n"
        "chunk-size 4194304\n"
        "hmac-sha256 f2496b1010a2e9c05404fa8d778f7576250ed10774fc7e50fc1250d43f19879f\n"
        "16a0eeb0791b6c92451fd284dd9f599e0a7dbe7f6ebea6e2d2d06c7f74aec112\n"   // images/pages-1.img
        "d2b93f12ee128bad970b0fea0d8c6a2e1f5f84d47fe2bac08a39808a04b43433\n");  // metadata.json

  write_file(dir / "images" / "pages-2.img", std::string(4096, 'a') + std::string(4096, 'b') + "c");
  CHECK(manifest_text_of(dir, key, small_chunk) ==
        "nucleus-checkpoint-signature 3\n"
        "chunk-size 4096\n"
        "hmac-sha256 0ab4b02e625fddcd9cd1956119c0bdeef283b0340e0ebce969d19eed33566680\n"
        "16a0eeb0791b6c92451fd284dd9f599e0a7dbe7f6ebea6e2d2d06c7f74aec112\n"
        "c93eee2d0db02f10acc7460d9576e122dcf8cd53c4bf8dfcae1b3e74ebcfff5a"
        "5389688abf55bc46639385085bfaf1fda3552f63303e4d4a55d664d0f515d6ac"
        "2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6\n"
        "d2b93f12ee128bad970b0fea0d8c6a2e1f5f84d47fe2bac08a39808a04b43433\n");
}

TEST_CASE("the manifest format's MAC is the chunked one's records under its own header", "[hmac_tree][manifest]") {
  // Domain separation: the same records, so a version 2 MAC cannot pass for version 3 or back.
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const HmacKey key = key_of(32);
  const UniqueFd fd = open_folder(dir);
  const std::string v2_mac = hex_of(chunked_tree_mac(fd.get(), key, default_chunk, {}));
  const std::string v3_mac =
      hex_of(chunked_signature_of(fd.get(), key, SignatureFormat::manifest, default_chunk, {}).mac);
  CHECK(v2_mac != v3_mac);
  // Each signature with the other's MAC in its hmac-sha256 line.
  for (const SignatureFormat format : {SignatureFormat::chunked, SignatureFormat::manifest}) {
    INFO("format " << static_cast<int>(format));
    HmacTree::sign_as(dir, key, format);
    std::string text = read_file(dir / HmacTree::signature_file);
    const std::string& own = format == SignatureFormat::chunked ? v2_mac : v3_mac;
    const std::string& other = format == SignatureFormat::chunked ? v3_mac : v2_mac;
    REQUIRE(text.find(own) != std::string::npos);
    text.replace(text.find(own), own.size(), other);
    write_file(dir / HmacTree::signature_file, text);
    require_integrity_error([&] { HmacTree::verify(dir, key); }, "HMAC mismatch");
  }
}

TEST_CASE("verify refuses a changed byte in chunk k, naming the chunk's bytes", "[hmac_tree][manifest]") {
  TempDir tmp;
  const HmacKey key = key_of(32);
  const fs::path dir = make_manifest_checkpoint(tmp, key);
  REQUIRE_NOTHROW(HmacTree::verify(dir, key));
  const fs::path pages = dir / "images/pages-2.img";
  const std::string original = read_file(pages);
  const auto flipped = [&](std::initializer_list<std::uint64_t> offsets) {
    std::string changed = original;
    for (const std::uint64_t at : offsets) changed[at] = static_cast<char>(changed[at] ^ 0x01);
    write_file(pages, changed);
  };
  for (std::uint64_t k = 0; k < 4; ++k) {
    const std::uint64_t first = k * min_chunk, last = std::min(first + min_chunk, original.size()) - 1;
    for (const std::uint64_t at : {first, last, (first + last) / 2}) {
      INFO("chunk " << k << ", byte " << at);
      flipped({at});
      const std::string message = differs_in("images/pages-2.img", first, last);
      require_integrity_error([&] { HmacTree::verify(dir, key); }, message);
      const auto [status, output] = verify_by_script(tmp, dir, key);
      CHECK(status == 1);
      CHECK(contains(output, message));
    }
  }
  // The first chunk that differs is the one named.
  flipped({2 * min_chunk + 5, min_chunk + 7, 3 * min_chunk});
  require_integrity_error([&] { HmacTree::verify(dir, key); }, differs_in("images/pages-2.img", min_chunk, 2 * min_chunk - 1));
  // A small file: its only chunk.
  write_file(pages, original);
  write_file(dir / "images/pages-1.img", "snapsh0t");
  require_integrity_error([&] { HmacTree::verify(dir, key); }, differs_in("images/pages-1.img", 0, 7));
  write_file(dir / "images/pages-1.img", "snapshot");
  CHECK_NOTHROW(HmacTree::verify(dir, key));
}

TEST_CASE("a manifest altered without the key is refused before any file is read", "[hmac_tree][manifest]") {
  // Whoever changes a chunk's digest cannot compute the MAC again: the manifest fails to
  // authenticate, from names and sizes alone.
  TempDir tmp;
  const HmacKey key = key_of(32);
  const fs::path dir = make_manifest_checkpoint(tmp, key);
  const std::vector<std::string> lines = manifest_lines(read_file(dir / HmacTree::signature_file));
  // dump.log, images/core-1.img, images/inventory.img, images/pages-1.img, images/pages-2.img, metadata.json
  REQUIRE(lines.size() == 6);
  REQUIRE(lines[0].empty());
  REQUIRE(lines[4].size() == 4 * 64);

  SECTION("a digit of a chunk digest changed") {
    std::vector<std::string> changed = lines;
    changed[4][70] = changed[4][70] == '0' ? '1' : '0';
    write_manifest_lines(dir, changed);
  }
  SECTION("two chunk digests of one file swapped") {
    std::vector<std::string> changed = lines;
    changed[4] = lines[4].substr(64, 64) + lines[4].substr(0, 64) + lines[4].substr(128);
    write_manifest_lines(dir, changed);
  }
  SECTION("the lines of two files of one size swapped") {
    std::vector<std::string> changed = lines;
    std::swap(changed[1], changed[3]);  // core-1.img and pages-1.img: 8 bytes each
    write_manifest_lines(dir, changed);
  }
  SECTION("a chunk digest replaced by that of the changed bytes") {
    // The tampering a streaming restore must not take: new bytes, and the manifest made to match.
    std::string pages = read_file(dir / "images/pages-2.img");
    pages[5] = 'X';
    write_file(dir / "images/pages-2.img", pages);
    std::vector<std::string> changed = lines;
    changed[4].replace(0, 64, hex_of(spec_chunks(pages, min_chunk)[0]));
    write_manifest_lines(dir, changed);
  }
  require_integrity_error([&] { HmacTree::verify(dir, key, must_not_hash); }, "HMAC mismatch");
  require_integrity_error([&] { (void)SignedManifest::load(open_folder(dir).get(), key); }, "HMAC mismatch");
  CHECK(verify_by_script(tmp, dir, key).first == 1);
}

TEST_CASE("manifest lines that do not match the folder's files are refused before any file is read",
          "[hmac_tree][manifest]") {
  TempDir tmp;
  const HmacKey key = key_of(32);
  const fs::path dir = make_manifest_checkpoint(tmp, key);
  const std::vector<std::string> lines = manifest_lines(read_file(dir / HmacTree::signature_file));
  REQUIRE(lines.size() == 6);
  std::vector<std::string> changed = lines;
  std::string part;

  SECTION("an extra line") {
    changed.push_back("");
    part = "lists the chunks of 7 files, but the folder holds 6";
  }
  SECTION("an extra line of digests") {
    changed.push_back(lines[5]);
    part = "lists the chunks of 7 files, but the folder holds 6";
  }
  SECTION("the last line missing") {
    changed.pop_back();
    part = "lists the chunks of 5 files, but the folder holds 6";
  }
  SECTION("no lines") {
    changed.clear();
    part = "lists the chunks of 0 files, but the folder holds 6";
  }
  SECTION("a file added to the folder") {
    write_file(dir / "images/pages-3.img", pattern(2 * min_chunk));  // its line would be metadata.json's
    part = "lists the chunks of 6 files, but the folder holds 7";
  }
  SECTION("a file removed from the folder") {
    fs::remove(dir / "metadata.json");
    part = "lists the chunks of 6 files, but the folder holds 5";
  }
  SECTION("a digest too many on a line") {
    changed[4] += lines[4].substr(0, 64);
    part = "lists 5 chunk digests for 'images/pages-2.img' (manifest line 5), but its 3145729 bytes make 4 chunks of 1048576";
  }
  SECTION("a digest too few on a line") {
    changed[4].resize(3 * 64);
    part = "lists 3 chunk digests for 'images/pages-2.img' (manifest line 5), but its 3145729 bytes make 4 chunks";
  }
  SECTION("a digest on an empty file's line") {
    changed[0] = lines[5];
    part = "lists 1 chunk digests for 'dump.log' (manifest line 1), but its 0 bytes make 0 chunks";
  }
  SECTION("a file grown by a chunk") {
    write_file(dir / "images/pages-2.img", pattern(4 * min_chunk + 1));
    part = "but its 4194305 bytes make 5 chunks";
  }
  if (changed != lines) write_manifest_lines(dir, changed);
  require_integrity_error([&] { HmacTree::verify(dir, key, must_not_hash); }, part);
  require_integrity_error([&] { (void)SignedManifest::load(open_folder(dir).get(), key); }, part);
  CHECK(verify_by_script(tmp, dir, key).first == 1);
}

TEST_CASE("a malformed manifest is refused as malformed", "[hmac_tree][manifest]") {
  TempDir tmp;
  const HmacKey key = key_of(32);
  const fs::path dir = make_manifest_checkpoint(tmp, key);
  const std::string text = read_file(dir / HmacTree::signature_file);
  const std::vector<std::string> lines = manifest_lines(text);
  std::string upper = lines[4];
  std::transform(upper.begin(), upper.end(), upper.begin(), [](char c) { return static_cast<char>(std::toupper(c)); });
  REQUIRE(upper != lines[4]);
  const auto with_line_4 = [&](const std::string& line) {
    std::vector<std::string> changed = lines;
    changed[4] = line;
    return changed;
  };
  const std::pair<std::vector<std::string>, std::string> malformed[] = {
      {with_line_4(lines[4].substr(1)), "manifest line 5 is 255 characters long, not 64 hex digits for each chunk"},
      {with_line_4(lines[4] + " "), "manifest line 5 is 257 characters long"},
      {with_line_4(lines[4].substr(0, 192) + std::string(64, 'g')), "manifest line 5 is not lowercase hex digits"},
      {with_line_4(upper), "manifest line 5 is not lowercase hex digits"},
      {with_line_4(lines[4].substr(0, 255) + "\r"), "manifest line 5 is not lowercase hex digits"},
  };
  for (const auto& entry : malformed) {
    const std::string& part = entry.second;
    INFO(part);
    write_manifest_lines(dir, entry.first);
    require_integrity_error([&] { HmacTree::verify(dir, key, must_not_hash); }, part);
    require_integrity_error([&] { (void)HmacTree::format_of(dir); }, part);
  }
  // The last line unterminated, and text after the last.
  write_file(dir / HmacTree::signature_file, text.substr(0, text.size() - 1));
  require_integrity_error([&] { HmacTree::verify(dir, key, must_not_hash); }, "manifest line 6 is unterminated");
  write_file(dir / HmacTree::signature_file, text + "x");
  require_integrity_error([&] { HmacTree::verify(dir, key, must_not_hash); }, "manifest line 7 is unterminated");
  // More lines than a tree can have files: an empty line is a byte of text, but a vector parsed
  // (3 GiB of them within the text's bound).
  write_file(dir / HmacTree::signature_file, text + std::string(HmacTree::max_entries, '\n'));
  require_integrity_error([&] { HmacTree::verify(dir, key, must_not_hash); },
                          "the manifest has more than 1000000 lines");
  // Parsed and written back byte for byte.
  CHECK(ChunkedSignature::parse(text).to_text() == text);
  CHECK(ChunkedSignature::parse(text).manifest.size() == 6);
}

TEST_CASE("an oversized checkpoint.hmac is refused without being read", "[hmac_tree][manifest][limits]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const fs::path sig = dir / HmacTree::signature_file;
  const HmacKey key = key_of(32);
  // A digest per MiB of the 1 TiB limit, a partial chunk and a newline per entry, and 4 KiB.
  const std::uint64_t bound = ChunkedSignature::max_manifest_text_size();
  CHECK(bound == 4096 + (std::uint64_t{1} << 20) * 64 + HmacTree::max_entries * 65);
  {
    const MaxTotalBytes raised(2 * HmacTree::default_max_total_bytes);
    CHECK(ChunkedSignature::max_manifest_text_size() == bound + (std::uint64_t{1} << 20) * 64);
  }
  const int watch = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  REQUIRE(watch >= 0);
  std::string part;
  bool read_whole = false;  // small enough to be read, refused for its format

  SECTION("a manifest signature past the bound") {
    write_file(sig, std::string(ChunkedSignature::manifest_header) + "\n");
    REQUIRE(::truncate(sig.c_str(), static_cast<off_t>(bound + 1)) == 0);  // sparse: nothing to write
    part = "is " + std::to_string(bound + 1) + " bytes, more than the " + std::to_string(bound) + " allowed";
  }
  SECTION("a hundred gigabytes of one") {
    write_file(sig, std::string(ChunkedSignature::manifest_header) + "\n");
    REQUIRE(::truncate(sig.c_str(), static_cast<off_t>(std::uint64_t{100} << 30)) == 0);
    part = "more than the " + std::to_string(bound) + " allowed";
  }
  SECTION("a signature of another format past 4096 bytes") {
    write_file(sig, chunked_text(default_chunk, std::string(64, '0')) + std::string(4096, '\n'));
    part = "more than the 4096 allowed for a signature without a manifest";
    read_whole = true;
  }
  REQUIRE(::inotify_add_watch(watch, sig.c_str(), IN_ACCESS) >= 0);
  require_integrity_error([&] { HmacTree::verify(dir, key, must_not_hash); }, part);
  require_integrity_error([&] { (void)HmacTree::format_of(dir); }, part);
  require_integrity_error([&] { (void)SignedManifest::load(open_folder(dir).get(), key); }, part);
  if (!read_whole) {
    char events[4096];
    CHECK(::read(watch, events, sizeof events) < 0);  // not a byte of it was read
  }
  ::close(watch);
}

TEST_CASE("a tree changed between authenticating the manifest and hashing is refused", "[hmac_tree][manifest]") {
  // verify walks twice: names and sizes first, bytes then. The MAC computed the second time must
  // agree too, so that what changed in between (an empty folder, which no chunk shows) is caught.
  TempDir tmp;
  const HmacKey key = key_of(32);
  const fs::path dir = make_manifest_checkpoint(tmp, key);
  bool changed = false;
  const HmacTree::Progress add_folder = [&](std::uint64_t) {
    if (!std::exchange(changed, true)) fs::create_directory(dir / "images/empty/new");
  };
  // dump.log is empty: the first bytes hashed are images/core-1.img's, before images/empty is read.
  require_integrity_error([&] { HmacTree::verify(dir, key, add_folder); }, "HMAC mismatch");
  CHECK(changed);
  fs::remove(dir / "images/empty/new");
  CHECK_NOTHROW(HmacTree::verify(dir, key));
}

TEST_CASE("SignedManifest::load authenticates the manifest without reading a file", "[hmac_tree][manifest]") {
  TempDir tmp;
  const HmacKey key = key_of(32);
  const fs::path dir = make_manifest_checkpoint(tmp, key);
  // Walk order is not path order: "a/b" comes before "a.b" in the walk, after it as a string.
  fs::create_directory(dir / "a");
  write_file(dir / "a/b", "in a");
  write_file(dir / "a.b", "dot");
  sign_manifest_with(dir, key, min_chunk);

  const int watch = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  REQUIRE(watch >= 0);
  REQUIRE(::inotify_add_watch(watch, (dir / "images").c_str(), IN_ACCESS) >= 0);
  const std::optional<SignedManifest> manifest = SignedManifest::load(open_folder(dir).get(), key);
  alignas(inotify_event) char events[4096];
  const ssize_t n = ::read(watch, events, sizeof events);
  for (const char* p = events; n > 0 && p < events + n;) {
    const auto* event = reinterpret_cast<const inotify_event*>(p);
    p += sizeof(inotify_event) + event->len;
    INFO("read: images/" << (event->len ? event->name : ""));
    CHECK((event->len == 0 || (event->mask & IN_ISDIR)));  // the folder's names, never a file's bytes
  }
  ::close(watch);

  REQUIRE(manifest.has_value());
  CHECK(manifest->chunk_size() == min_chunk);
  std::vector<std::string> paths;
  for (const ManifestFile& file : manifest->files()) paths.push_back(file.path);
  CHECK(paths == std::vector<std::string>{"a/b", "a.b", "dump.log", "images/core-1.img", "images/inventory.img",
                                          "images/pages-1.img", "images/pages-2.img", "metadata.json"});
  const std::string pages = read_file(dir / "images/pages-2.img");
  const ManifestFile* file = manifest->find("images/pages-2.img");
  REQUIRE(file != nullptr);
  CHECK(file->size == pages.size());
  CHECK(file->chunks == spec_chunks(pages, min_chunk));
  for (const std::string& path : paths) {
    INFO(path);
    REQUIRE(manifest->find(path) != nullptr);
    CHECK(manifest->find(path)->path == path);
    CHECK(manifest->find(path)->chunks == spec_chunks(read_file(dir / path), min_chunk));
  }
  CHECK(manifest->find("dump.log")->chunks.empty());
  CHECK(manifest->find("images") == nullptr);  // a folder
  CHECK(manifest->find("images/pages-3.img") == nullptr);
  CHECK(manifest->find("") == nullptr);
  CHECK(manifest->find("checkpoint.hmac") == nullptr);
}

TEST_CASE("SignedManifest::load leaves formats 1 and 2 to HmacTree::verify, and refuses the rest",
          "[hmac_tree][manifest]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  const HmacKey key = key_of(32);
  require_integrity_error([&] { (void)SignedManifest::load(open_folder(dir).get(), key); }, "not signed");
  HmacTree::sign(dir, key);
  CHECK_FALSE(SignedManifest::load(open_folder(dir).get(), key).has_value());
  HmacTree::sign_as(dir, key, SignatureFormat::chunked);
  CHECK_FALSE(SignedManifest::load(open_folder(dir).get(), key).has_value());
  write_file(dir / HmacTree::signature_file, "nucleus-checkpoint-signature 4\n");
  require_integrity_error([&] { (void)SignedManifest::load(open_folder(dir).get(), key); }, "does not know");
  HmacTree::sign_as(dir, key, SignatureFormat::manifest);
  CHECK(SignedManifest::load(open_folder(dir).get(), key).has_value());
  require_integrity_error([&] { (void)SignedManifest::load(open_folder(dir).get(), key_of(32, 1)); }, "HMAC mismatch");
}

TEST_CASE("check_chunk and verify_file check against the authenticated manifest", "[hmac_tree][manifest]") {
  TempDir tmp;
  const HmacKey key = key_of(32);
  const fs::path dir = make_manifest_checkpoint(tmp, key);
  const SignedManifest manifest = *SignedManifest::load(open_folder(dir).get(), key);
  const ManifestFile& file = *manifest.find("images/pages-2.img");
  const std::string pages = read_file(dir / "images/pages-2.img");
  const std::uint64_t chunk = manifest.chunk_size();
  const std::string rel = "images/pages-2.img";

  SECTION("check_chunk") {
    for (std::uint64_t i = 0; i < 4; ++i) {
      INFO("chunk " << i);
      const std::string piece = pages.substr(i * chunk, chunk);
      CHECK_NOTHROW(check_chunk(file, chunk, i, piece.data(), piece.size()));
      std::string changed = piece;
      changed.back() = static_cast<char>(changed.back() ^ 0x80);
      require_integrity_error([&] { check_chunk(file, chunk, i, changed.data(), changed.size()); },
                              differs_in(rel, i * chunk, i * chunk + piece.size() - 1));
      // Another chunk's bytes, and the right bytes cut short, are not this chunk.
      const std::string other = pages.substr(((i + 1) % 3) * chunk, chunk);
      require_integrity_error([&] { check_chunk(file, chunk, i, other.data(), other.size()); },
                              differs_in(rel, i * chunk, i * chunk + piece.size() - 1));
      require_integrity_error([&] { check_chunk(file, chunk, i, piece.data(), piece.size() - 1); },
                              differs_in(rel, i * chunk, i * chunk + piece.size() - 1));
    }
    require_integrity_error([&] { check_chunk(file, chunk, 4, pages.data(), 1); }, "has no chunk 4");
    const ManifestFile& empty = *manifest.find("dump.log");
    require_integrity_error([&] { check_chunk(empty, chunk, 0, "", 0); }, "'dump.log' differs from what was signed");
  }
  SECTION("verify_file") {
    for (const unsigned threads : {1u, 3u}) {
      INFO(threads << " threads");
      for (const ManifestFile& f : manifest.files()) {
        const UniqueFd fd(::open((dir / f.path).c_str(), O_RDONLY | O_CLOEXEC));
        CHECK_NOTHROW(verify_file(fd.get(), f, chunk, threads));
      }
      std::string changed = pages;
      changed[2 * chunk + 9] = 'X';
      write_file(dir / rel, changed);
      UniqueFd fd(::open((dir / rel).c_str(), O_RDONLY | O_CLOEXEC));
      require_integrity_error([&] { verify_file(fd.get(), file, chunk, threads); }, differs_in(rel, 2 * chunk, 3 * chunk - 1));
      write_file(dir / rel, pages + "!");
      fd = UniqueFd(::open((dir / rel).c_str(), O_RDONLY | O_CLOEXEC));
      require_integrity_error([&] { verify_file(fd.get(), file, chunk, threads); },
                              "'images/pages-2.img' is 3145730 bytes, but was signed with 3145729");
      write_file(dir / rel, pages);
    }
  }
}

TEST_CASE("all three formats sign and verify the same tree, here and by seed_hmac.py", "[hmac_tree][manifest]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  write_file(dir / "images/pages-2.img", pattern(default_chunk + 5));
  const HmacKey key = key_of(32);
  for (const SignatureFormat format : {SignatureFormat::seed, SignatureFormat::chunked, SignatureFormat::manifest}) {
    INFO("format " << static_cast<int>(format));
    HmacTree::sign_as(dir, key, format);
    CHECK(HmacTree::format_of(dir) == format);
    CHECK_NOTHROW(HmacTree::verify(dir, key));
    CHECK(verify_by_script(tmp, dir, key).first == 0);
    write_file(dir / "images/pages-1.img", "snapsh0t");
    require_integrity_error([&] { HmacTree::verify(dir, key); },
                            format == SignatureFormat::manifest ? differs_in("images/pages-1.img", 0, 7) : "HMAC mismatch");
    CHECK(verify_by_script(tmp, dir, key).first == 1);
    write_file(dir / "images/pages-1.img", "snapshot");
  }
}

TEST_CASE("Ed25519 signatures verify by seed_hmac.py's own message and the public key file alone", "[hmac_tree][ed25519]") {
  TempDir tmp;
  const fs::path dir = make_checkpoint(tmp);
  write_file(dir / "images/pages-2.img", pattern(default_chunk + 5));
  const Ed25519SecretKey key = Ed25519SecretKey::generate();
  const fs::path public_key_file = tmp / "signer.pub";
  write_file(public_key_file, key.public_key().to_file_text());
  const auto verify_by_script = [&] {
    return run_script({"--verify", dir.native(), public_key_file.native()}, true);
  };
  for (const SignatureFormat format : {SignatureFormat::chunked, SignatureFormat::manifest}) {
    INFO("format " << static_cast<int>(format));
    HmacTree::sign_as(dir, key, format);
    const auto [status, output] = verify_by_script();
    INFO("seed_hmac.py printed: " << output);
    CHECK(status == 0);
    write_file(dir / "images/pages-1.img", "snapsh0t");
    CHECK(verify_by_script().first == 1);
    write_file(dir / "images/pages-1.img", "snapshot");
    // Another key's public key file: the key id is not the signature's.
    write_file(public_key_file, Ed25519SecretKey::generate().public_key().to_file_text());
    CHECK(verify_by_script().second.find("signed by another key") != std::string::npos);
    write_file(public_key_file, key.public_key().to_file_text());
  }
}
