// The two HMAC-SHA256 engines: RFC 4231's test vectors, and byte-identical output from both on the
// same streams and on whole checkpoint trees.
#include "test_support.hpp"

#include <sodium.h>

#include <cstdlib>
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
