// ImageReference: the registry references push and pull take, parsed strictly.
#include "test_support.hpp"

#include <string>
#include <vector>

#include <nucleus/checkpoint/error.hpp>

#include "registry/image_reference.hpp"

using namespace nucleus::checkpoint;
using registry::ImageReference;

TEST_CASE("a reference names host, repository and tag or digest") {
  const ImageReference plain = ImageReference::parse("127.0.0.1:5000/checkpoints/web");
  CHECK(plain.host == "127.0.0.1:5000");
  CHECK(plain.repository == "checkpoints/web");
  CHECK(plain.tag == "latest");
  CHECK(plain.digest.empty());
  CHECK(plain.manifest_name() == "latest");

  const ImageReference tagged = ImageReference::parse("docker://registry.example.com/a/b-c.d_e:v1.2-rc");
  CHECK(tagged.host == "registry.example.com");
  CHECK(tagged.repository == "a/b-c.d_e");
  CHECK(tagged.tag == "v1.2-rc");
  CHECK(tagged.to_string() == "registry.example.com/a/b-c.d_e:v1.2-rc");

  const std::string digest = "sha256:" + std::string(64, 'a');
  const ImageReference pinned = ImageReference::parse("host:443/web@" + digest);
  CHECK(pinned.tag.empty());
  CHECK(pinned.manifest_name() == digest);
  CHECK(pinned.to_string() == "host:443/web@" + digest);
}

TEST_CASE("a malformed reference is refused, saying what a reference looks like") {
  const std::vector<std::string> refused = {"web",
                                            "web:v1",
                                            "host/Web",
                                            "host/web:",
                                            "host/web:-x",
                                            "host/web/",
                                            "host//web",
                                            "host/-web",
                                            "host:port/web",
                                            "ho st/web",
                                            "host/web@sha256:abc",
                                            "host/web@sha256:" + std::string(64, 'A'),
                                            "host/web@md5:" + std::string(32, 'a'),
                                            "host/" + std::string(10, '\n'),
                                            "/web",
                                            "host/web:" + std::string(129, 'x')};
  for (const std::string& bad : refused) {
    CAPTURE(bad);
    try {
      ImageReference::parse(bad);
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.status() == Status::invalid);
      CHECK(std::string(e.what()).find("HOST[:PORT]/NAME[:TAG]") != std::string::npos);
      CHECK(std::string(e.what()).find('\n') == std::string::npos);
    }
  }
}

TEST_CASE("only sha256 digests of 64 lowercase hex digits") {
  CHECK(registry::is_sha256_digest("sha256:" + std::string(64, '0')));
  CHECK_FALSE(registry::is_sha256_digest("sha256:" + std::string(63, '0')));
  CHECK_FALSE(registry::is_sha256_digest("sha512:" + std::string(64, '0')));
  CHECK_FALSE(registry::is_sha256_digest("sha256:" + std::string(63, '0') + "g"));
}
