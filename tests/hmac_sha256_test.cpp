// The two HMAC-SHA256 engines: RFC 4231's test vectors, and byte-identical output from both on the
// same streams and on whole checkpoint trees.
#include "test_support.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>

#include "signature/hmac_sha256.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

using Engine = HmacSha256::Engine;

std::vector<Engine> engines() {
  std::vector<Engine> all{Engine::sodium};
  if (HmacSha256::available(Engine::openssl)) all.push_back(Engine::openssl);
  return all;
}

std::string hex(const HmacSha256::Mac& mac) {
  char out[65];
  sodium_bin2hex(out, sizeof out, mac.data(), mac.size());
  return out;
}

std::string mac_of(Engine engine, const std::string& key, const std::string& data) {
  HmacSha256 h({reinterpret_cast<const unsigned char*>(key.data()), key.size()}, engine);
  h.update(data.data(), data.size());
  return hex(h.final());
}

}  // namespace

TEST_CASE("both engines give RFC 4231's HMAC-SHA256 test vectors", "[hmac_sha256]") {
  for (const Engine engine : engines()) {
    INFO(HmacSha256::name(engine));
    CHECK(mac_of(engine, std::string(20, '\x0b'), "Hi There") ==
          "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    CHECK(mac_of(engine, "Jefe", "what do ya want for nothing?") ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    // A key longer than the block is hashed first.
    CHECK(mac_of(engine, std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First") ==
          "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  }
}

TEST_CASE("the engines agree on streams fed in uneven pieces", "[hmac_sha256]") {
  std::mt19937 rng(42);
  std::string data(3 << 20, '\0');
  for (auto& c : data) c = static_cast<char>(rng());
  const std::string key(32, 'k');
  std::vector<std::string> macs;
  for (const Engine engine : engines()) {
    HmacSha256 h({reinterpret_cast<const unsigned char*>(key.data()), key.size()}, engine);
    for (std::size_t at = 0, step = 1; at < data.size(); at += step, step = step * 3 % 100003 + 1)
      h.update(data.data() + at, std::min(step, data.size() - at));
    macs.push_back(hex(h.final()));
    CHECK(macs.back() == mac_of(engine, key, data));
  }
  for (const auto& m : macs) CHECK(m == macs.front());
}

TEST_CASE("OpenSSL is the default engine where it is built in, and can be turned off", "[hmac_sha256]") {
  CHECK(HmacSha256::default_engine() ==
        (HmacSha256::available(Engine::openssl) ? Engine::openssl : Engine::sodium));
  ::setenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE", "sodium", 1);
  CHECK(HmacSha256::default_engine() == Engine::sodium);
  ::unsetenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE");
}

TEST_CASE("a checkpoint tree has the same MAC under both engines", "[hmac_sha256]") {
  TempDir tmp;
  fs::create_directories(tmp / "cp/images");
  write_file(tmp / "cp/metadata.json", "{}");
  write_file(tmp / "cp/images/pages-1.img", std::string(5 << 20, 'p'));
  const HmacKey key = HmacKey::generate();
  const std::string by_default = HmacTree::compute(tmp / "cp", key);
  ::setenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE", "sodium", 1);
  const std::string by_sodium = HmacTree::compute(tmp / "cp", key);
  HmacTree::sign(tmp / "cp", key);
  ::unsetenv("NUCLEUS_CHECKPOINT_HMAC_ENGINE");
  CHECK(by_default == by_sodium);
  CHECK_NOTHROW(HmacTree::verify(tmp / "cp", key));  // signed by one engine, verified by the other
}

TEST_CASE("a MAC in progress keeps the process non-dumpable, under both engines", "[hmac_sha256]") {
  REQUIRE(::prctl(PR_GET_DUMPABLE) == 1);
  for (const Engine engine : engines()) {
    INFO(HmacSha256::name(engine));
    std::optional<HmacSha256> mac;
    {
      const HmacKey key = HmacKey::generate();
      mac.emplace(key.bytes(), engine);
      mac->update("data", 4);
    }
    CHECK(::prctl(PR_GET_DUMPABLE) == 0);  // the key is gone, its keyed state is not
    (void)mac->final();
    mac.reset();
    CHECK(::prctl(PR_GET_DUMPABLE) == 1);
  }
}

namespace {

// The key file's bytes, one at a time: the test itself never holds the key whole in memory (which
// a forked child would inherit), so a copy found in a core is the library's.
unsigned char known_key_byte(std::size_t i) { return static_cast<unsigned char>(0xa5 ^ (i * 29 + 11)); }

}  // namespace

TEST_CASE("a crash while a key is loaded and a MAC runs writes no core holding the key", "[hmac_sha256]") {
  // The child loads the key from its file, starts a MAC and aborts, with RLIMIT_CORE unlimited in
  // a folder of its own (core_pattern here is "core": a file in the working folder; if it names a
  // program, only the wait status tells that a core was written).
  for (const Engine engine : engines()) {
    INFO(HmacSha256::name(engine));
    TempDir tmp;
    const fs::path key_file = secure_key_dir(tmp) / "checkpoint.key";
    const int fd = ::open(key_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    for (std::size_t i = 0; i < HmacKey::min_size; ++i) {
      const unsigned char byte = known_key_byte(i);
      REQUIRE(::write(fd, &byte, 1) == 1);
    }
    ::close(fd);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // Child: no Catch2 here.
      const rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
      if (::chdir(tmp.path().c_str()) != 0 || ::setrlimit(RLIMIT_CORE, &unlimited) != 0) ::_exit(2);
      try {
        const HmacKey key = KeyStore(key_file).load();
        HmacSha256 mac(key.bytes(), engine);
        mac.update("in progress", 11);
        ::signal(SIGABRT, SIG_DFL);
        ::raise(SIGABRT);
      } catch (...) {
      }
      ::_exit(3);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGABRT);
    CHECK_FALSE(WCOREDUMP(status));
    std::string needle;
    for (std::size_t i = 0; i < HmacKey::min_size; ++i) needle += static_cast<char>(known_key_byte(i));
    for (const auto& entry : fs::directory_iterator(tmp.path())) {
      if (!entry.path().filename().native().starts_with("core")) continue;
      INFO("core file " << entry.path());
      CHECK_FALSE(contains(read_file(entry.path()), needle));
    }
  }
}
