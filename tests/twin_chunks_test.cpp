// TwinChunks: a chunk equal to one hashed before in another file takes over its digest after a
// comparison; anything that differs (a byte anywhere, the length, the index) is hashed. Signing
// with twins gives exactly the signature signing without them gives, and a poisoned twin shows
// that the comparison path is really taken.
#include "test_support.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <nucleus/checkpoint/hmac_tree.hpp>

#include "signature/chunked_signature.hpp"
#include "signature/twin_chunks.hpp"
#include "fs/unique_fd.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

constexpr std::uint64_t chunk = 64 << 10;

struct OpenFile {
  UniqueFd fd;
  TwinChunks::FileId id{};
  OpenFile(const fs::path& path, const std::string& data) {
    write_file(path, data);
    fd = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(fd);
    struct stat st {};
    REQUIRE(::fstat(fd.get(), &st) == 0);
    id = {st.st_dev, st.st_ino};
  }
  TwinChunks::Chunk chunk_at(std::uint64_t index, std::uint64_t length = chunk) const {
    return {id, index, index * chunk, length};
  }
};

// find() for `file`'s chunk, with scratch buffers smaller than a chunk so comparisons go piecewise.
std::optional<Sha256::Digest> find(TwinChunks& twins, const OpenFile& file, const TwinChunks::Chunk& c) {
  std::vector<unsigned char> ours(16 << 10), theirs(16 << 10);
  return twins.find(file.fd.get(), c, ours, theirs);
}

Sha256::Digest digest_of(unsigned char fill) {
  Sha256::Digest d{};
  d.fill(fill);
  return d;
}

HmacKey test_key() { return HmacKey::from_bytes(std::vector<unsigned char>(32, 7)); }

// A dump-shaped folder: a parent's pages and a forked child's, equal but for `child_changes`.
fs::path forked_tree(const TempDir& tmp, const std::string& parent, const std::string& child) {
  const fs::path root = tmp / "dump";
  fs::create_directories(root / "images");
  write_file(root / "images/pages-1.img", parent);
  write_file(root / "images/pages-2.img", child);
  write_file(root / "images/core-1.img", "core");
  return root;
}

HmacSha256::Mac mac_of(const fs::path& root, TwinChunks* twins) {
  const UniqueFd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(fd);
  return chunked_tree_mac(fd.get(), test_key(), chunk, {}, nullptr, twins);
}

}  // namespace

TEST_CASE("an equal chunk at the same index of another file takes over the digest", "[twin_chunks]") {
  TempDir tmp;
  const std::string data = bytes_of_size(3 * chunk);
  const OpenFile parent(tmp / "pages-1.img", data), child(tmp / "pages-2.img", data);
  TwinChunks twins;
  twins.remember(parent.fd.get(), parent.chunk_at(1), digest_of(1));
  CHECK(find(twins, child, child.chunk_at(1)) == digest_of(1));
  CHECK_FALSE(find(twins, child, child.chunk_at(2)).has_value());        // nothing remembered there
  CHECK_FALSE(find(twins, parent, parent.chunk_at(1)).has_value());      // not from the same file
  CHECK_FALSE(find(twins, child, child.chunk_at(1, chunk - 1)).has_value());  // another length
  twins.remember(child.fd.get(), child.chunk_at(1), digest_of(2));        // the first at an index stays
  const OpenFile third(tmp / "pages-3.img", data);
  CHECK(find(twins, third, third.chunk_at(1)) == digest_of(1));
}

TEST_CASE("a chunk that differs anywhere is not a twin", "[twin_chunks]") {
  TempDir tmp;
  const std::string data = bytes_of_size(2 * chunk);
  const OpenFile parent(tmp / "pages-1.img", data);
  TwinChunks twins;
  twins.remember(parent.fd.get(), parent.chunk_at(1), digest_of(1));
  for (const std::uint64_t at : {chunk, chunk + 4095, chunk + 4096, chunk + (40 << 10), 2 * chunk - 1}) {
    INFO("byte " << at << " changed");
    std::string changed = data;
    changed[at] = static_cast<char>(changed[at] ^ 0x01);
    const OpenFile child(tmp / fmt::format("child-{}.img", at), changed);
    CHECK_FALSE(find(twins, child, child.chunk_at(1)).has_value());
  }
  const OpenFile shorter(tmp / "short.img", data.substr(0, 2 * chunk - 10));
  CHECK_FALSE(find(twins, shorter, shorter.chunk_at(1)).has_value());  // the file ends inside the chunk
}

TEST_CASE("signing a forked tree with twins gives the signature signing without them gives", "[twin_chunks]") {
  TempDir tmp;
  const std::string parent = bytes_of_size(5 * chunk + 123);
  std::string child = parent;
  SECTION("the child's pages equal the parent's") {}
  SECTION("the child changed a byte in one chunk") { child[3 * chunk + 17] ^= 0x20; }
  SECTION("the child's pages are shifted by a page") { child = std::string(4096, 'x') + parent.substr(4096); }
  SECTION("the child's last chunk is longer") { child += "tail"; }
  const fs::path root = forked_tree(tmp, parent, child);
  TwinChunks twins;
  CHECK(mac_of(root, &twins) == mac_of(root, nullptr));
}

TEST_CASE("a poisoned twin changes the MAC: the comparison path is taken", "[twin_chunks]") {
  TempDir tmp;
  const std::string pages = bytes_of_size(3 * chunk);
  const fs::path root = forked_tree(tmp, pages, pages);
  // pages-1 chunk 0 remembered with a wrong digest: pages-2's equal chunk 0 takes it over.
  TwinChunks poisoned;
  const OpenFile decoy(tmp / "decoy.img", pages);
  poisoned.remember(decoy.fd.get(), decoy.chunk_at(0), digest_of(9));
  CHECK(mac_of(root, &poisoned) != mac_of(root, nullptr));
}

TEST_CASE("a dump signed with twins verifies", "[twin_chunks]") {
  TempDir tmp;
  const fs::path root = forked_tree(tmp, bytes_of_size(4 << 20 | 99), bytes_of_size(4 << 20 | 99));
  const UniqueFd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  TwinChunks twins;
  sign_chunked(fd.get(), test_key(), {}, nullptr, &twins);
  CHECK_NOTHROW(HmacTree::verify(root, test_key()));
}
